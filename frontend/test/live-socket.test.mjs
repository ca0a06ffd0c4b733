// Unit tests of the shared live socket's pure parts: close codes, backoff, frames, URLs (run: npm test).
import assert from "node:assert/strict";
import test from "node:test";

import {
  afterClose,
  CLOSE_FORBIDDEN,
  CLOSE_NOT_FOUND,
  CLOSE_TRY_AGAIN_LATER,
  liveSocketUrl,
  parseFrame,
  reconnectDelayMs,
  statusLabel,
} from "../src/live-socket.js";

const low = () => 0;
const high = () => 0.999999;

test("a refusal is final: never retried", () => {
  assert.deepEqual(afterClose(CLOSE_FORBIDDEN, 0), { state: "forbidden", retryInMs: null });
  assert.deepEqual(afterClose(CLOSE_NOT_FOUND, 3), { state: "gone", retryInMs: null });
});

test("a busy portal is retried with a jittered backoff that grows, capped at a minute", () => {
  const first = afterClose(CLOSE_TRY_AGAIN_LATER, 0, low);
  assert.equal(first.state, "busy");
  assert.equal(first.retryInMs, 1000);
  assert.equal(afterClose(CLOSE_TRY_AGAIN_LATER, 0, high).retryInMs, 2000);
  assert.equal(afterClose(CLOSE_TRY_AGAIN_LATER, 3, low).retryInMs, 8000);
  assert.equal(afterClose(CLOSE_TRY_AGAIN_LATER, 20, high).retryInMs, 60000);
  const spread = new Set(Array.from({ length: 50 }, () => afterClose(CLOSE_TRY_AGAIN_LATER, 4).retryInMs));
  assert.ok(spread.size > 10, "browsers told to come back later do not all come back at once");
});

test("a dropped connection is retried sooner than a busy portal, and also capped", () => {
  for (const code of [1006, 1011, 1000, 1001]) {
    const after = afterClose(code, 0, high);
    assert.equal(after.state, "lost");
    assert.ok(after.retryInMs <= afterClose(CLOSE_TRY_AGAIN_LATER, 0, high).retryInMs);
  }
  assert.equal(afterClose(1006, 30, high).retryInMs, 30000);
});

test("the backoff doubles from a second with full jitter in the upper half, capped at 30 s", () => {
  assert.equal(reconnectDelayMs(0, { random: low }), 500);
  assert.equal(reconnectDelayMs(0, { random: high }), 1000);
  assert.equal(reconnectDelayMs(2, { random: high }), 4000);
  assert.equal(reconnectDelayMs(-5, { random: high }), 1000);
  assert.equal(reconnectDelayMs(1e6, { random: high }), 30000);
  assert.equal(reconnectDelayMs(1e6, { random: low }), 15000);
});

test("a frame that is not JSON is dropped with a warning, never thrown", (t) => {
  const warn = t.mock.method(console, "warn", () => {});
  assert.deepEqual(parseFrame('{"type":"swarm.batch","seq":3}'), { type: "swarm.batch", seq: 3 });
  assert.equal(parseFrame(null), null);
  for (const hostile of ["{", "", "\u0000", "NaN", '{"a":1}}', "x".repeat(10000)]) {
    assert.equal(parseFrame(hostile), undefined);
  }
  assert.equal(warn.mock.callCount(), 6);
});

test("the socket follows the page's scheme and host", () => {
  assert.equal(liveSocketUrl("/ws/projects/", { protocol: "https:", host: "colearn.example:8443" }), "wss://colearn.example:8443/ws/projects/");
  assert.equal(liveSocketUrl("/ws/live/projects/p/", { protocol: "http:", host: "127.0.0.1:8000" }), "ws://127.0.0.1:8000/ws/live/projects/p/");
});

test("the indicator says connecting until the first failure, then reconnecting", () => {
  assert.equal(statusLabel("connecting", 0), "connecting…");
  assert.equal(statusLabel("live", 0), "live");
  assert.equal(statusLabel("lost", 1), "connection lost, reconnecting…");
  assert.equal(statusLabel("connecting", 1), "reconnecting…");
  assert.equal(statusLabel("busy", 1), "portal busy, retrying…");
  assert.equal(statusLabel("resyncing", 0), "catching up…");
});
