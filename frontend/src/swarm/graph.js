// Force-directed graph of the swarm on a canvas (d3-force for layout, plain canvas for drawing, so a
// thousand nodes stay smooth). Size by throughput, colour by state, squares for trainers, a ring around
// the viewer's own nodes, lines for recent trainer-to-expert traffic. Beyond MAX_DRAWN nodes the graph
// shows trainers, the viewer's nodes and the busiest servers, and folds the rest into one bubble per state.
import { forceCenter, forceCollide, forceLink, forceManyBody, forceSimulation, forceX, forceY } from "d3-force";
import { scaleSqrt } from "d3-scale";
import { cssVar, statePalette, withAlpha } from "./colors.js";
import { displayState, isMine } from "./state.js";

export const MAX_DRAWN = 300;

export function chooseDrawn(swarm, limit = MAX_DRAWN) {
  const all = [...swarm.nodes.values()];
  if (all.length <= limit) return { drawn: all, folded: new Map() };
  const rank = (n) =>
    (isMine(n, swarm) ? 4 : 0) + (n.role === "trainer" ? 2 : 0) + (n.state === "online" ? 1 : 0);
  all.sort((a, b) => rank(b) - rank(a) || b.samples_per_s - a.samples_per_s || (a.node_id < b.node_id ? -1 : 1));
  const drawn = all.slice(0, limit);
  const folded = new Map();
  for (const node of all.slice(limit)) {
    const state = displayState(node, swarm);
    folded.set(state, (folded.get(state) || 0) + 1);
  }
  return { drawn, folded };
}

