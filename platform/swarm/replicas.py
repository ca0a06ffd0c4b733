"""The swarm's replicas and averaging, folded from what online nodes report. Pure: no I/O, no clock.

A server reports, in each heartbeat, every hosted expert's optimiser step and how many seconds ago it last
averaged with another replica, and how many averaging rounds it completed and failed since it started.
Stored with the heartbeat's time, that becomes a `ReplicaReport` with absolute times (`report_from_row`);
the dashboard's fallback panel (swarm.selectors.replica_summary), the live snapshot and the live hub's
tracker (live.replicas) all fold reports with `fold_reports`, so the three agree on what a cell shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from swarm.summaries import MAX_NODE_REPLICAS, MAX_REPLICA_CELLS, ExpertState, ReplicaReport, ReplicaSummary

MAX_COUNT = 2**63 - 1  # a summary's counters stay within what the summaries' decoder accepts
_MAX_UID = 128


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return 0
    return min(value, MAX_COUNT)


def _averaged_at(heartbeat_at: float, age: float) -> float | None:
    """When a state was averaged, from its age at a heartbeat; None for an age that is no age."""
    return round(heartbeat_at - age, 1) if 0.0 <= age <= heartbeat_at else None  # refuses NaN too


def report_from_row(
    states: Any, *, rounds_completed: Any, rounds_failed: Any, heartbeat_at: float | None
) -> ReplicaReport:
    """A node's report from its stored heartbeat fields (`Node.replica_states`: [{uid, step,
    averaged_age_s}], ages as of `heartbeat_at`). Entries of the wrong shape are skipped, never trusted:
    the JSON column may hold what an older portal stored."""
    listed: list[ExpertState] = []
    for state in states if isinstance(states, list) else []:
        if not isinstance(state, dict):
            continue
        uid, step, age = state.get("uid"), state.get("step"), state.get("averaged_age_s")
        if not isinstance(uid, str) or not 0 < len(uid) <= _MAX_UID:
            continue
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_COUNT:
            continue
        averaged_at = None
        if heartbeat_at is not None and isinstance(age, int | float) and not isinstance(age, bool):
            averaged_at = _averaged_at(heartbeat_at, float(age))
        listed.append({"uid": uid, "step": step, "averaged_at": averaged_at})
        if len(listed) == MAX_NODE_REPLICAS:
            break
    return {
        "states": listed,
        "rounds_completed": _count(rounds_completed),
        "rounds_failed": _count(rounds_failed),
    }


def _stalest_first(cell: ExpertState) -> tuple[bool, float, str]:
    """Cells never averaged first, then the longest since their newest state was averaged."""
    averaged = cell["averaged_at"]
    return (averaged is not None, averaged or 0.0, cell["uid"])


def fold_reports(reports: Iterable[ReplicaReport], *, limit: int = MAX_REPLICA_CELLS) -> ReplicaSummary:
    """Per cell the newest step and the newest averaging any replica reports; the `limit` stalest cells are
    listed (a bounded message whatever the grid), with the number of cells reported and the rounds summed."""
    cells: dict[str, ExpertState] = {}
    completed = failed = 0
    for report in reports:
        completed = min(completed + report["rounds_completed"], MAX_COUNT)
        failed = min(failed + report["rounds_failed"], MAX_COUNT)
        for state in report["states"]:
            cell = cells.get(state["uid"])
            if cell is None:
                cells[state["uid"]] = dict(state)  # type: ignore[assignment]  # a copy, same keys
                continue
            cell["step"] = max(cell["step"], state["step"])
            averaged, newest = state["averaged_at"], cell["averaged_at"]
            if averaged is not None:
                cell["averaged_at"] = averaged if newest is None else max(newest, averaged)
    listed = sorted(cells.values(), key=_stalest_first)[: max(0, min(limit, MAX_REPLICA_CELLS))]
    return {
        "cells": listed,
        "cells_count": len(cells),
        "rounds_completed": completed,
        "rounds_failed": failed,
    }


def empty_summary() -> ReplicaSummary:
    return {"cells": [], "cells_count": 0, "rounds_completed": 0, "rounds_failed": 0}
