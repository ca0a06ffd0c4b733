// Time-series charts (uPlot): the swarm's samples/s, and the trainers' loss and accuracy.
import uPlot from "uplot";
import { cssVar } from "./colors.js";

function baseOptions(width, title, series) {
  const axis = { stroke: cssVar("--muted", "#5d6680"), grid: { stroke: cssVar("--border", "#e1e5ef"), width: 1 } };
  return {
    title,
    width,
    height: 170,
    cursor: { drag: { x: false, y: false } },
    legend: { show: true },
    scales: { x: { time: true } },
    axes: [axis, { ...axis, size: 52 }],
    series: [{}, ...series],
  };
}

export class LiveChart {
  constructor(container, title, series) {
    this.container = container;
    this.plot = new uPlot(baseOptions(this.width(), title, series), [[], ...series.map(() => [])], container);
    new ResizeObserver(() => this.plot.setSize({ width: this.width(), height: 170 })).observe(container);
  }

  width() {
    return Math.max(240, this.container.clientWidth);
  }

  setData(columns) {
    this.plot.setData(columns);
  }
}

export function columns(points, field) {
  return [points.map((p) => p.t), points.map((p) => p[field])];
}
