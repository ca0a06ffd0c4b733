// Time-series charts (uPlot): the swarm's samples/s, and the trainers' loss and accuracy.
import uPlot from "uplot";
import { cssVar } from "./colors.js";

// A pause longer than this between two points (a trainer restarted, the portal was down) breaks the line
// instead of drawing a misleading straight segment across the gap.
const GAP_SECONDS = 120;

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
    this.plot = new uPlot(baseOptions(this.width(), title, series), [[], ...series.map(() => [])], container);
    new ResizeObserver(() => this.plot.setSize({ width: this.width(), height: 170 })).observe(container);
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
