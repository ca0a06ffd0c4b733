// The browser's copy of one project's swarm, kept in step with the live channel (platform/live/protocol.py).
// Pure: no DOM, no socket. `applyMessage` returns what the caller must do next ("render", "resync", "ignore").

const MAX_POINTS = 720;

// The replicas and averaging panel before anything is known (platform/swarm/summaries.py ReplicaSummary).
export function emptyReplicas() {
  return { cells: [], cells_count: 0, rounds_completed: 0, rounds_failed: 0 };
}

export function emptySwarm() {
  return {
    seq: 0,
    synced: false,
    project: null,
    viewer: { owner_key: null, staff: false },
    limits: { online_within: 30, offline_after: 90 },
    nodes: new Map(),
    edges: new Map(), // source node id -> [{node_id, requests}]
    coverage: { cells: {}, observed_at: null },
    replicas: emptyReplicas(),
    throughput: [],
    training: [],
    trainingKeys: new Set(),
    alerts: new Map(),
    serverSkew: 0, // server_time - local time, seconds
    lastLatencyMs: null,
  };
}

function appendCapped(list, points) {
  list.push(...points);
  if (list.length > MAX_POINTS) list.splice(0, list.length - MAX_POINTS);
}

function trainingKey(point) {
  return `${point.node_id}:${point.kind || "train"}:${point.step}:${point.t}`;
}

function addTraining(swarm, points) {
  const fresh = points.filter((p) => !swarm.trainingKeys.has(trainingKey(p)));
  for (const p of fresh) swarm.trainingKeys.add(trainingKey(p));
  appendCapped(swarm.training, fresh);
  swarm.training.sort((a, b) => a.t - b.t);
}

function addThroughput(swarm, points) {
  const last = swarm.throughput.length ? swarm.throughput[swarm.throughput.length - 1].t : -Infinity;
  appendCapped(swarm.throughput, points.filter((p) => p.t > last));
}

export function applySnapshot(swarm, snapshot) {
  swarm.seq = snapshot.seq;
  swarm.synced = true;
  swarm.project = snapshot.project;
  swarm.viewer = snapshot.viewer;
  swarm.limits = snapshot.limits || swarm.limits;
  swarm.nodes = new Map(snapshot.nodes.map((n) => [n.node_id, n]));
  swarm.edges = new Map(snapshot.edges.map((e) => [e.source, e.targets]));
  swarm.coverage = snapshot.coverage;
  swarm.replicas = snapshot.replicas || emptyReplicas();
  swarm.throughput = [];
  addThroughput(swarm, snapshot.throughput || []);
  swarm.training = [];
  swarm.trainingKeys = new Set();
  addTraining(swarm, snapshot.training || []);
  swarm.alerts = new Map(snapshot.alerts.map((a) => [a.id, a]));
  if (typeof snapshot.server_time === "number") swarm.serverSkew = snapshot.server_time - Date.now() / 1000;
}

export function applyDiff(swarm, diff) {
  switch (diff.type) {
    case "node.upsert":
      swarm.nodes.set(diff.node.node_id, diff.node);
      break;
    case "node.remove":
      swarm.nodes.delete(diff.node_id);
      swarm.edges.delete(diff.node_id);
      break;
    case "edges.changed":
      if (diff.targets.length) swarm.edges.set(diff.source, diff.targets);
      else swarm.edges.delete(diff.source);
      break;
    case "coverage.changed":
      swarm.coverage = diff.coverage;
      break;
    case "replicas.changed":
      swarm.replicas = diff.replicas;
      break;
    case "metrics.appended":
      if (diff.series === "training") addTraining(swarm, diff.points);
      else if (diff.series === "swarm") addThroughput(swarm, diff.points);
      break;
    case "alert.raised":
      swarm.alerts.set(diff.alert.id, diff.alert);
      break;
    case "alert.cleared":
      swarm.alerts.delete(diff.alert_id);
      break;
    default:
      return false;
  }
  return true;
}

// One message from the socket. A gap in `seq` means something was missed: ask for a snapshot and
// ignore diffs until it arrives (they would be applied to a state we no longer trust).
export function applyMessage(swarm, message, nowSeconds = Date.now() / 1000) {
  if (!message || typeof message.type !== "string" || typeof message.seq !== "number") return "ignore";
  if (message.type === "swarm.snapshot") {
    applySnapshot(swarm, message);
    return "render";
  }
  if (!swarm.synced) return "ignore";
  if (message.seq !== swarm.seq + 1) {
    swarm.synced = false;
    return "resync";
  }
  swarm.seq = message.seq;
  const diffs = message.type === "swarm.batch" ? message.diffs || [] : [message];
  let changed = false;
  for (const diff of diffs) changed = applyDiff(swarm, diff) || changed;
  if (typeof message.since === "number") swarm.lastLatencyMs = Math.max(0, (nowSeconds - message.since) * 1000);
  return changed ? "render" : "ignore";
}

// What the browser shows for a node's state: the portal's state, except that an "online" node whose
// last heartbeat is older than the portal's own threshold is shown as stale (honest freshness).
export function displayState(node, swarm, nowSeconds = Date.now() / 1000) {
  if (node.state !== "online") return node.state;
  const age = heartbeatAge(node, swarm, nowSeconds);
  return age !== null && age > swarm.limits.online_within ? "stale" : "online";
}

export function heartbeatAge(node, swarm, nowSeconds = Date.now() / 1000) {
  if (node.last_heartbeat == null) return null;
  return Math.max(0, nowSeconds + swarm.serverSkew - node.last_heartbeat);
}

export function isMine(node, swarm) {
  return Boolean(swarm.viewer.owner_key) && node.owner_key === swarm.viewer.owner_key;
}

export function formatAge(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 2) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

// Grid coordinates of an expert uid ("ffn.3.14" -> [3, 14]) for a grid of `dims` dimensions.
export function uidCoords(uid, dims) {
  const parts = uid.split(".");
  if (parts.length < dims + 1) return null;
  const coords = parts.slice(parts.length - dims).map(Number);
  return coords.every((c) => Number.isInteger(c) && c >= 0) ? coords : null;
}

// What the portal's probe found of a node's experts: announced in the DHT is a claim; reachable means the
// observer opened a connection; serving means its experts answered an `info` call.
const REACH_LABELS = { serving: "serving", reachable: "reachable, not serving", unreachable: "announced, unreachable" };

export function reachLabel(node) {
  if (!node.announced?.length) return "not announced";
  return REACH_LABELS[node.reach] ?? "announced, not probed yet";
}

// Nodes announced in the DHT, of those reachable, and serving.
export function reachCounts(nodes) {
  const counts = { announced: 0, reachable: 0, serving: 0 };
  for (const node of nodes) {
    if (!node.announced?.length) continue;
    counts.announced += 1;
    if (node.reach === "serving" || node.reach === "reachable") counts.reachable += 1;
    if (node.reach === "serving") counts.serving += 1;
  }
  return counts;
}
