// Unit tests of the browser's swarm model (src/swarm/state.js): snapshots, diffs, seq gaps, metrics.
import assert from "node:assert/strict";
import test from "node:test";

import { applyMessage, displayState, emptySwarm, formatAge, heartbeatAge, isMine, reachCounts, reachLabel, uidCoords } from "../src/swarm/state.js";

const NOW = 1_700_000_000;

function node(id, extra = {}) {
  return { node_id: id, label: id.slice(0, 8), state: "online", state_label: "Online", role: "server", owner: "Vera",
    owner_key: "k-vera", experts: [], announced: [], samples_per_s: 0, samples: 0, last_heartbeat: NOW, ...extra };
}

function snapshot(seq, extra = {}) {
  return {
    type: "swarm.snapshot", seq, project: { slug: "p", grid: [2, 2] }, viewer: { owner_key: "k-vera", staff: false },
    limits: { online_within: 30, offline_after: 90 }, nodes: [node("a"), node("b")], edges: [{ source: "a", targets: [{ node_id: "b", requests: 3 }] }],
    coverage: { cells: { "ffn.0.0": 1 }, observed_at: NOW }, throughput: [{ t: NOW - 2, samples_per_s: 5 }, { t: NOW - 1, samples_per_s: 6 }],
    training: [{ node_id: "a", step: 1, t: NOW - 1, loss: 2.0, accuracy: 0.1 }], alerts: [{ id: 7, severity: "warning", message: "hole", raised_at: NOW - 60 }],
    server_time: NOW, ...extra,
  };
}

function synced(seq = 10) {
  const swarm = emptySwarm();
  assert.equal(applyMessage(swarm, snapshot(seq), NOW), "render");
  return swarm;
}

const batch = (seq, diffs) => ({ type: "swarm.batch", seq, diffs });

test("diffs before the first snapshot are ignored; the snapshot syncs the model", () => {
  const swarm = emptySwarm();
  assert.equal(applyMessage(swarm, batch(1, [{ type: "node.upsert", node: node("x") }]), NOW), "ignore");
  assert.equal(swarm.nodes.size, 0);
  assert.equal(applyMessage(swarm, snapshot(5), NOW), "render");
  assert.equal(swarm.synced, true);
  assert.equal(swarm.seq, 5);
  assert.deepEqual([...swarm.nodes.keys()], ["a", "b"]);
  assert.deepEqual(swarm.edges.get("a"), [{ node_id: "b", requests: 3 }]);
  assert.equal(swarm.alerts.get(7).message, "hole");
});

test("a snapshot replaces everything, series included, rather than merging", () => {
  const swarm = synced();
  applyMessage(swarm, batch(11, [{ type: "node.upsert", node: node("c") }, { type: "alert.raised", alert: { id: 8, severity: "critical", message: "x", raised_at: NOW } }]), NOW);
  assert.equal(applyMessage(swarm, snapshot(3, { nodes: [node("z")], edges: [], alerts: [], throughput: [], training: [] }), NOW), "render");
  assert.equal(swarm.seq, 3, "a restarted portal's lower seq is taken as it is");
  assert.deepEqual([...swarm.nodes.keys()], ["z"]);
  assert.equal(swarm.edges.size, 0);
  assert.equal(swarm.alerts.size, 0);
  assert.deepEqual(swarm.throughput, []);
  assert.deepEqual(swarm.training, []);
});

test("a gap in seq asks for a resync and ignores diffs until the next snapshot", () => {
  const swarm = synced(10);
  assert.equal(applyMessage(swarm, batch(12, [{ type: "node.remove", node_id: "a" }]), NOW), "resync");
  assert.equal(swarm.synced, false);
  assert.equal(swarm.nodes.has("a"), true, "the diff after the gap was not applied");
  assert.equal(applyMessage(swarm, batch(13, [{ type: "node.remove", node_id: "a" }]), NOW), "ignore");
  assert.equal(swarm.nodes.has("a"), true);
  assert.equal(applyMessage(swarm, snapshot(20), NOW), "render");
  assert.equal(applyMessage(swarm, batch(21, [{ type: "node.remove", node_id: "a" }]), NOW), "render");
  assert.equal(swarm.nodes.has("a"), false);
});

