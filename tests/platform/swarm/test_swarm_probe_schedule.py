"""When the observer probes nodes (pure schedule), and what a probe does to a node's state (pure rules)."""

from __future__ import annotations

import random

from swarm.probe_schedule import ProbeSchedule
from swarm.reconcile import NodeFacts, Thresholds, reconcile


def test_new_nodes_first_then_the_most_overdue_capped_per_round() -> None:
    schedule = ProbeSchedule(interval=30, max_backoff=600, per_round=2, jitter=0.0)
    rng = random.Random(0)
    assert schedule.due(["a", "b", "c"], now=0) == ["a", "b"]
    schedule.record("a", True, 0, rng)
    schedule.record("b", True, 0, rng)
    assert schedule.due(["a", "b", "c"], now=1) == ["c"]
    assert schedule.due(["a", "b", "c"], now=30) == ["c", "a"]


def test_failing_nodes_back_off_to_the_cap_and_recover_at_once() -> None:
    schedule = ProbeSchedule(interval=30, max_backoff=600, per_round=10, jitter=0.0)
    rng = random.Random(0)
    waits = [schedule.record("x", False, 0, rng) for _ in range(7)]
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    assert schedule.record("x", True, 0, rng) == 30 and schedule.failures("x") == 0


def test_jitter_spreads_nodes_and_withdrawn_nodes_are_forgotten() -> None:
    schedule = ProbeSchedule(interval=30, per_round=1000, jitter=0.2)
    rng = random.Random(1)
    dues = {schedule.record(str(i), True, 0, rng) for i in range(100)}
    assert len(dues) > 90 and min(dues) >= 24 and max(dues) <= 36
    schedule.due([], now=0)
    assert schedule.due(["0"], now=0) == ["0"]  # forgotten: probed again as new


def facts(probe: str, reason: str = "") -> NodeFacts:
    return NodeFacts("n1", "online", "server", ("ffn.0.0",), 100.0, probe, reason)


def test_a_heartbeating_announced_node_is_online_only_while_its_probe_serves() -> None:
    limits, announced = Thresholds(), {"n1": {"ffn.0.0"}}
    assert reconcile([facts("serving")], announced, now=110, limits=limits).changes == []
    assert reconcile([facts("")], announced, now=110, limits=limits).changes == []  # not probed yet
    [change] = reconcile(
        [facts("unreachable", "no connection: timed out")], announced, now=110, limits=limits
    ).changes
    assert (
        change.state == "unreachable"
        and change.reason == "announced, but not serving: no connection: timed out"
    )
    [change] = reconcile([facts("reachable", "connected, but x")], announced, now=110, limits=limits).changes
    assert change.state == "unreachable" and "connected, but x" in change.reason
    assert reconcile([facts("unreachable")], None, now=110, limits=limits).changes == []  # DHT unread
