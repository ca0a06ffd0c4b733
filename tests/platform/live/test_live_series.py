"""live.series: the swarm's samples/s counts only online nodes heard from recently."""

from __future__ import annotations

from live.series import ThroughputTracker


def view(node_id: str, state: str, rate: float, heartbeat: float | None) -> dict:
    return {"node_id": node_id, "state": state, "samples_per_s": rate, "last_heartbeat": heartbeat}


def test_sum_of_fresh_online_nodes() -> None:
    tracker = ThroughputTracker(fresh_within=30.0, max_points=2)
    tracker.update(view("a", "online", 100.0, 995.0))
    tracker.update(view("b", "online", 50.0, 960.0))  # silent for 40 s: not counted
    tracker.update(view("c", "offline", 70.0, 999.0))
    tracker.update(view("d", "online", 25.0, None))
    assert tracker.point(1000.0) == {"t": 1000.0, "samples_per_s": 100.0, "online": 1}
    tracker.update(view("b", "online", 50.0, 1001.0))
    tracker.remove("a")
    tracker.point(1002.0)
    tracker.point(1003.0)
    assert [p["samples_per_s"] for p in tracker.points] == [50.0, 50.0]
