"""Builds the live events that swarm services broadcast (types in core.events)."""

from __future__ import annotations

from datetime import datetime

from core.events import (
    CoverageChangedEvent,
    MetricPointSummary,
    MetricsReceivedEvent,
    NodeChangedEvent,
    NodeSummary,
    broadcast_on_commit,
    project_swarm_group,
)
from swarm.models import Node, NodeState, TrainingMetric


def node_summary(node: Node) -> NodeSummary:
    return {
        "node_id": node.node_id,
        "state": node.state,
        "state_label": NodeState(node.state).label,
        "state_changed_at": node.state_changed_at.isoformat(),
        "role": node.role,
        "experts": list(node.experts),
        "announced_experts": list(node.announced_experts),
        "agent_version": node.agent_version,
        "samples": node.samples,
        "requests": node.requests,
        "samples_per_s": node.samples_per_s,
        "last_heartbeat_at": node.last_heartbeat_at.isoformat() if node.last_heartbeat_at else None,
    }


def announce_node(node: Node, slug: str) -> None:
    event: NodeChangedEvent = {"type": "swarm.node_changed", "project": slug, "node": node_summary(node)}
    broadcast_on_commit(project_swarm_group(slug), event)


def announce_coverage(slug: str, observed_at: datetime, cells: dict[str, int]) -> None:
    event: CoverageChangedEvent = {
        "type": "swarm.coverage_changed",
        "project": slug,
        "observed_at": observed_at.isoformat(),
        "cells": cells,
    }
    broadcast_on_commit(project_swarm_group(slug), event)


def announce_metrics(slug: str, node: Node, points: list[TrainingMetric]) -> None:
    summaries: list[MetricPointSummary] = [
        {
            "step": p.step,
            "loss": p.loss,
            "accuracy": p.accuracy,
            "samples_per_s": p.samples_per_s,
            "timestamp": p.timestamp.isoformat(),
        }
        for p in points
    ]
    event: MetricsReceivedEvent = {
        "type": "swarm.metrics_received",
        "project": slug,
        "node_id": node.node_id,
        "points": summaries,
    }
    broadcast_on_commit(project_swarm_group(slug), event)