test("a repeated or older seq is a gap too", () => {
  const swarm = synced(10);
  assert.equal(applyMessage(swarm, batch(10, []), NOW), "resync");
});

test("upserts add and replace nodes; removes drop the node and its edges", () => {
  const swarm = synced(10);
  assert.equal(applyMessage(swarm, batch(11, [{ type: "node.upsert", node: node("c", { samples_per_s: 4 }) }]), NOW), "render");
  assert.equal(swarm.nodes.get("c").samples_per_s, 4);
  applyMessage(swarm, batch(12, [{ type: "node.upsert", node: node("c", { state: "offline" }) }]), NOW);
  assert.equal(swarm.nodes.get("c").state, "offline");
  assert.equal(swarm.nodes.size, 3);
  applyMessage(swarm, batch(13, [{ type: "node.remove", node_id: "a" }]), NOW);
  assert.equal(swarm.nodes.has("a"), false);
  assert.equal(swarm.edges.has("a"), false);
  applyMessage(swarm, batch(14, [{ type: "edges.changed", source: "b", targets: [{ node_id: "c", requests: 1 }] }]), NOW);
  assert.deepEqual(swarm.edges.get("b"), [{ node_id: "c", requests: 1 }]);
  applyMessage(swarm, batch(15, [{ type: "edges.changed", source: "b", targets: [] }]), NOW);
  assert.equal(swarm.edges.has("b"), false);
});

test("a single diff outside a batch counts, and unknown diff types change nothing", () => {
  const swarm = synced(10);
  assert.equal(applyMessage(swarm, { type: "node.remove", seq: 11, node_id: "b" }, NOW), "render");
  assert.equal(swarm.nodes.has("b"), false);
  assert.equal(applyMessage(swarm, batch(12, [{ type: "no.such.diff" }]), NOW), "ignore");
  assert.equal(swarm.seq, 12, "an unknown diff still uses its seq");
});

test("coverage is replaced as a whole", () => {
  const swarm = synced(10);
  const coverage = { cells: { "ffn.1.1": 2 }, observed_at: NOW + 5 };
  applyMessage(swarm, batch(11, [{ type: "coverage.changed", coverage }]), NOW);
  assert.deepEqual(swarm.coverage, coverage);
});

test("metrics: throughput only moves forward, training points are deduplicated and kept in time order", () => {
  const swarm = synced(10);
  applyMessage(swarm, batch(11, [{ type: "metrics.appended", series: "swarm", points: [{ t: NOW - 1, samples_per_s: 99 }, { t: NOW, samples_per_s: 7 }] }]), NOW);
  assert.deepEqual(swarm.throughput.map((p) => p.samples_per_s), [5, 6, 7]);
  const early = { node_id: "b", step: 1, t: NOW - 5, loss: 3, accuracy: 0 };
  const again = { node_id: "a", step: 1, t: NOW - 1, loss: 2.0, accuracy: 0.1 };
  applyMessage(swarm, batch(12, [{ type: "metrics.appended", series: "training", points: [again, early] }]), NOW);
  assert.deepEqual(swarm.training.map((p) => p.node_id), ["b", "a"]);
  applyMessage(swarm, batch(13, [{ type: "metrics.appended", series: "unknown", points: [{ t: NOW + 1 }] }]), NOW);
  assert.equal(swarm.throughput.length, 3);
});

test("series are capped, the oldest points dropped first", () => {
  const swarm = synced(10);
  const points = Array.from({ length: 2000 }, (_, i) => ({ t: NOW + i, samples_per_s: i }));
  applyMessage(swarm, batch(11, [{ type: "metrics.appended", series: "swarm", points }]), NOW);
  assert.equal(swarm.throughput.length, 720);
  assert.equal(swarm.throughput.at(-1).samples_per_s, 1999);
});

