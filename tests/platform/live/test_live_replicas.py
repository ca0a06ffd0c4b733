"""The replicas panel's fold (swarm.replicas) and the live hub's tracker (live.replicas). Pure."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from live.protocol import dumps
from live.replicas import ReplicaTracker
from swarm.replicas import fold_reports, report_from_row
from swarm.summaries import MAX_REPLICA_CELLS, ReplicaReport, ReplicaSummary, decode

T0 = 1767225600.0


def report(*states: tuple[str, int, float | None], completed: int = 0, failed: int = 0) -> ReplicaReport:
    return {
        "states": [{"uid": uid, "step": step, "averaged_at": at} for uid, step, at in states],
        "rounds_completed": completed,
        "rounds_failed": failed,
    }


def test_stored_ages_become_times_as_of_the_heartbeat() -> None:
    stored = [
        {"uid": "ffn.0.0", "step": 120, "averaged_age_s": 3.5},
        {"uid": "ffn.0.1", "step": 7, "averaged_age_s": None},
    ]
    got = report_from_row(stored, rounds_completed=41, rounds_failed=2, heartbeat_at=T0)
    assert got == report(("ffn.0.0", 120, T0 - 3.5), ("ffn.0.1", 7, None), completed=41, failed=2)
    # No heartbeat yet: no time to count ages from.
    assert report_from_row(stored, rounds_completed=0, rounds_failed=0, heartbeat_at=None)["states"][0] == {
        "uid": "ffn.0.0",
        "step": 120,
        "averaged_at": None,
    }


def test_stored_rows_of_the_wrong_shape_are_skipped_not_trusted() -> None:
    stored: Any = [
        "x",
        {"uid": 5, "step": 1},
        {"uid": "", "step": 1},
        {"uid": "u" * 129, "step": 1},
        {"uid": "ffn.0.0", "step": -1},
        {"uid": "ffn.0.0", "step": True},
        {"uid": "ffn.0.0", "step": 2**70},
        {"uid": "ffn.0.1", "step": 3, "averaged_age_s": math.nan},
        {"uid": "ffn.0.2", "step": 3, "averaged_age_s": -1.0},
        {"uid": "ffn.0.3", "step": 3, "averaged_age_s": "1"},
    ]
    got = report_from_row(stored, rounds_completed=-4, rounds_failed="many", heartbeat_at=T0)
    assert got == report(("ffn.0.1", 3, None), ("ffn.0.2", 3, None), ("ffn.0.3", 3, None))
    assert report_from_row("not a list", rounds_completed=1, rounds_failed=0, heartbeat_at=T0)["states"] == []
    many = [{"uid": f"ffn.{i}", "step": 1} for i in range(500)]
    assert len(report_from_row(many, rounds_completed=0, rounds_failed=0, heartbeat_at=T0)["states"]) == 128


def test_a_cell_shows_its_newest_step_and_newest_averaging_stalest_first() -> None:
    summary = fold_reports(
        [
            report(("ffn.0.0", 100, T0 - 50), ("ffn.0.1", 5, None), completed=10, failed=1),
            report(("ffn.0.0", 90, T0 - 2), ("ffn.0.2", 9, T0 - 400), completed=7),
            report(("ffn.0.3", 1, T0 - 30)),
        ]
    )
    assert summary == {
        "cells": [
            {"uid": "ffn.0.1", "step": 5, "averaged_at": None},  # never averaged: the stalest of all
            {"uid": "ffn.0.2", "step": 9, "averaged_at": T0 - 400},
            {"uid": "ffn.0.3", "step": 1, "averaged_at": T0 - 30},
            {"uid": "ffn.0.0", "step": 100, "averaged_at": T0 - 2},
        ],
        "cells_count": 4,
        "rounds_completed": 17,
        "rounds_failed": 1,
    }


def test_a_summary_is_bounded_whatever_the_swarm_reports() -> None:
    """2,000 nodes reporting 128 distinct 128-character uids each: 256 cells listed, a bounded message."""
    reports = [
        report(*((f"{n:04d}-{i:03d}".ljust(128, "x"), 2**62, T0) for i in range(128)), completed=2**62)
        for n in range(2000)
    ]
    summary = fold_reports(reports)
    assert len(summary["cells"]) == MAX_REPLICA_CELLS and summary["cells_count"] == 2000 * 128
    assert summary["rounds_completed"] == 2**63 - 1  # capped, still within the decoder's bounds
    assert decode(json.loads(dumps(summary)), ReplicaSummary) == summary
    assert len(dumps(summary)) < 64 * 1024
    # A 16x16 grid fits whole.
    grid = [report(*((f"ffn.{r}.{c}", 1, T0) for c in range(16))) for r in range(16)]
    assert fold_reports(grid)["cells_count"] == len(fold_reports(grid)["cells"]) == 256


def test_the_tracker_counts_online_nodes_that_report_something() -> None:
    tracker = ReplicaTracker()
    assert tracker.update("a", "online", report(("ffn.0.0", 1, T0))) is True
    assert tracker.update("a", "online", report(("ffn.0.0", 1, T0))) is False  # the same report again
    assert tracker.update("b", "online", report()) is False  # a trainer that does not average
    assert tracker.update("c", "registered", report(("ffn.0.1", 4, None))) is False
    assert tracker.update("a", "online", report(("ffn.0.0", 2, T0 + 5))) is True
    assert tracker.summary()["cells"] == [{"uid": "ffn.0.0", "step": 2, "averaged_at": T0 + 5}]
    assert tracker.update("a", "offline", report(("ffn.0.0", 2, T0 + 5))) is True  # it left: dropped
    assert tracker.nodes == 0 and tracker.summary()["cells_count"] == 0
    assert tracker.remove("a") is False


@settings(max_examples=200, deadline=None)
@given(
    stored=st.lists(
        st.fixed_dictionaries(
            {
                "uid": st.one_of(st.text(max_size=140), st.integers(), st.none()),
                "step": st.one_of(st.integers(), st.floats(), st.booleans(), st.none()),
                "averaged_age_s": st.one_of(st.floats(), st.integers(), st.none(), st.text(max_size=3)),
            }
        ),
        max_size=200,
    ),
    heartbeat_at=st.one_of(st.none(), st.floats(min_value=0, max_value=4e9)),
)
def test_any_stored_row_folds_into_a_summary_the_decoder_accepts(
    stored: list[dict[str, Any]], heartbeat_at: float | None
) -> None:
    got = report_from_row(stored, rounds_completed=1, rounds_failed=0, heartbeat_at=heartbeat_at)
    summary = fold_reports([got, got])
    assert decode(json.loads(dumps(summary)), ReplicaSummary) == summary
