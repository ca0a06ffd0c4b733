// The expert grids as heatmaps on canvases: one cell per expert uid, shaded by how many serving replicas
// the portal's observer saw; holes (no serving replica) in red. Rows are a grid's first dimension,
// columns the rest. A classifier has one grid; a language model one per block, each drawn as its own
// small heatmap labelled `block 0`, `block 1`, ... The portal lists covered cells only (a missing cell is
// a hole); grids larger than MAX_DRAWN_CELLS together (older projects, made before the portal bounded
// grids) are counted, not drawn.
import { scaleSequential } from "d3-scale";
import { interpolateGreens } from "d3-scale-chromatic";
import { cssVar } from "./colors.js";
import { cellUid, gridLayout, gridMatrices, gridsTotal, locateCell, projectGrids } from "./grids.js";

export const MAX_DRAWN_CELLS = 1 << 20;

// Covered cells and holes of every grid, from the coverage reading alone (costs what is covered).
export function coverageCounts(cells, grids) {
  const total = gridsTotal(grids);
  let covered = 0;
  for (const [uid, replicas] of Object.entries(cells || {})) if (replicas > 0 && locateCell(uid, grids)) covered++;
  return { covered, holes: total - covered, total };
}

// One grid's canvas (and its label, for a language model's block).
class GridCanvas {
  constructor(parent, label, onHover) {
    this.figure = document.createElement("figure");
    this.figure.className = "swarm-heatmap-block";
    if (label) {
      const caption = document.createElement("figcaption");
      caption.textContent = label;
      this.figure.append(caption);
    }
    this.canvas = document.createElement("canvas");
    this.canvas.className = "swarm-heatmap-canvas";
    this.canvas.setAttribute("role", "img");
    this.canvas.setAttribute("aria-label", label ? `Expert grid coverage heatmap, ${label}` : "Expert grid coverage heatmap");
    this.figure.append(this.canvas);
    parent.append(this.figure);
    this.onHover = onHover;
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.onHover?.(null));
  }

  show(matrix, layout, uidOf, max) {
    Object.assign(this, { matrix, layout, uidOf, max });
    Object.assign(this.figure.dataset, { covered: String(matrix.covered), holes: String(matrix.holes) });
    this.draw();
  }

  draw() {
    if (!this.matrix) return;
    const { rows, cols } = this.layout;
    const values = this.matrix.values;
    const width = Math.max(120, this.figure.clientWidth);
    const gap = cols <= 64 ? (cols > 8 ? 1 : 2) : 0;
    const cell = Math.max(1, Math.min(cols <= 8 ? 56 : 28, Math.floor((width - gap * cols) / cols)));
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = cols * (cell + gap) * ratio;
    this.canvas.height = rows * (cell + gap) * ratio;
    this.canvas.style.width = `${cols * (cell + gap)}px`;
    this.canvas.style.height = `${rows * (cell + gap)}px`;
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
    const { rows, cols } = this.layout;
    if (r < 0 || c < 0 || r >= rows || c >= cols) return this.onHover?.(null);
    const index = r * cols + c;
    this.onHover?.({ uid: this.uidOf(index), replicas: this.matrix.values[index] }, event.clientX, event.clientY);
  }
}

export class CoverageHeatmap {
  // `labelled`: a language model's grids are labelled by block.
  constructor(container, { onHover, labelled = false } = {}) {
    this.container = container;
    this.onHover = onHover;
    this.labelled = labelled;
    this.canvases = [];
    this.names = null;
    new ResizeObserver(() => this.draw()).observe(container);
  }

  // One canvas per grid, rebuilt only when the project's grids change.
  layoutFor(grids) {
    const key = grids.names.join("\n");
    if (this.names === key) return;
    this.names = key;
    this.container.replaceChildren();
    const list = document.createElement("div");
    list.className = grids.names.length > 1 ? "swarm-heatmap-blocks" : "swarm-heatmap-single";
    this.container.append(list);
    this.canvases = grids.names.map((name, i) => {
      const canvas = new GridCanvas(list, this.labelled ? `block ${i}` : "", this.onHover);
      canvas.figure.dataset.grid = name;
      return canvas;
    });
  }

  update(swarm) {
    this.swarm = swarm;
    const grids = projectGrids(swarm.project);
    const total = gridsTotal(grids);
    if (total > MAX_DRAWN_CELLS) {
      const counts = coverageCounts(swarm.coverage.cells, grids);
      this.names = null;
      this.canvases = [];
      this.container.replaceChildren();
      Object.assign(this.container.dataset, { covered: String(counts.covered), holes: String(counts.holes), cells: String(total) });
      return { ...counts, max: 1 };
    }
    this.layoutFor(grids);
    const matrices = gridMatrices(swarm.coverage.cells, grids);
    const max = Math.max(1, ...matrices.map((m) => m.max)); // one shade scale for every block
    const layout = gridLayout(grids.dims);
    let covered = 0;
    matrices.forEach((matrix, i) => {
      covered += matrix.covered;
      this.canvases[i].show(matrix, layout, (index) => cellUid(grids, i, index), max);
    });
    const holes = total - covered;
    Object.assign(this.container.dataset, { covered: String(covered), holes: String(holes), cells: String(total), grids: String(grids.names.length) });
    return { covered, holes, total, max };
  }

  draw() {
    for (const canvas of this.canvases) canvas.draw();
  }
}
