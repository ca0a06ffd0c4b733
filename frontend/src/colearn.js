// Colearn portal scripts, bundled by esbuild into platform/static_build/colearn.js.
import { startLiveProjects } from "./live-projects.js";

function init() {
  const listing = document.querySelector("[data-live-projects]");
  if (listing) startLiveProjects(listing, document.querySelector("[data-live-indicator]"));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
