"""The swarm's total samples/s over time, from the node views the hub sees. Pure: `now` is passed in.

Each server reports its own rate in its heartbeats; the swarm's rate is the sum over nodes that are
online and heard from recently (a node that stopped reporting must not keep inflating the total).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from live.protocol import NodeView, SwarmPoint

ONLINE_STATES = frozenset({"online"})


@dataclass
class ThroughputTracker:
    fresh_within: float = 30.0
    max_points: int = 360
    _nodes: dict[str, tuple[str, float, float | None]] = field(default_factory=dict)
    points: deque[SwarmPoint] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.points = deque(self.points, maxlen=self.max_points)

    def update(self, node: NodeView) -> None:
        self._nodes[node["node_id"]] = (node["state"], node["samples_per_s"], node["last_heartbeat"])

    def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def point(self, now: float) -> SwarmPoint:
        """Sample the current total and remember it (the snapshot's history)."""
        rate, online = 0.0, 0
        for state, samples_per_s, last_heartbeat in self._nodes.values():
            if (
                state in ONLINE_STATES
                and last_heartbeat is not None
                and now - last_heartbeat <= self.fresh_within
            ):
                rate += samples_per_s
                online += 1
        point: SwarmPoint = {"t": now, "samples_per_s": round(rate, 3), "online": online}
        self.points.append(point)
        return point
