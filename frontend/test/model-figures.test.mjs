// Unit tests of the project form's live figures (run: npm test); the same rules the portal renders with.
import assert from "node:assert/strict";
import test from "node:test";

import { formatBytes, formatCount, modelFigures, parseGrid } from "../src/model-figures.js";

const RULES = {
  coefficients: { ffn: [8, 7], transformer: [12, 13] },
  bytes_per_parameter: 16,
  volunteer_experts: 4,
  volunteer_memory: 2 * 1024 ** 3,
  max_cells: 65536,
  max_grid_dims: 4,
  max_grid_side: 1024,
  max_blocks: 64,
};

const LM = { task: "lm", architecture: "ffn", hidden: "1024", grid: "16x16", blocks: "4", heads: "8", seqLen: "128", window: "64" };

test("4 blocks of 16x16 experts of width 1024 are 8.6 billion parameters", () => {
  const { figures } = modelFigures(LM, RULES);
  assert.equal(figures["total-experts"], "1024");
  assert.equal(figures["parameters-per-expert"], "8,395,776"); // 8 * 1024 * 1024 + 7 * 1024
  assert.equal(figures["total-parameters"], "8.6 billion"); // 1024 experts x (8d^2 + 7d), d = 1024
  assert.match(figures["memory-per-expert"], /^128\.1 MiB/);
  assert.match(figures.volunteer, /^hosts 4 experts by default, 512\.4 MiB; 256 volunteers/);
});

test("a volunteer hosts one expert per block when there are more blocks, within its memory budget", () => {
  const { figures } = modelFigures({ ...LM, blocks: "8", hidden: "64" }, RULES);
  assert.match(figures.volunteer, /^hosts 8 experts by default/);
  const wide = modelFigures({ ...LM, blocks: "64", hidden: "1024", grid: "4x4" }, RULES).figures;
  assert.match(wide.volunteer, /^hosts 15 experts by default/); // 2 GiB / 128.1 MiB per expert
});

test("a classifier has one grid whatever the block field says", () => {
  const { figures } = modelFigures({ ...LM, task: "classification", blocks: "junk", hidden: "64", grid: "4x4" }, RULES);
  assert.equal(figures.grids, "1 grid of 16 experts");
});

test("hostile or inconsistent values give a problem, never figures", () => {
  for (const values of [
    { ...LM, grid: "16x" },
    { ...LM, grid: "1e3" },
    { ...LM, grid: "2000x2" },
    { ...LM, hidden: "-5" },
    { ...LM, hidden: "99999999999999999999" },
    { ...LM, blocks: "65" },
    { ...LM, blocks: "64", grid: "32x33" },
    { ...LM, heads: "3" },
    { ...LM, window: "256" },
    { ...LM, architecture: "<script>" },
  ]) {
    const result = modelFigures(values, RULES);
    assert.ok(result.problem && !result.figures, JSON.stringify(values));
  }
});

test("grids and numbers are written as the server writes them", () => {
  assert.deepEqual(parseGrid(" 8 x 8 x4", RULES), [8, 8, 4]);
  assert.equal(formatCount(999), "999");
  assert.equal(formatCount(2_147_000_000), "2.1 billion");
  assert.equal(formatBytes(1023), "1023 B");
  assert.equal(formatBytes(4_210_688), "4.0 MiB");
});
