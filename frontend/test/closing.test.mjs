// Unit tests of the swarm page's reaction to a closed live socket (run: node --test frontend/test/).
import assert from "node:assert/strict";
import test from "node:test";

import { afterClose, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_TRY_AGAIN_LATER } from "../src/swarm/closing.js";

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