export class SwarmGraph {
  constructor(container, { onHover } = {}) {
    this.container = container;
    this.canvas = document.createElement("canvas");
    this.canvas.className = "swarm-graph-canvas";
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", "Swarm graph: volunteer nodes and trainers");
    container.append(this.canvas);
    this.onHover = onHover;
    this.items = new Map(); // id -> simulation node (keeps positions between updates)
    this.links = [];
    this.transform = { width: 600, height: 360 };
    this.simulation = forceSimulation([])
      .force("charge", forceManyBody().strength(-40).distanceMax(260))
      .force("link", forceLink([]).id((d) => d.id).distance(60).strength(0.2))
      .force("collide", forceCollide().radius((d) => d.r + 2))
      .force("x", forceX(0).strength(0.05))
      .force("y", forceY(0).strength(0.07))
      .force("center", forceCenter(0, 0))
      .alphaDecay(0.03)
      .on("tick", () => this.requestDraw());
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(container);
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.onHover?.(null));
    this.resize();
  }

  resize() {
    const width = Math.max(280, this.container.clientWidth);
    const height = Math.max(260, Math.min(520, Math.round(width * 0.6)));
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = width * ratio;
    this.canvas.height = height * ratio;
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    this.transform = { width, height, ratio };
    this.requestDraw();
  }

  update(swarm) {
    this.swarm = swarm;
    const { drawn, folded } = chooseDrawn(swarm);
    const maxRate = Math.max(1, ...drawn.map((n) => n.samples_per_s || 0));
    const radius = scaleSqrt().domain([0, maxRate]).range([5, 18]).clamp(true);
    const next = new Map();
    let added = false;
    for (const node of drawn) {
      const item = this.items.get(node.node_id) || { id: node.node_id, x: (Math.random() - 0.5) * 80, y: (Math.random() - 0.5) * 80 };
      if (!this.items.has(node.node_id)) added = true;
      item.node = node;
      item.kind = "node";
      item.state = displayState(node, swarm);
      item.mine = isMine(node, swarm);
      item.r = radius(node.samples_per_s || 0) + (node.role === "trainer" ? 2 : 0);
      next.set(node.node_id, item);
    }
    for (const [state, count] of folded) {
      const id = `folded:${state}`;
      const item = this.items.get(id) || { id, x: 0, y: 0 };
      if (!this.items.has(id)) added = true;
      Object.assign(item, { kind: "folded", state, count, r: 10 + Math.sqrt(count) * 1.6 });
      next.set(id, item);
    }
    const removed = [...this.items.keys()].some((id) => !next.has(id));
    this.items = next;
    this.links = [];
    for (const [source, targets] of swarm.edges) {
      if (!next.has(source)) continue;
      for (const target of targets) {
        if (next.has(target.node_id) && target.node_id !== source) {
          this.links.push({ source, target: target.node_id, requests: target.requests });
        }
      }
    }
    const nodes = [...next.values()];
    this.simulation.nodes(nodes);
    this.simulation.force("link").links(this.links);
    this.simulation.force("collide").radius((d) => d.r + 2);
    if (added || removed) this.simulation.alpha(Math.max(this.simulation.alpha(), 0.5)).restart();
    this.container.dataset.graphNodes = String(nodes.filter((d) => d.kind === "node").length);
    this.container.dataset.graphFolded = String([...folded.values()].reduce((a, b) => a + b, 0));
    this.container.dataset.graphIds = drawn.map((n) => n.node_id).join(" ");
    this.container.dataset.graphStates = drawn.map((n) => `${n.node_id}:${displayState(n, swarm)}`).join(" ");
    this.requestDraw();
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = null;
      this.draw();
    });
  }

  fit() {
    const nodes = this.simulation.nodes();
    if (!nodes.length) return { scale: 1, cx: 0, cy: 0 };
    let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    for (const d of nodes) {
      minX = Math.min(minX, d.x - d.r); maxX = Math.max(maxX, d.x + d.r);
      minY = Math.min(minY, d.y - d.r); maxY = Math.max(maxY, d.y + d.r);
    }
    const { width, height } = this.transform;
    const scale = Math.min(1.6, (width - 40) / Math.max(1, maxX - minX), (height - 40) / Math.max(1, maxY - minY));
    return { scale, cx: (minX + maxX) / 2, cy: (minY + maxY) / 2 };
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const { width, height, ratio = 1 } = this.transform;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const view = this.fit();
    this.view = view;
    const px = (d) => (d.x - view.cx) * view.scale + width / 2;
    const py = (d) => (d.y - view.cy) * view.scale + height / 2;
    const textColor = cssVar("--text");
    const primary = cssVar("--primary");
    const linkColor = withAlpha(primary, 0.35);
    const stateColor = statePalette();
    ctx.lineCap = "round";
    for (const link of this.links) {
      const s = typeof link.source === "object" ? link.source : this.items.get(link.source);
      const t = typeof link.target === "object" ? link.target : this.items.get(link.target);
      if (!s || !t) continue;
      ctx.strokeStyle = linkColor;
      ctx.lineWidth = Math.min(4, 0.6 + Math.log10(1 + (link.requests || 0)));
      ctx.beginPath();
      ctx.moveTo(px(s), py(s));
      ctx.lineTo(px(t), py(t));
      ctx.stroke();
    }
    for (const d of this.simulation.nodes()) {
      const x = px(d), y = py(d), r = Math.max(3, d.r * Math.min(1, view.scale * 1.2));
      ctx.fillStyle = stateColor(d.state);
      ctx.globalAlpha = d.kind === "folded" ? 0.35 : d.state === "offline" ? 0.55 : 0.95;
      ctx.beginPath();
      if (d.kind === "node" && d.node.role === "trainer") ctx.rect(x - r, y - r, 2 * r, 2 * r);
      else ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fill();
      ctx.globalAlpha = 1;
      if (d.mine) {
        ctx.strokeStyle = primary;
        ctx.lineWidth = 3;
        ctx.beginPath();
        ctx.arc(x, y, r + 4, 0, 2 * Math.PI);
        ctx.stroke();
      }
      if (d.kind === "folded") {
        ctx.fillStyle = textColor;
        ctx.font = "600 12px system-ui, sans-serif";
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        ctx.fillText(`+${d.count} ${d.state}`, x, y);
      }
    }
  }

  hover(event) {
    if (!this.view) return;
    const rect = this.canvas.getBoundingClientRect();
    const { width, height } = this.transform;
    const x = (event.clientX - rect.left - width / 2) / this.view.scale + this.view.cx;
    const y = (event.clientY - rect.top - height / 2) / this.view.scale + this.view.cy;
    const found = this.simulation.find(x, y, 24 / this.view.scale);
    this.onHover?.(found || null, event.clientX, event.clientY);
  }

  destroy() {
    this.simulation.stop();
    this.resizeObserver.disconnect();
  }
}
