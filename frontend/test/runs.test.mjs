// Unit tests of the trainer runs on the charts (src/swarm/runs.js): a series per run, never a line across
// a restart, steps counting up within each series.
import assert from "node:assert/strict";
import test from "node:test";

import { GAP_SECONDS, runColumns, runLabel, trainingRuns } from "../src/swarm/runs.js";

const T = 1_700_000_000;
const point = (node_id, run, step, t, loss = 1 / step) => ({ node_id, run, step, t, loss, accuracy: 0.5 });

test("each run of each trainer is its own series, steps counting up within it", () => {
  const points = [point("a", "r1", 10, T), point("b", "s1", 10, T + 1), point("a", "r1", 20, T + 2), point("a", "r2", 10, T + 3), point("b", "s1", 20, T + 4)];
  const runs = trainingRuns(points);
  assert.deepEqual(runs.map((r) => [r.nodeId, r.run, r.points.map((p) => p.step)]), [["a", "r1", [10, 20]], ["b", "s1", [10, 20]], ["a", "r2", [10]]]);
  assert.deepEqual(runs.map(runLabel), ["run r1 · a", "run s1 · b", "run r2 · a"]);
});

test("points without a run id start a new series where the step falls (a restart)", () => {
  const runs = trainingRuns([point("a", "", 10, T), point("a", "", 20, T + 1), point("a", undefined, 10, T + 2), point("a", "", 30, T + 3)]);
  assert.deepEqual(runs.map((r) => r.points.map((p) => p.step)), [[10, 20], [10, 30]]);
  assert.equal(runLabel(runs[0]), "trainer a");
  for (const run of runs) run.points.forEach((p, i) => i && assert.ok(p.step >= run.points[i - 1].step));
});

test("only the newest runs are kept", () => {
  const points = Array.from({ length: 12 }, (_, i) => point("a", `r${i}`, 10, T + i));
  assert.deepEqual(trainingRuns(points, 3).map((r) => r.run), ["r9", "r10", "r11"]);
});

test("aligned columns: a run skips the other runs' times and breaks after a long pause", () => {
  const runs = trainingRuns([point("a", "r1", 10, T, 2), point("a", "r2", 10, T + 5, 3), point("a", "r1", 20, T + 10, 1), point("a", "r1", 30, T + 10 + GAP_SECONDS + 1, 0.5)]);
  const [times, first, second] = runColumns(runs, "loss");
  assert.deepEqual(times, [T, T + 5, T + 10, T + 11, T + 11 + GAP_SECONDS]);
  assert.deepEqual(first, [2, undefined, 1, null, 0.5], "undefined continues the line; null breaks it");
  assert.deepEqual(second, [undefined, 3, undefined, undefined, undefined]);
  assert.deepEqual(runColumns([], "loss"), [[]]);
});
