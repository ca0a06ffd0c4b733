// The admin swarm-health page, live: one socket per project section (admins may watch every project).
// Updates what the server-rendered page shows: nodes online, each node row's state, coverage, alerts.
import { statusLabel } from "../live-socket.js";
import { renderAlerts } from "./alerts.js";
import { connectSwarm } from "./socket.js";
import { displayState, emptySwarm } from "./state.js";

function liveAlerts(section) {
  let list = section.querySelector("[data-live-alerts]");
  if (!list) {
    list = document.createElement("ul");
    list.className = "alerts";
    list.dataset.liveAlerts = "";
    section.querySelector(".card-head")?.after(list);
  }
  return list;
}

function renderSection(section, swarm) {
  const now = Date.now() / 1000;
  const nodes = [...swarm.nodes.values()];
  const online = nodes.filter((n) => displayState(n, swarm, now) === "online").length;
  const stat = section.querySelector('[data-stat="online"]');
  if (stat) stat.textContent = String(online);
  for (const row of section.querySelectorAll("tr[data-node-id]")) {
    const node = swarm.nodes.get(row.dataset.nodeId);
    if (!node) continue;
    const state = displayState(node, swarm, now);
    row.dataset.state = state;
    const badge = row.querySelector(".badge");
    if (badge) {
      badge.className = `badge badge-node-${node.state}`;
      badge.textContent = state === "stale" ? "Online (silent)" : node.state_label;
    }
  }
  const known = new Set([...section.querySelectorAll("tr[data-node-id]")].map((r) => r.dataset.nodeId));
  const unseen = nodes.filter((n) => !known.has(n.node_id)).length;
  section.dataset.newNodes = String(unseen);
  renderAlerts(liveAlerts(section), swarm, now);
  // The server-rendered alert list is replaced by the live one.
  for (const stale of section.querySelectorAll(".alerts:not([data-live-alerts])")) stale.hidden = true;
}

export function startHealthPage() {
  for (const section of document.querySelectorAll(".health-project[data-project]")) {
    const swarm = emptySwarm();
    let frame = null;
    const indicator = document.createElement("span");
    indicator.className = "live-indicator";
    indicator.dataset.liveIndicator = "";
    section.querySelector(".card-head")?.append(indicator);
    connectSwarm({
      path: `/ws/live/projects/${encodeURIComponent(section.dataset.project)}/`,
      swarm,
      onChange: () => {
        if (!frame) frame = requestAnimationFrame(() => {
          frame = null;
          renderSection(section, swarm);
        });
      },
      onStatus: (state, attempt) => {
        indicator.dataset.state = state === "live" ? "live" : state === "connecting" && !attempt ? "connecting" : "reconnecting";
        indicator.textContent = statusLabel(state, attempt);
        section.classList.toggle("is-stale", state !== "live");
        if (state === "live") renderSection(section, swarm);
      },
    });
  }
}
