// Time-series charts (uPlot): the swarm's samples/s, and the trainers' loss and accuracy (a series per run).
import uPlot from "uplot";
import { cssVar } from "./colors.js";

import { GAP_SECONDS } from "./runs.js";

function baseOptions(width, title, series) {
  const axis = { stroke: cssVar("--muted"), grid: { stroke: cssVar("--border"), width: 1 } };
  return {
    title,
    width,
    height: 170,
    cursor: { drag: { x: false, y: false } },
    legend: { show: true },
    scales: { x: { time: true } },
    axes: [axis, { ...axis, size: 52 }],
    series: [{}, ...series.map((s) => ({ spanGaps: false, ...s }))],
  };
}

export class LiveChart {
  constructor(container, title, series) {
    this.container = container;
    this.title = title;
    this.labels = series.map((s) => s.label).join("\n");
    this.plot = new uPlot(baseOptions(this.width(), title, series), [[], ...series.map(() => [])], container);
    new ResizeObserver(() => this.plot.setSize({ width: this.width(), height: 170 })).observe(container);
  }

  // New data with its own series (the trainer runs come and go): the plot is rebuilt when they change.
  setSeries(series, columns) {
    const labels = series.map((s) => s.label).join("\n");
    if (labels !== this.labels) {
      this.plot.destroy();
      this.labels = labels;
      this.plot = new uPlot(baseOptions(this.width(), this.title, series), columns, this.container);
    } else {
      this.plot.setData(columns);
    }
  }

  // The card's content width: clientWidth includes the card's padding, and a plot that wide spills out.
  width() {
    const style = getComputedStyle(this.container);
    const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
    return Math.max(160, Math.floor(this.container.clientWidth - (padding || 0)));
  }

  setData(columns) {
    this.plot.setData(columns);
  }
}

export function columns(points, field) {
  const times = [];
  const values = [];
  points.forEach((p, i) => {
    if (i > 0 && p.t - points[i - 1].t > GAP_SECONDS) {
      times.push(points[i - 1].t + 1); // a null point makes uPlot break the line here
      values.push(null);
    }
    times.push(p.t);
    values.push(p[field]);
  });
  return [times, values];
}
