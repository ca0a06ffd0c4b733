// The live channel's socket: connect, hand each message to the swarm model, ask for a snapshot after a
// gap, and reconnect with backoff after a drop, telling the page honestly while it is disconnected.
import { reconnectDelayMs } from "../backoff.js";
import { applyMessage } from "./state.js";

export function liveSocketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

// Close codes the server uses when it refuses a viewer: retrying would not help.
const FINAL_CLOSE_CODES = new Set([4403, 4404]);

export function connectSwarm({ path, swarm, onChange, onStatus }) {
  let attempt = 0;
  let socket = null;
  let stopped = false;
  let retryTimer = null;

  const connect = () => {
    onStatus("connecting", attempt);
    socket = new WebSocket(liveSocketUrl(path));
    socket.addEventListener("open", () => {
      attempt = 0;
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("colearn: ignoring a malformed live message");
        return;
      }
      const action = applyMessage(swarm, message);
      if (message.type === "swarm.snapshot") onStatus("live", 0);
      if (action === "resync") {
        onStatus("resyncing", 0);
        socket.send(JSON.stringify({ type: "resync", reason: "gap" }));
      } else if (action === "render") {
        onChange(message.type);
      }
    });
    socket.addEventListener("close", (event) => {
      swarm.synced = false;
      if (stopped) return;
      if (FINAL_CLOSE_CODES.has(event.code)) {
        onStatus(event.code === 4404 ? "gone" : "forbidden", 0);
        return;
      }
      const delay = reconnectDelayMs(attempt++);
      onStatus("lost", attempt, delay);
      retryTimer = setTimeout(connect, delay);
    });
  };
  connect();
  return {
    stop() {
      stopped = true;
      clearTimeout(retryTimer);
      socket?.close();
    },
    resync() {
      if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "resync" }));
    },
  };
}
