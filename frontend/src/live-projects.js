// Keeps the public project listing live: listens to /ws/projects/ for `project.changed` events,
// updates the matching card, or adds a new one when it belongs on the page being shown.
import { reconnectDelayMs } from "./backoff.js";

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/ws/projects/`;
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

// Built with textContent only: event data never becomes HTML.
function buildCard(project) {
  const card = el("article", { class: "card project-card", "data-slug": project.slug });
  const head = el("header", { class: "card-head" });
  const title = el("h3");
  title.append(el("a", { href: project.url }, project.title));
  head.append(title, el("span", { class: "badge", "data-field": "status" }));
  const chips = el("ul", { class: "chips" });
  chips.append(el("li", { "data-field": "dataset" }), el("li", { "data-field": "architecture" }));
  const grid = el("li", {}, "grid ");
  grid.append(el("span", { "data-field": "grid_shape" }));
  chips.append(grid);
  const foot = el("footer", { class: "card-foot" }, "by ");
  foot.append(el("span", { "data-field": "owner" }));
  card.append(head, el("p", { class: "card-text", "data-field": "description" }), chips, foot);
  return card;
}

function fillCard(card, project) {
  const set = (field, value) => {
    const node = card.querySelector(`[data-field="${field}"]`);
    if (node) node.textContent = value;
  };
  set("status", project.status_label);
  set("description", project.description.length > 180 ? `${project.description.slice(0, 179)}…` : project.description);
  set("dataset", project.dataset);
  set("architecture", project.architecture);
  set("grid_shape", project.grid_shape);
  set("owner", project.owner);
  const badge = card.querySelector('[data-field="status"]');
  if (badge) badge.className = `badge badge-${project.status}`;
  const link = card.querySelector("h3 a");
  if (link) link.textContent = project.title;
  card.classList.remove("flash");
  void card.offsetWidth; // restart the highlight animation
  card.classList.add("flash");
}

function belongsHere(listing, project) {
  const status = listing.dataset.status || "";
  return !listing.dataset.search && listing.dataset.page === "1" && (!status || status === project.status);
}

export function applyProjectChanged(listing, project) {
  const existing = [...listing.querySelectorAll("[data-slug]")].find((c) => c.dataset.slug === project.slug);
  if (existing) {
    fillCard(existing, project);
    return "updated";
  }
  if (!belongsHere(listing, project)) return "ignored";
  listing.querySelector("[data-empty]")?.remove();
  const card = buildCard(project);
  fillCard(card, project);
  listing.prepend(card);
  return "added";
}

export function startLiveProjects(listing, indicator) {
  let attempt = 0;
  const show = (state) => {
    if (!indicator) return;
    indicator.hidden = false;
    indicator.dataset.state = state;
    indicator.textContent = state === "live" ? "live" : "reconnecting…";
  };
  const connect = () => {
    const socket = new WebSocket(socketUrl());
    socket.addEventListener("open", () => {
      attempt = 0;
      show("live");
    });
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        console.warn("colearn: ignoring a malformed live update");
        return;
      }
      if (event?.type === "project.changed" && event.project) applyProjectChanged(listing, event.project);
    });
    socket.addEventListener("close", () => {
      show("reconnecting");
      setTimeout(connect, reconnectDelayMs(attempt++));
    });
  };
  connect();
}
