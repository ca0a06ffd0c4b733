"""live.coalescer: merging rules and the per-viewer message-rate cap, with no network and no clock."""

from __future__ import annotations

import itertools

import pytest

from live.coalescer import Coalescer


def upsert(node_id: str, at: float, state: str = "online") -> dict:
    return {"type": "node.upsert", "at": at, "node": {"node_id": node_id, "state": state}}


def test_nothing_pending_means_no_flush() -> None:
    coalescer = Coalescer()
    assert coalescer.next_flush_at() is None
    assert coalescer.flush(10.0) is None


def test_later_changes_to_the_same_node_replace_earlier_ones() -> None:
    coalescer = Coalescer()
    coalescer.push(upsert("a", 1.0, "online"), now=100.0)
    coalescer.push(upsert("b", 1.1), now=100.01)
    coalescer.push(upsert("a", 1.2, "offline"), now=100.02)
    flush = coalescer.flush(100.05)
    assert flush is not None
    assert [(d["node"]["node_id"], d["node"]["state"]) for d in flush.diffs] == [
        ("b", "online"),
        ("a", "offline"),
    ]
    assert flush.diffs[1]["at"] == 1.2  # the newest state carries the newest time
    assert flush.since == 1.0  # but the flush reports the oldest change folded in


def test_remove_after_upsert_leaves_only_the_removal_and_removals_go_first() -> None:
    coalescer = Coalescer()
    coalescer.push(upsert("keep", 1.0), now=0.0)
    coalescer.push(upsert("gone", 1.0), now=0.0)
    coalescer.push({"type": "node.remove", "at": 2.0, "node_id": "gone"}, now=0.0)
    flush = coalescer.flush(1.0)
    assert [d["type"] for d in flush.diffs] == ["node.remove", "node.upsert"]


def test_alerts_coverage_and_edges_are_keyed_too() -> None:
    coalescer = Coalescer()
    alert = {
        "id": "7",
        "kind": "hole",
        "severity": "warning",
        "message": "m",
        "node_id": None,
        "raised_at": 1.0,
    }
    coalescer.push({"type": "alert.raised", "at": 1.0, "alert": alert}, now=0.0)
    coalescer.push({"type": "alert.cleared", "at": 2.0, "alert_id": "7"}, now=0.0)
    coalescer.push({"type": "coverage.changed", "at": 1.0, "coverage": {"cells": {"x.0": 0}}}, now=0.0)
    coalescer.push({"type": "coverage.changed", "at": 2.0, "coverage": {"cells": {"x.0": 2}}}, now=0.0)
    coalescer.push({"type": "edges.changed", "at": 1.0, "source": "t", "targets": []}, now=0.0)
    coalescer.push(
        {"type": "edges.changed", "at": 2.0, "source": "t", "targets": [{"node_id": "s"}]}, now=0.0
    )
    flush = coalescer.flush(1.0)
    assert [d["type"] for d in flush.diffs] == ["alert.cleared", "coverage.changed", "edges.changed"]
    assert flush.diffs[1]["coverage"]["cells"] == {"x.0": 2}
    assert flush.diffs[2]["targets"] == [{"node_id": "s"}]


def test_metric_points_accumulate_up_to_a_cap() -> None:
    coalescer = Coalescer(max_points=5)
    for i in range(4):
        coalescer.push(
            {
                "type": "metrics.appended",
                "at": float(i),
                "series": "training",
                "points": [{"step": 2 * i}, {"step": 2 * i + 1}],
            },
            now=0.0,
        )
    coalescer.push({"type": "metrics.appended", "at": 9.0, "series": "swarm", "points": [{"t": 9}]}, now=0.0)
    flush = coalescer.flush(1.0)
    training = next(d for d in flush.diffs if d["series"] == "training")
    assert [p["step"] for p in training["points"]] == [3, 4, 5, 6, 7]
    assert training["at"] == 0.0


def test_flushes_are_spaced_by_the_min_interval_however_fast_events_come() -> None:
    """1,000 heartbeats a second for 10 s: a viewer still gets at most 1/min_interval messages a second."""
    coalescer = Coalescer(min_interval=0.25, gather=0.03)
    flush_times: list[float] = []
    now, delivered = 0.0, set()
    for tick in range(10_000):
        now = tick / 1000
        coalescer.push(upsert(f"n{tick % 500}", now), now=now)
        due = coalescer.next_flush_at()
        if due is not None and now >= due:
            flush = coalescer.flush(now)
            flush_times.append(now)
            delivered |= {d["node"]["node_id"] for d in flush.diffs}
    assert len(flush_times) <= 10 / 0.25 + 1
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(flush_times))
    assert delivered == {f"n{i}" for i in range(500)}  # merged, never lost


def test_after_a_quiet_spell_the_first_change_goes_out_after_the_short_gather() -> None:
    coalescer = Coalescer(min_interval=0.25, gather=0.03)
    coalescer.push(upsert("a", 1.0), now=50.0)
    assert coalescer.next_flush_at() == pytest.approx(50.03)
    coalescer.flush(50.03)
    coalescer.push(upsert("a", 2.0), now=50.04)
    assert coalescer.next_flush_at() == pytest.approx(50.28)


def test_unknown_diff_types_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown diff type"):
        Coalescer().push({"type": "node.explode", "at": 0.0}, now=0.0)  # type: ignore[typeddict-item]
