// Keeps the public project listing live: listens to /ws/projects/ for `project.changed` events,
// updates the matching card, or adds a new one when it belongs on the page being shown.
import { keepLive } from "./live-socket.js";

// A new card is a copy of the server's own card (projects/_card.html, rendered empty into the
// listing's <template>), so the listing has one card markup whether or not a script runs.
function buildCard(template, project) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.dataset.slug = project.slug;
  card.querySelector("h3 a")?.setAttribute("href", project.url);
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
  const template = document.querySelector("template[data-project-card]");
  if (!template) return "ignored";
  const card = buildCard(template, project);
  fillCard(card, project);
  listing.prepend(card);
  return "added";
}

export function startLiveProjects(listing, indicator) {
  keepLive({
    path: "/ws/projects/",
    // This socket is accepted or refused at once: an open socket is a live one.
    onOpen: (link) => link.markLive(),
    onStatus: (state) => {
      if (!indicator || state === "connecting") return;
      const final = state === "forbidden" || state === "gone";
      indicator.hidden = final;
      indicator.dataset.state = state === "live" ? "live" : "reconnecting";
      indicator.textContent = state === "live" ? "live" : "reconnecting…";
    },
    onMessage: (event) => {
      if (event?.type === "project.changed" && event.project) applyProjectChanged(listing, event.project);
    },
  });
}
