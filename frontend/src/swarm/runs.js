// Trainer runs on the charts. Pure: no DOM. Each start of a trainer sends its own run id with its metrics
// (platform/swarm/summaries.py TrainingPoint.run), so every run is its own series and a restart never draws
// a ramp from the old run's last step to the new one's first. Agents that send no run id are split where
// their step falls (a restart counts from the start again).

// Older runs beyond this many are left off the charts (the legend stays readable).
export const MAX_RUNS = 8;

// A pause longer than this inside one run (the portal was down) breaks its line rather than bridging it.
export const GAP_SECONDS = 120;

// Points (sorted by time) grouped into runs, oldest first: [{ key, nodeId, run, points }].
export function trainingRuns(points, maxRuns = MAX_RUNS) {
  const runs = [];
  const open = new Map();
  for (const point of points) {
    const key = `${point.node_id}/${point.run || ""}`;
    let current = open.get(key);
    if (!current || point.step < current.points[current.points.length - 1].step) {
      current = { key: `${key}#${runs.length}`, nodeId: point.node_id, run: point.run || "", points: [] };
      runs.push(current);
      open.set(key, current);
    }
    current.points.push(point);
  }
  return runs.slice(-maxRuns);
}

export function runLabel(run) {
  const node = run.nodeId.slice(0, 8);
  return run.run ? `run ${run.run.slice(0, 6)} · ${node}` : `trainer ${node}`;
}

// uPlot's aligned data for one field: [times, values of run 1, values of run 2, ...]. A run is undefined at
// the other runs' times (uPlot continues its line over them) and null just after a long pause (a break).
export function runColumns(runs, field) {
  const values = runs.map((run) => {
    const byTime = new Map();
    run.points.forEach((p, i) => {
      const previous = run.points[i - 1];
      if (previous && p.t - previous.t > GAP_SECONDS) byTime.set(previous.t + 1, null);
      byTime.set(p.t, p[field]);
    });
    return byTime;
  });
  const times = [...new Set(values.flatMap((byTime) => [...byTime.keys()]))].sort((a, b) => a - b);
  return [times, ...values.map((byTime) => times.map((t) => byTime.get(t)))];
}
