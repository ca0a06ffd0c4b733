// Colearn portal scripts, bundled by esbuild into platform/static_build/colearn.js.
import { startCopyButtons } from "./copy-command.js";
import { startLiveLeaderboard } from "./live-leaderboard.js";
import { startLiveMyNodes } from "./live-my-nodes.js";
import { startLiveProjects } from "./live-projects.js";
import { startModelFigures } from "./model-figures.js";

function init() {
  const listing = document.querySelector("[data-live-projects]");
  if (listing) startLiveProjects(listing, document.querySelector("[data-live-indicator]"));
  const myNodes = document.querySelector("[data-live-my-nodes]");
  if (myNodes) startLiveMyNodes(myNodes, document.querySelector("[data-live-indicator]"));
  const leaderboard = document.querySelector("[data-leaderboard]");
  if (leaderboard) startLiveLeaderboard(leaderboard);
  const figures = document.querySelector("[data-model-figures]");
  if (figures) startModelFigures(figures);
  startCopyButtons();
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
else init();
