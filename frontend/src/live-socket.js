// The one live socket of every live page (the project listing, a project's swarm page, the health page):
// connect, hand each parsed message over, and reconnect with a jittered backoff after a drop.
//
// Close codes (platform/live/consumers.py): a refusal is final, 4403 (you may not watch) and 4404 (no
// such project) are not retried. 4503 "try again later" means the portal is busy: retry, backing off
// further than after a plain drop so that a crowd of browsers does not return all at once. Anything
// else is a lost connection: retry. The backoff starts over only when the page calls `markLive()`:
// the live channel accepts every socket before it decides, so "open" alone proves nothing there.

export const CLOSE_TRY_AGAIN_LATER = 4503; // RFC 6455's 1013 is not open to applications under Daphne
export const CLOSE_FORBIDDEN = 4403;
export const CLOSE_NOT_FOUND = 4404;

const DROP_BACKOFF = { baseMs: 1000, maxMs: 30000 };
const BUSY_BACKOFF = { baseMs: 2000, maxMs: 60000 };

// Exponential with full jitter, capped, so a portal restart is not met by a thundering herd of
// browsers reconnecting in the same instant.
export function reconnectDelayMs(attempt, { baseMs = DROP_BACKOFF.baseMs, maxMs = DROP_BACKOFF.maxMs, random = Math.random } = {}) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

// { state, retryInMs }: the page's state after a close, and when to reconnect (null: never).
export function afterClose(code, attempt, random = Math.random) {
  if (code === CLOSE_FORBIDDEN) return { state: "forbidden", retryInMs: null };
  if (code === CLOSE_NOT_FOUND) return { state: "gone", retryInMs: null };
  if (code === CLOSE_TRY_AGAIN_LATER) return { state: "busy", retryInMs: reconnectDelayMs(attempt, { ...BUSY_BACKOFF, random }) };
  return { state: "lost", retryInMs: reconnectDelayMs(attempt, { ...DROP_BACKOFF, random }) };
}

// The short label of a live indicator (listing, health page): "connecting" until the first failure, so a
// page that is still opening its first socket never claims the connection was lost.
export function statusLabel(state, attempt = 0) {
  if (state === "live") return "live";
  if (state === "connecting") return attempt > 0 ? "reconnecting…" : "connecting…";
  if (state === "resyncing") return "catching up…";
  if (state === "busy") return "portal busy, retrying…";
  if (state === "forbidden") return "not allowed to watch live";
  if (state === "gone") return "project gone";
  return "connection lost, reconnecting…";
}

// A frame's JSON, or undefined for a frame that is not JSON (logged, never thrown: the socket lives on).
export function parseFrame(data) {
  try {
    return JSON.parse(data);
  } catch {
    console.warn("colearn: ignoring a malformed live message");
    return undefined;
  }
}

export function liveSocketUrl(path, location = window.location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

// Keeps a socket to `path` open until stop(). Calls onOpen(link) when a socket opens, onMessage(message,
// link) per JSON frame, onStatus(state, attempt, retryInMs) on "connecting", "live" (after markLive()),
// and after each close ("lost", "busy": retrying in retryInMs; "forbidden", "gone": final).
export function keepLive({ path, onMessage, onStatus, onOpen = () => {} }) {
  let attempt = 0;
  let socket = null;
  let stopped = false;
  let retryTimer = null;

  const link = {
    markLive() {
      attempt = 0;
      onStatus("live", 0);
    },
    send(message) {
      if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    },
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      socket?.close();
    },
  };

  const connect = () => {
    onStatus("connecting", attempt);
    socket = new WebSocket(liveSocketUrl(path));
    socket.addEventListener("open", () => onOpen(link));
    socket.addEventListener("message", (event) => {
      const message = parseFrame(event.data);
      if (message !== undefined) onMessage(message, link);
    });
    socket.addEventListener("close", (event) => {
      if (stopped) return;
      const { state, retryInMs } = afterClose(event.code, attempt);
      if (retryInMs === null) {
        onStatus(state, 0);
        return;
      }
      attempt += 1;
      onStatus(state, attempt, retryInMs);
      retryTimer = setTimeout(connect, retryInMs);
    });
  };
  connect();
  return link;
}
