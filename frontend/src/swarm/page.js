// The live swarm page: wires the socket, the swarm model and the views (graph, heatmap, charts, table,
// replicas). Rendering is batched to one animation frame however many messages arrive; the table's
// freshness and the replicas' ages tick every second on their own. While the socket is down the page says so and greys the figures.
import { LiveChart, columns } from "./charts.js";
import { renderAlerts } from "./alerts.js";
import { cssVar, withAlpha } from "./colors.js";
import { CoverageHeatmap } from "./heatmap.js";
import { SwarmGraph } from "./graph.js";
import { ReplicasPanel } from "./replicas.js";
import { connectSwarm } from "./socket.js";
import { displayState, emptySwarm, formatAge, reachCounts } from "./state.js";
import { runColumns, runLabel, trainingRuns } from "./runs.js";
import { refreshFreshness, renderTable } from "./table.js";

const STATUS_TEXT = {
  connecting: "Connecting to the live swarm…",
  live: "Live",
  resyncing: "Catching up…",
  lost: "Connection lost — figures below may be out of date; reconnecting",
  busy: "The portal is busy — figures below may be out of date; trying again",
  forbidden: "You may not watch this swarm live.",
  gone: "This project no longer exists.",
};

function part(root, name) {
  return root.querySelector(`[data-part="${name}"]`);
}

function tooltip(root) {
  const tip = part(root, "tooltip");
  return (lines, x, y) => {
    if (!tip) return;
    if (!lines) {
      tip.hidden = true;
      return;
    }
    tip.replaceChildren(...lines.map((line) => Object.assign(document.createElement("div"), { textContent: line })));
    tip.hidden = false;
    const box = root.getBoundingClientRect();
    tip.style.left = `${x - box.left + 14}px`;
    tip.style.top = `${y - box.top + 10}px`;
  };
}

// Stroke colours of the trainer runs, in turn (the stylesheet's own palette).
const RUN_COLORS = ["--danger", "--primary", "--ok", "--warn", "--state-pending", "--state-unreachable", "--state-offline", "--state-stale"];

// A series per trainer run (or one empty placeholder), coloured in turn; the newest run is drawn widest.
function runSeries(runs, field, colors) {
  if (!runs.length) return [{ label: field, stroke: cssVar(colors[0]), width: 2 }];
  return runs.map((run, i) => ({ label: runLabel(run), stroke: cssVar(colors[i % colors.length]), width: i === runs.length - 1 ? 2 : 1.5 }));
}

// Training points (older portals sent no kind) and validation points, each in time order.
export function splitKinds(points) {
  return { train: points.filter((p) => p.kind !== "eval"), eval: points.filter((p) => p.kind === "eval") };
}

function setStat(root, name, value, detail) {
  const node = root.querySelector(`[data-live-stat="${name}"]`);
  if (node) node.textContent = value;
  const label = root.querySelector(`[data-live-stat-detail="${name}"]`);
  if (label && detail !== undefined) label.textContent = detail;
}

