// Unit tests of the live leaderboard's pure parts (run: npm test).
import assert from "node:assert/strict";
import test from "node:test";

import { leaderboardUrl, rowModel } from "../src/live-leaderboard.js";

test("overall and per-project URLs, slugs escaped", () => {
  assert.equal(leaderboardUrl(""), "/api/v1/credit/leaderboard");
  assert.equal(leaderboardUrl("a b&c"), "/api/v1/credit/leaderboard?project=a%20b%26c");
});

test("a row shows text only, ids as numbers, credit rounded like the page", () => {
  const row = rowModel({ rank: 1, id: "7/../x", name: "<b>Ada</b>", total_credit: 7, recent_average_credit: 0.5 });
  assert.deepEqual(row, { rank: "1", href: "/credit/users/NaN/", name: "<b>Ada</b>", total: "7.0", rac: "0.50" });
});
