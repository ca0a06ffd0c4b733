// Reconnection delays: exponential with full jitter, capped, so a portal restart is not met by a
// thundering herd of browsers reconnecting in the same instant.
export function reconnectDelayMs(attempt, { baseMs = 1000, maxMs = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
