"""Turns the portal's typed swarm events (core.events, broadcast by swarm services) into live diffs. Pure.

Services describe what changed in their own terms (`swarm.node_changed`, `swarm.coverage_changed`,
`swarm.metrics_received`, `swarm.alert_changed`); this module maps them onto the browser protocol
(live.protocol). Fields the services do not send (a node's owner and its recent peers) are filled in by
the hub (live.hub) from its cache and its periodic edge refresh. Malformed events are rejected with
InboundError so the hub can log and drop them without stopping.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from datetime import datetime
from typing import Any

from live.protocol import (
    AlertCleared,
    AlertRaised,
    AlertView,
    CoverageChanged,
    Diff,
    MetricsAppended,
    NodeUpsert,
    NodeView,
    TrainingPoint,
)

NODE_CHANGED = "swarm.node_changed"
COVERAGE_CHANGED = "swarm.coverage_changed"
METRICS_RECEIVED = "swarm.metrics_received"
ALERT_CHANGED = "swarm.alert_changed"


class InboundError(ValueError):
    """A portal event that does not have the shape its type promises."""


def unix(text: object) -> float | None:
    """ISO-8601 time from an event as unix seconds (None stays None)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InboundError(f"expected an ISO time, got {type(text).__name__}")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InboundError(f"bad ISO time {text!r}") from None


def finite(value: object, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return float(value)


def owner_key(secret: str, user_id: int) -> str:
    """An opaque, stable token per volunteer: the page can highlight "your nodes" without user ids."""
    digest = hmac.new(secret.encode(), f"live-owner:{user_id}".encode(), hashlib.sha256).hexdigest()
    return digest[:16]


def node_view(summary: dict[str, Any], *, owner: str = "", owner_key: str = "") -> NodeView:
    """A browser node view from a core.events NodeSummary (owner fields filled in later if unknown)."""
    try:
        node_id = str(summary["node_id"])
        return {
            "node_id": node_id,
            "label": node_id[:8],
            "role": str(summary.get("role") or ""),
            "state": str(summary["state"]),
            "state_label": str(summary.get("state_label") or summary["state"]),
            "state_changed": unix(summary.get("state_changed_at")) or 0.0,
            "last_heartbeat": unix(summary.get("last_heartbeat_at")),
            "experts": [str(uid) for uid in summary.get("experts") or []],
            "announced": [str(uid) for uid in summary.get("announced_experts") or []],
            "agent_version": str(summary.get("agent_version") or ""),
            "samples": int(summary.get("samples") or 0),
            "requests": int(summary.get("requests") or 0),
            "samples_per_s": finite(summary.get("samples_per_s")),
            "owner": owner,
            "owner_key": owner_key,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise InboundError(f"bad node summary: {exc!r}") from None


RECENT_CHANGE_S = 5.0


def change_time(view: NodeView, received_at: float) -> float:
    """When the change behind a node event happened: its heartbeat or state change, if that is recent.

    Events carry no creation time of their own; an observer update that touches neither field (new DHT
    announcements, say) is dated by its arrival instead of by an old heartbeat.
    """
    latest = max(view["last_heartbeat"] or 0.0, view["state_changed"])
    return latest if 0.0 <= received_at - latest <= RECENT_CHANGE_S else received_at


def to_diffs(event: dict[str, Any], *, received_at: float) -> list[Diff]:
    """The diffs one portal event stands for; `received_at` is used where the event carries no time."""
    kind = event.get("type")
    if kind == NODE_CHANGED:
        node = event.get("node")
        if not isinstance(node, dict):
            raise InboundError("node_changed without a node")
        view = node_view(node)
        upsert: NodeUpsert = {"type": "node.upsert", "at": change_time(view, received_at), "node": view}
        return [upsert]
    if kind == COVERAGE_CHANGED:
        cells = event.get("cells")
        if not isinstance(cells, dict):
            raise InboundError("coverage_changed without cells")
        observed = unix(event.get("observed_at"))
        coverage: CoverageChanged = {
            "type": "coverage.changed",
            "at": min(observed or received_at, received_at),
            "coverage": {"cells": {str(k): int(v) for k, v in cells.items()}, "observed_at": observed},
        }
        return [coverage]
    if kind == METRICS_RECEIVED:
        points = event.get("points")
        if not isinstance(points, list):
            raise InboundError("metrics_received without points")
        node_id = str(event.get("node_id") or "")
        series: list[TrainingPoint] = []
        for point in points:
            if not isinstance(point, dict):
                raise InboundError("a metrics point is not an object")
            loss, accuracy = finite(point.get("loss"), math.nan), finite(point.get("accuracy"), math.nan)
            if math.isnan(loss) or math.isnan(accuracy):
                continue  # never forward a non-finite number to the browser
            series.append(
                {
                    "t": unix(point.get("timestamp")) or received_at,
                    "step": int(point.get("step") or 0),
                    "loss": loss,
                    "accuracy": accuracy,
                    "node_id": node_id,
                }
            )
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


def alert_diff(event: dict[str, Any], *, received_at: float) -> AlertRaised | AlertCleared:
    """`alert.raised` for an open alert, `alert.cleared` once it has a resolution time."""
    alert = event.get("alert")
    if not isinstance(alert, dict) or not isinstance(alert.get("id"), str) or not alert["id"]:
        raise InboundError("alert_changed without an alert id")
    resolved = unix(event.get("resolved_at"))
    if resolved is not None:
        return {"type": "alert.cleared", "at": min(resolved, received_at), "alert_id": alert["id"]}
    node_id = alert.get("node_id")
    raised_at = unix(alert.get("raised_at")) or received_at
    view: AlertView = {
        "id": alert["id"],
        "kind": str(alert.get("kind") or ""),
        "severity": str(alert.get("severity") or ""),
        "message": str(alert.get("message") or ""),
        "node_id": str(node_id) if node_id else None,
        "raised_at": raised_at,
    }
    return {"type": "alert.raised", "at": min(raised_at, received_at), "alert": view}
