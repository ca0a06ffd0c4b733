"""Typed live events pushed to browsers over Channels, and the one helper that sends them.

Every event is a TypedDict with a Literal `type`; Channels dispatches `type` "a.b" to the consumer method
`a_b`, so each consumer has one small handler per event type. Add new events to `PortalEvent`.
Swarm events carry the objects in their one summary shape (swarm.summaries, times as unix seconds),
which the live hub checks and forwards without converting.
"""

from __future__ import annotations

import logging
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from swarm.summaries import AlertSummary, CoverageReading, NodeSummary, ReplicaReport, TrainingPoint

logger = logging.getLogger(__name__)

PROJECT_LISTING_GROUP = "projects.listing"


class ProjectSummary(TypedDict):
    slug: str
    title: str
    description: str
    status: str
    status_label: str
    url: str
    owner: str
    dataset: str
    architecture: str
    grid_shape: str
    updated_at: str


class ProjectChangedEvent(TypedDict):
    """A project appeared in, or changed status within, the public listing."""

    type: Literal["project.changed"]
    project: ProjectSummary


class NodeChangedEvent(TypedDict):
    """A node of a project's swarm changed state or reported a heartbeat (group `swarm.<slug>`)."""

    type: Literal["swarm.node_changed"]
    project: str
    node: NodeSummary
    replicas: ReplicaReport  # its experts' replica states and averaging rounds (the replicas panel)


class CoverageChangedEvent(TypedDict):
    """The observer read the project's DHT: live replicas per covered grid cell, when it read them."""

    type: Literal["swarm.coverage_changed"]
    project: str
    coverage: CoverageReading


class MetricsReceivedEvent(TypedDict):
    """A trainer reported training metrics for the project."""

    type: Literal["swarm.metrics_received"]
    project: str
    points: list[TrainingPoint]


class AlertChangedEvent(TypedDict):
    """An alert of a project's swarm was raised or resolved (group `swarm.<slug>`)."""

    type: Literal["swarm.alert_changed"]
    project: str
    alert: AlertSummary
    resolved_at: float | None  # unix seconds once resolved, None while open


class OwnNode(NodeSummary):
    """A node as its own volunteer sees it on "My nodes": the summary plus why it is in its state."""

    state_reason: str
    project: str  # slug


class OwnNodeChangedEvent(TypedDict):
    """One of the user's own nodes changed (group `nodes.user.<user pk>`, the "My nodes" page)."""

    type: Literal["mynodes.node_changed"]
    node: OwnNode


def project_swarm_group(slug: str) -> str:
    return f"swarm.{slug}"


def user_nodes_group(user_pk: int) -> str:
    """The group of one user's "My nodes" sockets."""
    return f"nodes.user.{user_pk}"


PortalEvent = (
    ProjectChangedEvent
    | NodeChangedEvent
    | CoverageChangedEvent
    | MetricsReceivedEvent
    | AlertChangedEvent
    | OwnNodeChangedEvent
)


def broadcast(group: str, event: PortalEvent) -> None:
    """Send `event` to every consumer in `group`; a channel-layer outage is logged, never raised.

    Live updates are a convenience: a write that already committed must not fail because Redis is away.
    """
    layer = get_channel_layer()
    if layer is None:
        logger.warning("no channel layer configured; dropping %s event", event["type"])
        return
    try:
        async_to_sync(layer.group_send)(group, event)
    except Exception:
        logger.exception("could not broadcast %s event to group %s", event["type"], group)


def broadcast_on_commit(group: str, event: PortalEvent) -> None:
    """Broadcast once the surrounding transaction commits, so clients never see a rolled-back change."""
    transaction.on_commit(lambda: broadcast(group, event))
