// What the swarm page does when its live socket closes, by close code (platform/live/consumers.py).
// A refusal is final: 4403 (you may not watch) and 4404 (no such project) are not retried. 4503 "try
// again later" means the portal is busy: retry, backing off further than after a plain drop so that a
// crowd of browsers does not return all at once. Anything else is a lost connection: retry.
import { reconnectDelayMs } from "../backoff.js";

export const CLOSE_TRY_AGAIN_LATER = 4503; // RFC 6455's 1013 is not open to applications under Daphne
export const CLOSE_FORBIDDEN = 4403;
export const CLOSE_NOT_FOUND = 4404;

const BUSY_BACKOFF = { baseMs: 2000, maxMs: 60000 };

// { state, retryInMs }: the page's state after a close, and when to reconnect (null: never).
export function afterClose(code, attempt, random = Math.random) {
  if (code === CLOSE_FORBIDDEN) return { state: "forbidden", retryInMs: null };
  if (code === CLOSE_NOT_FOUND) return { state: "gone", retryInMs: null };
  if (code === CLOSE_TRY_AGAIN_LATER) return { state: "busy", retryInMs: reconnectDelayMs(attempt, { ...BUSY_BACKOFF, random }) };
  return { state: "lost", retryInMs: reconnectDelayMs(attempt, { random }) };
}
