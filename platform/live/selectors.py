"""Reads for the live swarm channel: what a snapshot holds and what a flush fills in.

Built on swarm.selectors; each function is one or two queries whatever the swarm size, because a
snapshot is read for every viewer that connects or resyncs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings

from live.inbound import node_view, owner_key
from live.protocol import (
    AlertView,
    CoverageView,
    EdgeSet,
    NodeView,
    PeerEdge,
    ProjectInfo,
    SwarmPoint,
)
from live.replicas import ReplicaTracker
from projects.models import Project
from swarm import selectors as swarm_selectors
from swarm.events import alert_summary, coverage_reading, node_summary, replica_report, training_point
from swarm.models import Alert, HeartbeatSample, Node, NodeState
from swarm.summaries import ReplicaSummary, TrainingPoint

HISTORY_BUCKET_S = 10
MAX_EDGES_PER_NODE = 64


@dataclass(frozen=True, slots=True)
class NodeExtras:
    """What a node event does not carry: who owns the node and whom it talked to recently."""

    owner: str
    owner_key: str
    peers: tuple[PeerEdge, ...]


def project_info(project: Project) -> ProjectInfo:
    return {
        "slug": project.slug,
        "title": project.title,
        "status": project.status,
        "grid": list(project.grid_dims),
        "expert_prefix": swarm_selectors.expert_prefix(project),
    }


def clean_peers(raw: Any) -> tuple[PeerEdge, ...]:
    """Peers as stored from heartbeats, defensively: well-formed entries only, busiest first, capped."""
    if not isinstance(raw, list):
        return ()
    edges: list[PeerEdge] = [
        {"node_id": str(p["node_id"]), "requests": int(p.get("requests") or 0)}
        for p in raw
        if isinstance(p, dict) and isinstance(p.get("node_id"), str)
    ]
    edges.sort(key=lambda e: (-e["requests"], e["node_id"]))
    return tuple(edges[:MAX_EDGES_PER_NODE])


def node_row_view(node: Node) -> tuple[NodeView, NodeExtras]:
    extras = NodeExtras(
        owner=node.user.display_name,
        owner_key=owner_key(settings.SECRET_KEY, node.user_id),
        peers=clean_peers(node.peers),
    )
    return node_view(node_summary(node), owner=extras.owner, owner_key=extras.owner_key), extras


def node_extras(*, project_id: int, node_ids: list[str]) -> dict[str, NodeExtras]:
    """Owner and peers of the given nodes of one project, in one query."""
    rows = (
        Node.objects.filter(project_id=project_id, node_id__in=node_ids)
        .select_related("user")
        .only("node_id", "peers", "user_id", "user__display_name")
    )
    return {
        row.node_id: NodeExtras(
            owner=row.user.display_name,
            owner_key=owner_key(settings.SECRET_KEY, row.user_id),
            peers=clean_peers(row.peers),
        )
        for row in rows
    }


def open_alert_views(*, project_id: int) -> list[AlertView]:
    alerts = Alert.objects.select_related("node").filter(project_id=project_id, resolved_at__isnull=True)
    return [alert_summary(a) for a in alerts[:200]]


def coverage_view(project: Project) -> CoverageView:
    swarm = swarm_selectors.swarm_settings(project=project)
    return coverage_reading(swarm_selectors.coverage_of(project=project), swarm.observed_at)


def training_series(project: Project) -> list[TrainingPoint]:
    metrics = swarm_selectors.recent_metrics(project=project, kinds=("train", "eval"))
    return [point for m in metrics if (point := training_point(m, m.node.node_id)) is not None]


def snapshot_parts(*, project: Project) -> dict[str, Any]:
    """The viewer-independent part of a `swarm.snapshot` (everything but type, seq, viewer, series.swarm)."""
    nodes: list[NodeView] = []
    edges: list[EdgeSet] = []
    replicas = ReplicaTracker()  # counts what the hub counts, so a snapshot and the diffs after it agree
    for node in swarm_selectors.nodes_of_project(project=project):
        view, extras = node_row_view(node)
        nodes.append(view)
        if extras.peers:
            edges.append({"source": view["node_id"], "targets": list(extras.peers)})
        replicas.update(view["node_id"], view["state"], replica_report(node))
    summary: ReplicaSummary = replicas.summary()
    return {
        "project": project_info(project),
        "nodes": nodes,
        "edges": edges,
        "coverage": coverage_view(project),
        "replicas": summary,
        "training": training_series(project),
        "alerts": open_alert_views(project_id=project.pk),
    }


def swarm_history(*, project_id: int, since: datetime, bucket_s: int = HISTORY_BUCKET_S) -> list[SwarmPoint]:
    """Swarm samples/s per time bucket from stored heartbeats: each node's latest rate in the bucket."""
    rows = (
        HeartbeatSample.objects.filter(node__project_id=project_id, received_at__gte=since)
        .exclude(node__state=NodeState.BANNED)
        .order_by("received_at")
        .values_list("node_id", "received_at", "samples_per_s")
    )
    buckets: dict[int, dict[int, float]] = defaultdict(dict)
    for node_pk, received_at, rate in rows:
        buckets[int(received_at.timestamp()) // bucket_s][node_pk] = float(rate)
    return [
        {"t": float((b + 1) * bucket_s), "samples_per_s": round(sum(r.values()), 3), "online": len(r)}
        for b, r in sorted(buckets.items())
    ]


def history_since(now: datetime, minutes: int = 15) -> datetime:
    return now - timedelta(minutes=minutes)


def project_for_slug(slug: str) -> Project | None:
    return Project.objects.select_related("owner").filter(slug=slug).first()
