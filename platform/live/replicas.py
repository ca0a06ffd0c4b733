"""The replicas panel as the live hub keeps it: each online node's latest replica report. Pure.

Node events carry the node's report (swarm.events.replica_report); the hub records it here and, when the
panel could have changed, pushes a `replicas.changed` diff whose summary is folded from every report when
the coalesced flush goes out, so a window of heartbeats costs one fold (swarm.replicas.fold_reports),
however many arrived. A node that is not online, or reports nothing, does not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarm.replicas import fold_reports
from swarm.summaries import ReplicaReport, ReplicaSummary

COUNTED_STATES = frozenset({"online"})  # as swarm.selectors.replica_summary: online nodes only


def _reports_anything(report: ReplicaReport) -> bool:
    return bool(report["states"]) or report["rounds_completed"] > 0 or report["rounds_failed"] > 0


@dataclass
class ReplicaTracker:
    _reports: dict[str, ReplicaReport] = field(default_factory=dict)

    def update(self, node_id: str, state: str, report: ReplicaReport | None) -> bool:
        """Record a node's latest report; True when the panel may show something else now."""
        if report is None or state not in COUNTED_STATES or not _reports_anything(report):
            return self.remove(node_id)
        previous = self._reports.get(node_id)
        self._reports[node_id] = report
        return previous != report

    def remove(self, node_id: str) -> bool:
        return self._reports.pop(node_id, None) is not None

    @property
    def nodes(self) -> int:
        return len(self._reports)

    def summary(self) -> ReplicaSummary:
        return fold_reports(self._reports.values())
