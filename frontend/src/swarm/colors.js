// Colours come from the stylesheet's custom properties (colearn.css :root), so the CSS (badges, dots,
// legend) and the canvas drawings (graph, heatmap, charts) share one palette, light and dark alike.

export const NODE_STATES = ["online", "stale", "unreachable", "offline", "banned", "pending", "registered"];

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// state -> colour, read once per drawing (a lookup per node would restyle the page a thousand times).
export function statePalette() {
  const style = getComputedStyle(document.documentElement);
  const colors = new Map(NODE_STATES.map((state) => [state, style.getPropertyValue(`--state-${state}`).trim()]));
  return (state) => colors.get(state) || colors.get("offline");
}

// "#rrggbb" with an alpha, for translucent fills on a canvas; other colour forms are returned as they are.
export function withAlpha(color, alpha) {
  const match = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
  if (!match) return color;
  const [r, g, b] = match.slice(1).map((hex) => parseInt(hex, 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}