export function startSwarmPage(root) {
  root.hidden = false; // hidden in the HTML, so that a page without JavaScript never says "Connecting…"
  const swarm = emptySwarm();
  const show = tooltip(root);
  const graph = new SwarmGraph(part(root, "graph"), {
    onHover: (item, x, y) => {
      if (!item) return show(null);
      if (item.kind === "folded") return show([`${item.count} more ${item.state} nodes`, "folded to keep the graph readable"], x, y);
      const n = item.node;
      show([`${n.label} · ${n.role || "no role yet"} · ${item.state}`, `owner ${n.owner}`, `${n.samples_per_s.toFixed(1)} samples/s`, `experts ${n.experts.join(", ") || "–"}`], x, y);
    },
  });
  const heatmap = new CoverageHeatmap(part(root, "heatmap"), {
    onHover: (cell, x, y) => (cell ? show([`${cell.uid}`, `${cell.replicas} live replica${cell.replicas === 1 ? "" : "s"}`], x, y) : show(null)),
  });
  const online = cssVar("--state-online");
  const charts = {
    throughput: new LiveChart(part(root, "chart-throughput"), "Swarm samples/s", [{ label: "samples/s", stroke: online, fill: withAlpha(online, 0.08), width: 2 }]),
    loss: new LiveChart(part(root, "chart-loss"), "Trainer loss", [{ label: "loss", stroke: cssVar("--danger"), width: 2 }]),
  };
  // A language model's second chart is bits per byte (training and validation), a classifier's accuracy.
  const language = root.dataset.task === "lm";
  if (language) charts.bpb = new LiveChart(part(root, "chart-bpb"), "Bits per byte", [{ label: "bits per byte", stroke: cssVar("--primary"), width: 2 }]);
  else charts.accuracy = new LiveChart(part(root, "chart-accuracy"), "Trainer accuracy", [{ label: "accuracy", stroke: cssVar("--primary"), width: 2 }]);
  const replicas = new ReplicasPanel(part(root, "replicas-panel"));
  const tbody = part(root, "nodes");
  const note = part(root, "nodes-note");
  const status = root.querySelector("[data-live-status]");
  let frame = null;

  const render = () => {
    frame = null;
    const now = Date.now() / 1000;
    graph.update(swarm);
    const coverage = heatmap.update(swarm);
    renderTable(tbody, note, swarm);
    replicas.update(swarm, now);
    part(root, "alerts-panel").hidden = renderAlerts(part(root, "alerts"), swarm, now) === 0;
    const nodes = [...swarm.nodes.values()];
    const online = nodes.filter((n) => displayState(n, swarm, now) === "online").length;
    const last = swarm.throughput[swarm.throughput.length - 1];
    const split = splitKinds(swarm.training);
    const lastTraining = split.train[split.train.length - 1];
    const reach = reachCounts(nodes);
    setStat(root, "online", `${online}`, `online of ${nodes.length} nodes; ${reach.serving} serving, ${reach.reachable} reachable, ${reach.announced} announced`);
    setStat(root, "throughput", last ? last.samples_per_s.toFixed(0) : "–", "swarm samples/s");
    setStat(root, "coverage", `${coverage.covered}/${coverage.total}`, `grid cells served${swarm.coverage.observed_at ? `, DHT read ${formatAge(now + swarm.serverSkew - swarm.coverage.observed_at)}` : ", not observed yet"}`);
    setStat(root, "loss", lastTraining ? lastTraining.loss.toFixed(3) : "–", lastTraining ? `loss at step ${lastTraining.step}` : "no training metrics yet");
    if (language) {
      const lastEval = split.eval.filter((p) => p.bits_per_byte != null).pop();
      const bpb = lastTraining && lastTraining.bits_per_byte != null ? lastTraining.bits_per_byte.toFixed(3) : "–";
      setStat(root, "bpb", bpb, lastEval ? `training bits per byte; validation ${lastEval.bits_per_byte.toFixed(3)} at step ${lastEval.step}` : "training bits per byte");
    } else {
      setStat(root, "accuracy", lastTraining ? `${(lastTraining.accuracy * 100).toFixed(1)}%` : "–", "training accuracy");
    }
    // The page header's "DHT observed ... ago" is outside the live panel; it ages with the rest.
    const observed = document.querySelector("[data-live-observed]");
    if (observed && swarm.coverage.observed_at) observed.textContent = formatAge(now + swarm.serverSkew - swarm.coverage.observed_at);
    const caption = part(root, "heatmap-caption");
    if (caption) caption.textContent = coverage.holes ? `${coverage.holes} hole${coverage.holes === 1 ? "" : "s"} (red): no serving expert (announced is not enough: the portal's probe must get an answer).` : "Every cell has a serving expert.";
    charts.throughput.setData(columns(swarm.throughput, "samples_per_s"));
    const runs = trainingRuns(split.train);
    root.dataset.trainingRuns = String(runs.length);
    const data = (field) => (runs.length ? runColumns(runs, field) : [[], []]); // [[], []]: the empty placeholder
    charts.loss.setSeries(runSeries(runs, "loss", RUN_COLORS), data("loss"));
    if (language) {
      // Training and validation bits per byte of each run: validation lines dashed, after the training ones.
      const evalRuns = trainingRuns(split.eval.filter((p) => p.bits_per_byte != null));
      const all = [...runs, ...evalRuns];
      const labelled = (group, prefix, colors, extra) => (group.length ? runSeries(group, "", colors).map((s) => ({ ...s, ...extra, label: `${prefix} · ${s.label}` })) : []);
      const evalColors = [...RUN_COLORS.slice(1), RUN_COLORS[0]];
      const lines = [...labelled(runs, "train", RUN_COLORS, {}), ...labelled(evalRuns, "validation", evalColors, { dash: [6, 4] })];
      const series = lines.length ? lines : runSeries([], "bits per byte", RUN_COLORS);
      root.dataset.bpbSeries = String(all.length);
      charts.bpb.setSeries(series, all.length ? runColumns(all, "bits_per_byte") : [[], []]);
    } else {
      charts.accuracy.setSeries(runSeries(runs, "accuracy", [...RUN_COLORS.slice(1), RUN_COLORS[0]]), data("accuracy"));
    }
    root.dataset.seq = String(swarm.seq);
  };
  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(render);
  };

  connectSwarm({
    path: root.dataset.socket,
    swarm,
    onChange: schedule,
    onStatus: (state, attempt, delay) => {
      root.dataset.liveState = state;
      root.classList.toggle("is-stale", state !== "live");
      if (status) {
        status.dataset.state = state;
        const retrying = (state === "lost" || state === "busy") && delay;
        status.textContent = retrying ? `${STATUS_TEXT[state]} in ${Math.ceil(delay / 1000)} s (attempt ${attempt})…` : STATUS_TEXT[state] || state;
      }
      if (state === "live") {
        for (const fallback of document.querySelectorAll("[data-live-fallback]")) fallback.hidden = true;
        schedule();
      }
    },
  });
  setInterval(() => {
    refreshFreshness(tbody, swarm);
    // A node whose heartbeats stop turns "stale" in the browser without waiting for the server.
    if (swarm.synced) schedule();
  }, 1000);
}
