// The project form's figures, live: what volunteers will host (experts per grid, parameters, memory) as the
// researcher types. The server renders the same figures (platform/projects/catalog.py); the page hands this
// module the catalog's rules as JSON (#model-figure-rules), so the expert formulas are defined once.

// "16x16" -> [16, 16], or a sentence saying what is wrong (the server's wording, platform/projects/catalog.py).
export function parseGrid(text, rules) {
  const parts = String(text).trim().toLowerCase().replace("\u00d7", "x").split("x");
  if (parts.length < 1 || parts.length > rules.max_grid_dims) return `a grid has 1 to ${rules.max_grid_dims} dimensions, like 16x16`;
  const dims = [];
  for (const raw of parts) {
    const part = raw.trim();
    if (!part) return "a dimension is missing; write the grid like 16x16";
    if (!/^[0-9]+$/.test(part)) return `${JSON.stringify(part)} is not a whole number; write the grid like 16x16`;
    const side = Number(part);
    if (side < 1 || side > rules.max_grid_side) return `each grid dimension must be between 1 and ${rules.max_grid_side}, got ${side}`;
    dims.push(side);
  }
  return dims;
}

function wholeNumber(text) {
  const value = String(text).trim();
  return /^[0-9]{1,9}$/.test(value) ? Number(value) : null;
}

// 2_147_000_000 -> "2.1 billion", as projects.catalog.format_count writes it.
export function formatCount(n) {
  for (const [size, word] of [[1e9, "billion"], [1e6, "million"], [1e3, "thousand"]]) {
    if (n >= size) return `${(n / size).toFixed(1)} ${word}`;
  }
  return String(n);
}

// 4_210_688 -> "4.0 MiB", as projects.catalog.format_bytes writes it.
export function formatBytes(n) {
  for (const [size, unit] of [[2 ** 40, "TiB"], [2 ** 30, "GiB"], [2 ** 20, "MiB"], [2 ** 10, "KiB"]]) {
    if (n >= size) return `${(n / size).toFixed(1)} ${unit}`;
  }
  return `${n} B`;
}

// The figures for the form's values ({task, architecture, hidden, grid, blocks, heads, seqLen, window}, all
// strings as typed), or {problem} saying why there are none.
export function modelFigures(values, rules) {
  const coefficients = rules.coefficients[values.architecture];
  if (!coefficients) return { problem: "Choose an expert architecture." };
  const hidden = wholeNumber(values.hidden);
  if (hidden === null || hidden < 1) return { problem: "The hidden size must be a whole number." };
  const dims = parseGrid(values.grid, rules);
  if (typeof dims === "string") return { problem: `Invalid grid shape: ${dims}.` };
  const language = values.task === "lm";
  const blocks = language ? wholeNumber(values.blocks) : 1;
  if (blocks === null || blocks < 1 || blocks > rules.max_blocks) return { problem: `A language model has 1 to ${rules.max_blocks} blocks.` };
  const perBlock = dims.reduce((a, b) => a * b, 1);
  const experts = perBlock * blocks;
  if (experts > rules.max_cells) {
    return { problem: `${blocks} grid${blocks === 1 ? "" : "s"} of ${perBlock.toLocaleString("en")} experts make ${experts.toLocaleString("en")}; at most ${rules.max_cells.toLocaleString("en")} in all.` };
  }
  if (language) {
    const heads = wholeNumber(values.heads);
    if (heads && hidden % heads) return { problem: `The hidden size ${hidden} is not a multiple of ${heads} heads.` };
    const seqLen = wholeNumber(values.seqLen);
    const window = wholeNumber(values.window);
    if (seqLen && window && window > seqLen) return { problem: `The window can be at most the sequence length (${seqLen}).` };
  }
  const [a, b] = coefficients;
  const perExpert = a * hidden * hidden + b * hidden;
  const memory = perExpert * rules.bytes_per_parameter;
  // the agent's default: 4, or one per grid when there are more, within the memory budget, at least one
  const wanted = Math.max(rules.volunteer_experts, blocks);
  const hosted = Math.max(1, Math.min(wanted, Math.floor(rules.volunteer_memory / memory), experts));
  const cover = Math.ceil(experts / hosted);
  return {
    figures: {
      grids: `${blocks} grid${blocks === 1 ? "" : "s"} of ${perBlock} experts`,
      "total-experts": String(experts),
      "parameters-per-expert": perExpert.toLocaleString("en"),
      "total-parameters": formatCount(perExpert * experts),
      "memory-per-expert": `${formatBytes(memory)} (fp32 weights, gradients, Adam's two moments)`,
      volunteer: `hosts ${hosted} expert${hosted === 1 ? "" : "s"} by default, ${formatBytes(hosted * memory)}; ${cover} volunteer${cover === 1 ? "" : "s"} cover every expert once`,
    },
  };
}

function formValues(form) {
  const value = (name) => {
    const field = form.elements.namedItem(name);
    if (!field) return "";
    if (field instanceof RadioNodeList || field.type === "radio") return field.value || "";
    return field.value;
  };
  return {
    task: value("task") || "classification",
    architecture: value("expert_architecture"),
    hidden: value("hidden_size"),
    grid: value("grid_shape"),
    blocks: value("lm_blocks"),
    heads: value("lm_heads"),
    seqLen: value("lm_seq_len"),
    window: value("lm_window"),
  };
}

// Language-model fields show only for that task, the dataset only for classification.
function showTaskFields(form, task) {
  for (const wrapper of form.querySelectorAll("[data-field-name]")) {
    const name = wrapper.dataset.fieldName;
    if (name.startsWith("lm_")) wrapper.hidden = task !== "lm";
    else if (name === "dataset") wrapper.hidden = task === "lm";
  }
}

export function startModelFigures(panel) {
  const form = panel.closest("form");
  const rulesNode = document.getElementById("model-figure-rules");
  if (!form || !rulesNode) return;
  const rules = JSON.parse(rulesNode.textContent);
  const problem = panel.querySelector('[data-figure="problem"]');
  const update = () => {
    const values = formValues(form);
    showTaskFields(form, values.task);
    const result = modelFigures(values, rules);
    panel.classList.toggle("is-stale", Boolean(result.problem));
    problem.hidden = !result.problem;
    problem.textContent = result.problem || "";
    if (result.figures) {
      for (const [name, text] of Object.entries(result.figures)) {
        const node = panel.querySelector(`[data-figure="${name}"]`);
        if (node) node.textContent = text;
      }
    }
    panel.dataset.live = "true";
  };
  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
}
