// The node table: state, role, owner, experts, throughput and freshness, the viewer's nodes first.
// Built with textContent only (node data never becomes HTML). Large swarms show the first MAX_ROWS.
import { displayState, formatAge, heartbeatAge, isMine, reachLabel } from "./state.js";

export const MAX_ROWS = 200;
const STATE_ORDER = { online: 0, stale: 1, unreachable: 2, registered: 3, pending: 4, offline: 5, banned: 6 };

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

export function sortedNodes(swarm) {
  const now = Date.now() / 1000;
  return [...swarm.nodes.values()]
    .map((node) => ({ node, state: displayState(node, swarm, now), mine: isMine(node, swarm) }))
    .sort(
      (a, b) =>
        Number(b.mine) - Number(a.mine) ||
        (STATE_ORDER[a.state] ?? 9) - (STATE_ORDER[b.state] ?? 9) ||
        b.node.samples_per_s - a.node.samples_per_s ||
        (a.node.node_id < b.node.node_id ? -1 : 1),
    );
}

export function renderTable(tbody, note, swarm) {
  const rows = sortedNodes(swarm);
  const fragment = document.createDocumentFragment();
  for (const { node, state, mine } of rows.slice(0, MAX_ROWS)) {
    const tr = document.createElement("tr");
    tr.dataset.nodeId = node.node_id;
    tr.dataset.state = state;
    if (mine) tr.classList.add("is-mine");
    const id = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = node.label;
    code.title = node.node_id;
    id.append(code);
    if (mine) {
      const tag = document.createElement("span");
      tag.className = "mine-tag";
      tag.textContent = "yours";
      id.append(" ", tag);
    }
    const stateCell = document.createElement("td");
    const dot = document.createElement("span");
    dot.className = "state-dot";
    dot.dataset.state = state;
    stateCell.append(dot, state === "stale" ? "stale (online, silent)" : node.state_label.toLowerCase());
    const served = node.role === "trainer" ? "–" : `${node.experts.length} / ${node.announced.length}`;
    const reach = cell(node.role === "trainer" ? "–" : reachLabel(node), "reach");
    reach.dataset.reach = node.reach || (node.announced.length ? "unprobed" : "none");
    if (node.probe_reason) reach.title = node.probe_reason;
    const age = heartbeatAge(node, swarm);
    const fresh = cell(formatAge(age), "freshness");
    fresh.dataset.heartbeat = node.last_heartbeat ?? "";
    tr.append(
      id,
      stateCell,
      reach,
      cell(node.role || "–"),
      cell(node.owner || "–"),
      cell(served, "num"),
      cell(node.samples_per_s.toFixed(1), "num"),
      cell(node.samples.toLocaleString(), "num"),
      cell(node.agent_version || "–"),
      fresh,
    );
    fragment.append(tr);
  }
  tbody.replaceChildren(fragment);
  note.textContent =
    rows.length > MAX_ROWS ? `Showing ${MAX_ROWS} of ${rows.length} nodes (yours and the busiest first).` : "";
  return rows;
}

// Freshness text ages every second without waiting for a message.
export function refreshFreshness(tbody, swarm) {
  for (const td of tbody.querySelectorAll("td.freshness")) {
    const beat = td.dataset.heartbeat;
    td.textContent = beat ? formatAge(Date.now() / 1000 + swarm.serverSkew - Number(beat)) : "never";
  }
}
