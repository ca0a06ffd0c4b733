// The live channel of one project's swarm (platform/live/protocol.py) on the shared live socket
// (live-socket.js): each message goes to the swarm model; a gap in seq asks for a snapshot; the page is
// live, and the backoff starts over, once a snapshot has arrived.
import { keepLive } from "../live-socket.js";
import { applyMessage } from "./state.js";

export function connectSwarm({ path, swarm, onChange, onStatus }) {
  return keepLive({
    path,
    onStatus: (state, attempt, retryInMs) => {
      if (state !== "live") swarm.synced = false;
      onStatus(state, attempt, retryInMs);
    },
    onMessage: (message, link) => {
      const action = applyMessage(swarm, message);
      if (message?.type === "swarm.snapshot" && action === "render") link.markLive();
      if (action === "resync") {
        onStatus("resyncing", 0);
        link.send({ type: "resync", reason: "gap" });
      } else if (action === "render") {
        onChange(message.type);
      }
    },
  });
}
