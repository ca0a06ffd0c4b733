// Colours of node states, shared by the graph, the table's dots and the legend.
export const STATE_COLORS = {
  online: "#1f9d62",
  stale: "#d69e2e",
  unreachable: "#dd6b20",
  offline: "#8a94a6",
  banned: "#c93a3a",
  pending: "#7b88ff",
  registered: "#4b5bdc",
};

export function stateColor(state) {
  return STATE_COLORS[state] || "#8a94a6";
}

export function cssVar(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}
