// Unit tests of the replicas and averaging panel's model (src/swarm/replicas.js, src/swarm/state.js).
import assert from "node:assert/strict";
import test from "node:test";

import { NEVER_AVERAGED, replicaView } from "../src/swarm/replicas.js";
import { applyMessage, emptySwarm } from "../src/swarm/state.js";

const NOW = 1_700_000_000;

function snapshot(seq, extra = {}) {
  return {
    type: "swarm.snapshot", seq, project: { slug: "p", grid: [4, 4] }, viewer: { owner_key: null, staff: false },
    nodes: [], edges: [], coverage: { cells: { "ffn.0.0": 2, "ffn.0.1": 1 }, observed_at: NOW }, throughput: [],
    training: [], alerts: [], server_time: NOW, ...extra,
  };
}

const replicas = (cells, count = cells.length, completed = 0, failed = 0) => ({
  cells, cells_count: count, rounds_completed: completed, rounds_failed: failed,
});

test("a snapshot without replicas (an older portal) shows an empty panel", () => {
  const swarm = emptySwarm();
  applyMessage(swarm, snapshot(1), NOW);
  const view = replicaView(swarm, NOW);
  assert.deepEqual(view.rows, []);
  assert.match(view.summary, /^1 of 16 cells have two or more live replicas; averaging rounds: 0 completed, 0 failed/);
  assert.equal(view.note, "");
});

test("replicas.changed replaces the summary; replicas per cell come from the coverage reading", () => {
  const swarm = emptySwarm();
  applyMessage(swarm, snapshot(1, { replicas: replicas([{ uid: "ffn.0.0", step: 3, averaged_at: null }], 1, 1, 0) }), NOW);
  swarm.serverSkew = 0; // the snapshot measured it against the real clock; these tests use NOW as "now"
  assert.equal(replicaView(swarm, NOW).rows[0].age, NEVER_AVERAGED);
  const cells = [
    { uid: "ffn.0.1", step: 7, averaged_at: null },
    { uid: "ffn.0.0", step: 120, averaged_at: NOW - 30 },
  ];
  const diff = { type: "replicas.changed", at: NOW, replicas: replicas(cells, 40, 41, 2) };
  assert.equal(applyMessage(swarm, { ...diff, seq: 2 }, NOW), "render");
  const view = replicaView(swarm, NOW);
  assert.deepEqual(view.rows.map((r) => [r.uid, r.replicas, r.step, r.age]), [
    ["ffn.0.1", 1, 7, NEVER_AVERAGED],
    ["ffn.0.0", 2, 120, "30 s ago"],
  ]);
  assert.match(view.summary, /41 completed, 2 failed/);
  assert.equal(view.note, "The 2 stalest of 40 cells.");
  // Applying the same diff again changes nothing more (idempotent).
  applyMessage(swarm, { ...diff, seq: 3 }, NOW);
  assert.deepEqual(replicaView(swarm, NOW).rows.map((r) => r.uid), ["ffn.0.1", "ffn.0.0"]);
});

test("ages tick from the averaging time, by the server's clock", () => {
  const swarm = emptySwarm();
  applyMessage(swarm, snapshot(1, { replicas: replicas([{ uid: "ffn.0.0", step: 1, averaged_at: NOW }]) }), NOW);
  swarm.serverSkew = 60; // server_time - local time, as a snapshot measures it
  // The server's clock runs 60 s ahead of ours: the state was averaged 60 s ago, then 160 s ago.
  assert.equal(replicaView(swarm, NOW).rows[0].age, "60 s ago");
  assert.equal(replicaView(swarm, NOW + 100).rows[0].age, "3 min ago");
});
