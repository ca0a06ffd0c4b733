// The node-state colours live in one place, colearn.css's custom properties: every state has one, the
// dots and badges use it, and no script or live template carries a colour literal of its own.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import test from "node:test";

import { NODE_STATES, withAlpha } from "../src/swarm/colors.js";

const src = new URL("../src/", import.meta.url);
const css = readFileSync(new URL("colearn.css", src), "utf8");

function scripts(dir = src) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const url = new URL(entry.name + (entry.isDirectory() ? "/" : ""), dir);
    if (entry.isDirectory()) return scripts(url);
    return entry.name.endsWith(".js") ? [url] : [];
  });
}

test("every node state has its colour variable and its dot and badge rules", () => {
  for (const state of NODE_STATES) {
    assert.match(css, new RegExp(`--state-${state}: #[0-9a-f]{6};`), state);
    assert.ok(css.includes(`.state-dot[data-state="${state}"], .badge-node-${state} { --state-color: var(--state-${state}); }`), state);
  }
});

test("no script writes a colour literal: colours are read from the stylesheet", () => {
  const literal = /#[0-9a-f]{3,8}\b|rgba?\(\s*\d/i;
  for (const url of scripts()) {
    const code = readFileSync(url, "utf8").replace(/`rgba\(\$\{r\}, \$\{g\}, \$\{b\}, \$\{alpha\}\)`/, "");
    assert.doesNotMatch(code, literal, url.pathname);
  }
});

test("no live template paints a state with an inline colour", () => {
  const panel = readFileSync(new URL("../../platform/live/templates/live/swarm_panel.html", import.meta.url), "utf8");
  assert.doesNotMatch(panel, /style="[^"]*(#|rgb)/);
});

test("withAlpha makes a translucent canvas fill of a stylesheet colour", () => {
  assert.equal(withAlpha("#1f9d62", 0.08), "rgba(31, 157, 98, 0.08)");
  assert.equal(withAlpha("rgb(1, 2, 3)", 0.5), "rgb(1, 2, 3)");
  assert.equal(withAlpha("", 0.5), "");
});
