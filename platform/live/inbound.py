"""Turns the portal's typed swarm events (core.events, broadcast by swarm services) into live diffs. Pure.

Services describe what changed in their own terms (`swarm.node_changed`, `swarm.coverage_changed`,
`swarm.metrics_received`, `swarm.alert_changed`) and carry each object in its one summary shape
(swarm.summaries), which is also the browser's shape: this module checks it (types and bounds, nothing
coerced) and wraps it in a diff. A node event also carries the node's replica report, checked here
(`node_replicas`) for the hub's replicas panel (live.replicas). Fields the services do not send (a
node's owner and its recent peers) are filled in by the hub (live.hub) from its cache and its periodic
edge refresh. Malformed events are rejected with InboundError so the hub can log and drop them without
stopping.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from typing import Any

from live.protocol import (
    AlertCleared,
    AlertRaised,
    CoverageChanged,
    Diff,
    MetricsAppended,
    NodeUpsert,
    NodeView,
)
from swarm.summaries import (
    AlertSummary,
    CoverageReading,
    NodeSummary,
    ReplicaReport,
    SummaryError,
    TrainingPoint,
    decode,
)

NODE_CHANGED = "swarm.node_changed"
COVERAGE_CHANGED = "swarm.coverage_changed"
METRICS_RECEIVED = "swarm.metrics_received"
ALERT_CHANGED = "swarm.alert_changed"
MAX_POINTS_PER_EVENT = 1000  # a metrics body carries at most 100


class InboundError(ValueError):
    """A portal event that does not have the shape its type promises."""


def owner_key(secret: str, user_id: int) -> str:
    """An opaque, stable token per volunteer: the page can highlight "your nodes" without user ids."""
    digest = hmac.new(secret.encode(), f"live-owner:{user_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:16]


def node_view(summary: NodeSummary, *, owner: str = "", owner_key: str = "") -> NodeView:
    """The browser's view of a node: its summary plus a label and the owner fields (filled in later)."""
    return {**summary, "label": summary["node_id"][:8], "owner": owner, "owner_key": owner_key}


RECENT_CHANGE_S = 5.0


def change_time(view: NodeSummary, received_at: float) -> float:
    """When the change behind a node event happened: its heartbeat or state change, if that is recent.

    Events carry no creation time of their own; an observer update that touches neither field (new DHT
    announcements, say) is dated by its arrival instead of by an old heartbeat.
    """
    latest = max(view["last_heartbeat"] or 0.0, view["state_changed"])
    return latest if 0.0 <= received_at - latest <= RECENT_CHANGE_S else received_at


def _checked(value: Any, shape: type[Any]) -> Any:
    try:
        return decode(value, shape)
    except SummaryError as exc:
        raise InboundError(str(exc)) from None


def to_diffs(event: dict[str, Any], *, received_at: float) -> list[Diff]:
    """The diffs one portal event stands for; `received_at` is used where the event carries no time."""
    kind = event.get("type")
    if kind == NODE_CHANGED:
        view = node_view(_checked(event.get("node"), NodeSummary))
        upsert: NodeUpsert = {"type": "node.upsert", "at": change_time(view, received_at), "node": view}
        return [upsert]
    if kind == COVERAGE_CHANGED:
        coverage: CoverageReading = _checked(event.get("coverage"), CoverageReading)
        observed = coverage["observed_at"]
        changed: CoverageChanged = {
            "type": "coverage.changed",
            "at": min(observed or received_at, received_at),
            "coverage": coverage,
        }
        return [changed]
    if kind == METRICS_RECEIVED:
        points = event.get("points")
        if not isinstance(points, list) or len(points) > MAX_POINTS_PER_EVENT:
            raise InboundError(f"metrics_received needs a list of at most {MAX_POINTS_PER_EVENT} points")
        series: list[TrainingPoint] = [_checked(point, TrainingPoint) for point in points]
        if not series:
            return []
        appended: MetricsAppended = {
            "type": "metrics.appended",
            "at": received_at,
            "series": "training",
            "points": series,
        }
        return [appended]
    if kind == ALERT_CHANGED:
        return [alert_diff(event, received_at=received_at)]
    raise InboundError(f"unknown event type {kind!r}")


def node_replicas(event: dict[str, Any]) -> ReplicaReport | None:
    """The replica report a `swarm.node_changed` event carries, checked (bounded: 128 states a node).

    None when the event has none (a portal process of an older release during a rolling deploy): its
    node update still counts, and the panel keeps what it knew of that node."""
    if "replicas" not in event:
        return None
    report: ReplicaReport = _checked(event["replicas"], ReplicaReport)
    return report


def alert_diff(event: dict[str, Any], *, received_at: float) -> AlertRaised | AlertCleared:
    """`alert.raised` for an open alert, `alert.cleared` once it has a resolution time."""
    alert: AlertSummary = _checked(event.get("alert"), AlertSummary)
    resolved = event.get("resolved_at")
    if resolved is not None:
        if isinstance(resolved, bool) or not isinstance(resolved, int | float) or not math.isfinite(resolved):
            raise InboundError(f"bad resolved_at {resolved!r}")
        return {"type": "alert.cleared", "at": min(float(resolved), received_at), "alert_id": alert["id"]}
    return {"type": "alert.raised", "at": min(alert["raised_at"], received_at), "alert": alert}
