// The live channel's socket: connect, hand each message to the swarm model, ask for a snapshot after a
// gap, and reconnect with backoff after a drop or a "busy" refusal (closing.js), telling the page
// honestly while it is disconnected. The server accepts every socket before it decides, so "open" says
// nothing yet: the backoff starts over only once a snapshot has arrived.
import { afterClose } from "./closing.js";
import { applyMessage } from "./state.js";

export function liveSocketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

export function connectSwarm({ path, swarm, onChange, onStatus }) {
  let attempt = 0;
  let socket = null;
  let stopped = false;
  let retryTimer = null;

  const connect = () => {
    onStatus("connecting", attempt);
    socket = new WebSocket(liveSocketUrl(path));
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        console.warn("colearn: ignoring a malformed live message");
        return;
      }
      const action = applyMessage(swarm, message);
      if (message.type === "swarm.snapshot") {
        attempt = 0;
        onStatus("live", 0);
      }
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
