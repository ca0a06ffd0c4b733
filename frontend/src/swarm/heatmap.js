// The expert grid as a heatmap on a canvas: one cell per expert uid, shaded by how many live replicas
// the portal's observer saw in the DHT; holes (no live replica) in red. Rows are the grid's first
// dimension, columns the rest. The portal lists covered cells only (a missing cell is a hole); a grid
// larger than MAX_DRAWN_CELLS (older projects, made before the portal bounded grids) is not drawn.
import { scaleSequential } from "d3-scale";
import { interpolateGreens } from "d3-scale-chromatic";
import { cssVar } from "./colors.js";
import { uidCoords } from "./state.js";

export const MAX_DRAWN_CELLS = 1 << 20;

export function gridLayout(dims) {
  const rows = dims.length > 1 ? dims[0] : 1;
  const cols = dims.length > 1 ? dims.slice(1).reduce((a, b) => a * b, 1) : dims[0] || 1;
  return { rows, cols };
}

// Replica counts laid out row-major; missing cells count as holes.
export function cellMatrix(cells, dims) {
  const { rows, cols } = gridLayout(dims);
  const values = new Int32Array(rows * cols);
  for (const [uid, replicas] of Object.entries(cells)) {
    const coords = uidCoords(uid, dims.length);
    if (!coords || coords.some((c, i) => c >= dims[i])) continue;
    let index = 0;
    for (let i = 0; i < dims.length; i++) index = index * dims[i] + coords[i];
    values[index] = replicas;
  }
  return { rows, cols, values };
}

export class CoverageHeatmap {
  constructor(container, { onHover } = {}) {
    this.container = container;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "swarm-heatmap-canvas";
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", "Expert grid coverage heatmap");
    container.append(this.canvas);
    this.onHover = onHover;
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.onHover?.(null));
    new ResizeObserver(() => this.draw()).observe(container);
  }

  update(swarm) {
    this.swarm = swarm;
    const dims = swarm.project?.grid || [1];
    const total = dims.reduce((a, b) => a * b, 1);
    if (total > MAX_DRAWN_CELLS) {
      const covered = Object.keys(swarm.coverage.cells || {}).length;
      this.matrix = null;
      this.canvas.width = this.canvas.height = 0;
      Object.assign(this.container.dataset, { covered: String(covered), holes: String(total - covered), cells: String(total) });
      return { covered, holes: total - covered, total, max: 1 };
    }
    this.matrix = cellMatrix(swarm.coverage.cells || {}, dims);
    this.prefix = swarm.project?.expert_prefix || "";
    this.dims = dims;
    const values = this.matrix.values;
    let holes = 0, covered = 0, max = 1;
    for (const v of values) {
      if (v > 0) covered++;
      else holes++;
      max = Math.max(max, v);
    }
    this.max = max;
    Object.assign(this.container.dataset, { covered: String(covered), holes: String(holes), cells: String(values.length) });
    this.draw();
    return { covered, holes, total: values.length, max };
  }

  draw() {
    if (!this.matrix) return;
    const { rows, cols, values } = this.matrix;
    const width = Math.max(200, this.container.clientWidth);
    const gap = cols <= 64 ? 2 : 0;
    const cell = Math.max(1, Math.min(cols <= 8 ? 56 : 28, Math.floor((width - gap * cols) / cols)));
    const height = rows * (cell + gap);
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = (cols * (cell + gap)) * ratio;
    this.canvas.height = height * ratio;
    this.canvas.style.width = `${cols * (cell + gap)}px`;
    this.canvas.style.height = `${height}px`;
    this.cell = cell;
    this.gap = gap;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const shade = scaleSequential(interpolateGreens).domain([0, Math.max(2, this.max)]);
    const hole = cssVar("--danger");
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = values[r * cols + c];
        ctx.fillStyle = v > 0 ? shade(0.6 + v) : hole;
        ctx.fillRect(c * (cell + gap), r * (cell + gap), cell, cell);
      }
    }
  }

  hover(event) {
    if (!this.matrix) return;
    const rect = this.canvas.getBoundingClientRect();
    const c = Math.floor((event.clientX - rect.left) / (this.cell + this.gap));
    const r = Math.floor((event.clientY - rect.top) / (this.cell + this.gap));
    const { rows, cols, values } = this.matrix;
    if (r < 0 || c < 0 || r >= rows || c >= cols) return this.onHover?.(null);
    let index = r * cols + c;
    const coords = [];
    for (let i = this.dims.length - 1; i >= 0; i--) {
      coords.unshift(index % this.dims[i]);
      index = Math.floor(index / this.dims[i]);
    }
    const uid = [this.prefix, ...coords].join(".");
    this.onHover?.({ uid, replicas: values[r * cols + c] }, event.clientX, event.clientY);
  }
}
