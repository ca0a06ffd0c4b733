// Unit tests of the project's grids taken together (src/swarm/grids.js, src/swarm/heatmap.js's counts):
// a language model's blocks each get their own matrix, and the counts cover every block.
import assert from "node:assert/strict";
import test from "node:test";

import { cellUid, gridMatrices, gridsTotal, locateCell, projectGrids } from "../src/swarm/grids.js";
import { coverageCounts } from "../src/swarm/heatmap.js";

const LM = { slug: "lm", grid: [2, 2], grid_names: ["lm.b0", "lm.b1", "lm.b2", "lm.b3"] };

test("a language model's cells are located in their own block", () => {
  const grids = projectGrids(LM);
  assert.equal(gridsTotal(grids), 16);
  assert.deepEqual(locateCell("lm.b1.1.0", grids), { grid: 1, index: 2 });
  assert.deepEqual(locateCell("lm.b3.0.1", grids), { grid: 3, index: 1 });
  for (const uid of ["lm.b4.0.0", "lm.b1.2.0", "lm.b1.0", "lm.b10.0.0", "lm.b1.0.0.0", "ffn.0.0", "lm.b1.x.0", ""]) {
    assert.equal(locateCell(uid, grids), null, uid);
  }
  assert.equal(cellUid(grids, 2, 3), "lm.b2.1.1");
});

test("each block has its own matrix; a node serving only block 1 covers block 1", () => {
  const grids = projectGrids(LM);
  const cells = { "lm.b1.0.0": 1, "lm.b1.0.1": 2, "lm.b1.1.0": 1, "lm.b1.1.1": 3, "junk.0.0": 9 };
  const matrices = gridMatrices(cells, grids);
  assert.deepEqual(matrices.map((m) => [m.covered, m.holes]), [[0, 4], [4, 0], [0, 4], [0, 4]]);
  assert.deepEqual([...matrices[1].values], [1, 2, 1, 3]);
  assert.equal(matrices[1].max, 3);
  assert.deepEqual(coverageCounts(cells, grids), { covered: 4, holes: 12, total: 16 });
});

test("a classifier keeps its one grid; a project without grid names has one unnamed grid", () => {
  const grids = projectGrids({ grid: [4, 4], grid_names: ["ffn"] });
  assert.deepEqual(grids.names, ["ffn"]);
  const [matrix] = gridMatrices({ "ffn.3.3": 2 }, grids);
  assert.equal(matrix.values[15], 2);
  assert.deepEqual(projectGrids(null), { names: [""], dims: [1], perGrid: 1 });
});
