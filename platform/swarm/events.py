"""Summarises swarm rows in their one live shape (swarm.summaries) and broadcasts the events that carry
them (types in core.events). The live snapshot and the API build on the same summaries."""

from __future__ import annotations

import math
from datetime import datetime

from core.events import (
    AlertChangedEvent,
    CoverageChangedEvent,
    MetricsReceivedEvent,
    NodeChangedEvent,
    OwnNode,
    OwnNodeChangedEvent,
    broadcast_on_commit,
    project_swarm_group,
    user_nodes_group,
)
from swarm.models import Alert, Node, NodeState, TrainingMetric
from swarm.replicas import report_from_row
from swarm.summaries import (
    AlertSummary,
    CoverageReading,
    NodeSummary,
    ReplicaReport,
    TrainingPoint,
    finite_or,
)


def unix(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def node_summary(node: Node) -> NodeSummary:
    return {
        "node_id": node.node_id,
        "role": node.role,
        "state": node.state,
        "state_label": NodeState(node.state).label,
        "state_changed": node.state_changed_at.timestamp(),
        "last_heartbeat": unix(node.last_heartbeat_at),
        "experts": [str(uid) for uid in node.experts],
        "announced": [str(uid) for uid in node.announced_experts],
        "reach": node.probe_state,
        "probed_at": unix(node.probed_at),
        "probe_reason": node.probe_reason,
        "serving": [str(uid) for uid in node.serving_experts],
        "agent_version": node.agent_version,
        "samples": node.samples,
        "requests": node.requests,
        "samples_per_s": finite_or(node.samples_per_s, 0.0),
    }


def replica_report(node: Node) -> ReplicaReport:
    """The node's last heartbeat's replica states (ages turned into times) and averaging rounds."""
    return report_from_row(
        node.replica_states,
        rounds_completed=node.averaging_rounds_completed,
        rounds_failed=node.averaging_rounds_failed,
        heartbeat_at=unix(node.last_heartbeat_at),
    )


def own_node(node: Node, slug: str) -> OwnNode:
    """`node` as its volunteer's "My nodes" page shows it."""
    return {**node_summary(node), "state_reason": node.state_reason, "project": slug}


def alert_summary(alert: Alert) -> AlertSummary:
    return {
        "id": str(alert.pk),
        "kind": alert.kind,
        "severity": alert.severity,
        "message": alert.message,
        "node_id": alert.node.node_id if alert.node_id and alert.node else None,
        "raised_at": alert.raised_at.timestamp(),
    }


def coverage_reading(cells: dict[str, int], observed_at: datetime | None) -> CoverageReading:
    return {"cells": dict(cells), "observed_at": unix(observed_at)}


def training_point(metric: TrainingMetric, node_id: str) -> TrainingPoint | None:
    """A metric as a chart point; None for a non-finite loss or accuracy (JSON cannot carry them)."""
    if not (math.isfinite(metric.loss) and math.isfinite(metric.accuracy)):
        return None
    bpb = metric.bits_per_byte
    return {
        "t": metric.timestamp.timestamp(),
        "step": metric.step,
        "loss": metric.loss,
        "accuracy": metric.accuracy,
        "kind": "eval" if metric.kind == "eval" else "train",
        "bits_per_byte": bpb if bpb is not None and 0 <= bpb <= 64 else None,
        "node_id": node_id,
        "run": metric.run,
    }


def announce_node(node: Node, slug: str) -> None:
    event: NodeChangedEvent = {
        "type": "swarm.node_changed",
        "project": slug,
        "node": node_summary(node),
        "replicas": replica_report(node),
    }
    broadcast_on_commit(project_swarm_group(slug), event)
    own: OwnNodeChangedEvent = {"type": "mynodes.node_changed", "node": own_node(node, slug)}
    broadcast_on_commit(user_nodes_group(node.user_id), own)


def announce_coverage(slug: str, observed_at: datetime, cells: dict[str, int]) -> None:
    event: CoverageChangedEvent = {
        "type": "swarm.coverage_changed",
        "project": slug,
        "coverage": coverage_reading(cells, observed_at),
    }
    broadcast_on_commit(project_swarm_group(slug), event)


def announce_metrics(slug: str, node: Node, points: list[TrainingMetric]) -> None:
    event: MetricsReceivedEvent = {
        "type": "swarm.metrics_received",
        "project": slug,
        "points": [point for p in points if (point := training_point(p, node.node_id)) is not None],
    }
    if event["points"]:
        broadcast_on_commit(project_swarm_group(slug), event)


def announce_alert(alert: Alert, slug: str) -> None:
    """Tell the project's live viewers that `alert` opened or closed, once the transaction commits."""
    event: AlertChangedEvent = {
        "type": "swarm.alert_changed",
        "project": slug,
        "alert": alert_summary(alert),
        "resolved_at": unix(alert.resolved_at),
    }
    broadcast_on_commit(project_swarm_group(slug), event)