test("alerts are raised and cleared by id", () => {
  const swarm = synced(10);
  applyMessage(swarm, batch(11, [{ type: "alert.raised", alert: { id: 9, severity: "critical", message: "down", raised_at: NOW } }]), NOW);
  assert.deepEqual([...swarm.alerts.keys()].sort(), [7, 9]);
  applyMessage(swarm, batch(12, [{ type: "alert.cleared", alert_id: 7 }]), NOW);
  assert.deepEqual([...swarm.alerts.keys()], [9]);
});

test("malformed messages are ignored without touching the model", () => {
  const swarm = synced(10);
  for (const hostile of [null, undefined, 42, "x", {}, { type: 3, seq: 11 }, { type: "swarm.batch" }, { type: "swarm.batch", seq: "11" }]) {
    assert.equal(applyMessage(swarm, hostile, NOW), "ignore");
  }
  assert.equal(swarm.seq, 10);
  assert.equal(swarm.synced, true);
});

test("the latency of a batch is measured from its `since`", () => {
  const swarm = synced(10);
  applyMessage(swarm, { ...batch(11, []), since: NOW - 0.25 }, NOW);
  assert.equal(Math.round(swarm.lastLatencyMs), 250);
});

test("an online node whose heartbeats stopped shows as stale, by the server's clock", () => {
  const swarm = synced(10);
  const portalAhead = emptySwarm();
  applyMessage(portalAhead, snapshot(1, { server_time: Date.now() / 1000 + 100 }));
  assert.ok(Math.abs(portalAhead.serverSkew - 100) < 5, "the snapshot measures the clock skew");
  swarm.serverSkew = 0; // the clocks agree
  const quiet = node("q", { last_heartbeat: NOW - 31 });
  assert.equal(displayState(quiet, swarm, NOW), "stale");
  assert.equal(displayState(node("f", { last_heartbeat: NOW - 29 }), swarm, NOW), "online");
  assert.equal(displayState(node("o", { state: "offline", last_heartbeat: NOW - 500 }), swarm, NOW), "offline");
  swarm.serverSkew = -10; // this browser's clock runs 10 s ahead of the portal's
  assert.equal(displayState(quiet, swarm, NOW + 10), "stale");
  assert.equal(heartbeatAge(node("n", { last_heartbeat: null }), swarm, NOW), null);
  assert.equal(displayState(node("n", { last_heartbeat: null }), swarm, NOW), "online");
});

test("the viewer's own nodes, ages and expert coordinates", () => {
  const swarm = synced(10);
  assert.equal(isMine(node("a"), swarm), true);
  assert.equal(isMine(node("a", { owner_key: "k-other" }), swarm), false);
  assert.equal(isMine(node("a"), emptySwarm()), false, "an anonymous viewer owns nothing");
  assert.deepEqual([formatAge(null), formatAge(1), formatAge(30), formatAge(600), formatAge(7200), formatAge(200000)],
    ["never", "just now", "30 s ago", "10 min ago", "2 h ago", "2 d ago"]);
  assert.deepEqual(uidCoords("ffn.3.14", 2), [3, 14]);
  assert.equal(uidCoords("ffn.3", 2), null);
  assert.equal(uidCoords("ffn.-1.2", 2), null);
  assert.equal(uidCoords("ffn.a.2", 2), null);
});

test("reach: announced, reachable and serving are told apart", () => {
  const nodes = [
    node("a", { announced: ["ffn.0.0"], reach: "serving" }),
    node("b", { announced: ["ffn.0.1"], reach: "reachable", probe_reason: "connected, but ffn.0.1: malformed info reply" }),
    node("c", { announced: ["ffn.1.0"], reach: "unreachable" }),
    node("d", { announced: ["ffn.1.1"], reach: "" }),
    node("e", { announced: [], reach: "serving" }), // no longer announced: counts for nothing
  ];
  assert.deepEqual(reachCounts(nodes), { announced: 4, reachable: 2, serving: 1 });
  assert.deepEqual(nodes.map(reachLabel), ["serving", "reachable, not serving", "announced, unreachable", "announced, not probed yet", "not announced"]);
  assert.equal(reachLabel(node("f", { announced: ["x"], reach: "<img>" })), "announced, not probed yet");
});
