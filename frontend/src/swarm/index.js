// Entry of the live swarm page (bundled to static_build/swarm/index.js, loaded by the swarm templates).
// Finds `[data-live-swarm]` (a project's swarm dashboard) and `[data-live-health]` (the admin health page).
import { startHealthPage } from "./health.js";
import { startSwarmPage } from "./page.js";

function init() {
  for (const root of document.querySelectorAll("[data-live-swarm]")) startSwarmPage(root);
  if (document.querySelector("[data-live-health]")) startHealthPage();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
