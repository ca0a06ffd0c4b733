// Keeps "My nodes" live: listens to /ws/my-nodes/ (the signed-in volunteer's own nodes) and updates each
// node's card in place: state and why, whether the portal's probe reached its experts, heartbeat, experts
// and contribution. Built with textContent only (node data never becomes HTML). A node that is not on
// the page yet (joined after it loaded) is announced with a note to reload, not drawn half-made.
import { keepLive } from "./live-socket.js";
import { formatAge, reachLabel } from "./swarm/state.js";

const STATE_LABELS = {
  pending: "Awaiting approval",
  registered: "Registered",
  online: "Online",
  unreachable: "Unreachable",
  offline: "Offline",
  banned: "Banned",
};

function setText(card, field, text) {
  const element = card.querySelector(`[data-field="${field}"]`);
  if (element) element.textContent = text;
  return element;
}

export function probeText(node, nowSeconds) {
  if (!node.announced.length) return "";
  if (node.probed_at == null) return "the portal has not probed it yet";
  const age = `probed ${formatAge(nowSeconds - node.probed_at)}`;
  return node.probe_reason ? `${age} · ${node.probe_reason}` : age;
}

export function applyOwnNode(root, node, nowSeconds = Date.now() / 1000) {
  const card = [...root.querySelectorAll("[data-node-id]")].find((c) => c.dataset.nodeId === node.node_id);
  if (!card) return false;
  const label = STATE_LABELS[node.state] ?? node.state_label;
  card.dataset.state = node.state;
  const badge = card.querySelector(".badge[class*='badge-node-']");
  if (badge) {
    badge.className = `badge badge-node-${node.state}`;
    badge.textContent = label;
    badge.title = node.state_reason;
  }
  const since = formatAge(nowSeconds - node.state_changed);
  setText(card, "state-text", `${label} since ${since}${node.state_reason ? ` · ${node.state_reason}` : ""}`);
  const reach = setText(card, "reach", node.announced.length ? capitalise(reachLabel(node)) : "Not announced");
  if (reach) {
    reach.className = `badge badge-reach-${node.announced.length ? node.reach || "unprobed" : "none"}`;
    reach.title = node.probe_reason;
  }
  setText(card, "probe", probeText(node, nowSeconds));
  const beat = card.querySelector('[data-field="heartbeat"]');
  if (beat) {
    beat.dataset.heartbeat = node.last_heartbeat ?? "";
    beat.textContent = node.last_heartbeat == null ? "never" : formatAge(nowSeconds - node.last_heartbeat);
  }
  const inDht = node.announced.length ? ` (${node.announced.length} seen in the DHT)` : "";
  setText(card, "experts", `${node.experts.length ? node.experts.join(", ") : "none"}${inDht}`);
  const contribution = card.querySelector('[data-field="contribution"]');
  if (contribution?.firstChild?.nodeType === Node.TEXT_NODE) {
    contribution.firstChild.textContent = contribution.firstChild.textContent.replace(/^\d+ samples · \d+ requests/, `${node.samples} samples · ${node.requests} requests`);
  }
  return true;
}

function capitalise(text) {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

export function startLiveMyNodes(root, indicator) {
  let missing = false;
  keepLive({
    path: "/ws/my-nodes/",
    // This socket is accepted or refused at once: an open socket is a live one.
    onOpen: (link) => link.markLive(),
    onStatus: (state) => {
      if (!indicator) return;
      indicator.hidden = state === "forbidden" || state === "gone";
      indicator.dataset.state = state === "live" || state === "connecting" ? state : "reconnecting";
      indicator.textContent = state === "live" ? "live" : state === "connecting" ? "connecting…" : "reconnecting…";
    },
    onMessage: (message) => {
      const nodes = message?.type === "mynodes.snapshot" ? message.nodes : message?.type === "mynodes.node_changed" ? [message.node] : [];
      for (const node of nodes ?? []) {
        if (!node || typeof node.node_id !== "string") continue;
        if (!applyOwnNode(root, node) && !missing && indicator) {
          missing = true;
          indicator.textContent = "live · a new node joined: reload to see it";
        }
      }
    },
  });
}
