"""Reads about swarms: project configs for agents, nodes, coverage, metrics and the health overview.

Every figure handed to a page or the API carries its freshness (when it was observed or reported).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet

from accounts.models import User
from node_agent.portal.ice import IceServerSpec
from node_agent.portal.project_config import AgentSpec, ExpertSpec, LMSpec, ProjectConfig, TrainingSpec
from projects.lifecycle import ProjectStatus
from projects.models import Project
from projects.permissions import AnyUser
from swarm.api_types import CoverageSummary, NodeReach, NodeRow, NodesPage, Page, SwarmState
from swarm.events import node_summary, replica_report
from swarm.grids import Grids
from swarm.keys import portal_public_key
from swarm.models import (
    Alert,
    ContributionBucket,
    IssuedCredential,
    Node,
    NodeState,
    ProbeState,
    ProjectSwarm,
    TrainingMetric,
)
from swarm.replicas import fold_reports
from swarm.summaries import iso_from_unix
from swarm.wheel import latest_wheel

MAX_BOOTSTRAP_PEERS = 16
RECENT_METRICS = 200
#: Pages of the read-only API and the pages: (default size, largest size a caller may ask for).
NODES_PAGE = (200, 500)
CELLS_PAGE = (4096, 4096)
HOLES_PAGE = (100, 1000)


def swarm_settings(*, project: Project) -> ProjectSwarm:
    """The project's swarm row, or an unsaved default one (reads never create rows)."""
    found = ProjectSwarm.objects.filter(project=project).first()
    return found or ProjectSwarm(project=project)


def expert_grids(project: Project) -> list[ExpertSpec]:
    """Every grid the project's volunteers host: a classifier's one, or one per language-model block."""
    dims = list(project.grid_dims)
    return [
        ExpertSpec(
            expert_class=project.expert_architecture, hidden_dim=project.hidden_size, grid=dims, prefix=prefix
        )
        for prefix in project.grid_prefixes
    ]


def project_grids(project: Project) -> Grids:
    """The project's grids for coverage, holes and heatmaps: the very grids its config hands agents."""
    specs = expert_grids(project)
    return Grids(prefixes=tuple(spec.prefix for spec in specs), dims=tuple(specs[0].grid))


def lm_spec(project: Project) -> LMSpec | None:
    if not project.is_language_model:
        return None
    return LMSpec(
        blocks=project.lm_blocks,
        seq_len=project.lm_seq_len,
        window=project.lm_window,
        heads=project.lm_heads,
        corpus="own" if project.lm_corpus == "own" else "python-stdlib",
    )


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def age_s(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def bootstrap_peers(*, project: Project, now: datetime) -> list[str]:
    """Configured always-on peers first, then servers that heartbeated recently (pinned to their id)."""
    peers = [str(p) for p in swarm_settings(project=project).bootstrap_peers]
    recent = now - timedelta(seconds=settings.SWARM["ONLINE_WITHIN"])
    live = (
        Node.objects.filter(project=project, last_heartbeat_at__gte=recent, role="server")
        .exclude(state=NodeState.BANNED)
        .exclude(endpoint="")
        .order_by("-last_heartbeat_at")
    )
    for node in live[:MAX_BOOTSTRAP_PEERS]:
        peer = f"{node.endpoint}/{node.node_id}"
        if peer not in peers:
            peers.append(peer)
    return peers[:MAX_BOOTSTRAP_PEERS]


def project_config(*, project: Project, portal_url: str, now: datetime) -> ProjectConfig:
    """What `GET /api/v1/projects/<slug>/config` returns (and a join's reply carries)."""
    wheel = latest_wheel()
    swarm = swarm_settings(project=project)
    grids = expert_grids(project)
    # A language model's data is its corpus (`lm.corpus`); a classifier's its dataset.
    dataset = project.lm_corpus if project.is_language_model else project.dataset
    return ProjectConfig(
        project=project.slug,
        title=project.title,
        status=project.status,
        dht_prefix=project.slug,
        bootstrap_peers=bootstrap_peers(project=project, now=now),
        portal_public_key=portal_public_key().hex(),
        gated=swarm.gated,
        approval_required=project.join_policy == "approval",
        expert=grids[0],
        task="lm" if project.is_language_model else "classification",
        lm=lm_spec(project),
        grids=grids,
        training=TrainingSpec(
            dataset=dataset, optimizer=project.optimizer, learning_rate=project.learning_rate
        ),
        agent=AgentSpec(
            version=wheel.version if wheel else "",
            wheel_url=f"{portal_url}/agent/{wheel.filename}" if wheel else "",
            sha256=wheel.sha256 if wheel else "",
        ),
        ice_servers=ice_server_specs(),
    )


def ice_server_specs() -> list[IceServerSpec]:
    """The operator's STUN and TURN servers (settings.ICE_*), URLs only: credentials go to nodes alone."""
    specs = []
    if settings.ICE_STUN_URLS:
        specs.append(IceServerSpec(urls=list(settings.ICE_STUN_URLS)))
    if settings.ICE_TURN_URLS and settings.ICE_TURN_SECRET:
        specs.append(IceServerSpec(urls=list(settings.ICE_TURN_URLS)))
    return specs


def project_get_joinable(*, slug: str) -> Project | None:
    return Project.objects.select_related("owner").filter(slug=slug, status=ProjectStatus.ACTIVE).first()


def revoked_cids(*, project: Project) -> set[str]:
    return set(
        IssuedCredential.objects.filter(node__project=project, revoked_at__isnull=False).values_list(
            "cid", flat=True
        )
    )


def nodes_of_user(*, user: User) -> QuerySet[Node]:
    return Node.objects.select_related("project").filter(user=user).order_by("-created_at")


def nodes_of_project(*, project: Project) -> QuerySet[Node]:
    nodes = Node.objects.select_related("user", "user__swarm_ban").filter(project=project)
    return nodes.order_by("state", "-last_heartbeat_at")


def node_credential_state(*, node: Node, now: datetime) -> dict[str, Any]:
    latest = node.credentials.first()
    if latest is None:
        return {"state": "none", "label": "No credential yet", "expires_at": None}
    if latest.revoked_at:
        return {"state": "revoked", "label": "Revoked", "expires_at": latest.expires_at}
    if latest.expires_at <= now:
        return {"state": "expired", "label": "Expired", "expires_at": latest.expires_at}
    return {"state": "valid", "label": "Valid", "expires_at": latest.expires_at}


def node_as_dict(node: Node, now: datetime, *, private: bool = False) -> NodeRow:
    """A node for the API: its one summary (swarm.summaries) under the API's documented names and ISO
    times, plus what only the API shows; endpoint (IP address) and platform only when `private`."""
    summary = node_summary(node)
    row: NodeRow = {
        "node_id": summary["node_id"],
        "state": summary["state"],
        "state_changed_at": iso_from_unix(summary["state_changed"]),
        "state_reason": node.state_reason,
        "role": summary["role"],
        "agent_version": summary["agent_version"],
        "experts": summary["experts"],
        "announced_experts": summary["announced"],
        "requests": summary["requests"],
        "samples": summary["samples"],
        "failures": node.failures,
        "bytes_in": node.bytes_in,
        "bytes_out": node.bytes_out,
        "samples_per_s": summary["samples_per_s"],
        "last_heartbeat_at": iso_from_unix(summary["last_heartbeat"]),
        "heartbeat_age_s": age_s(node.last_heartbeat_at, now),
        "last_seen_in_dht_at": iso(node.last_seen_in_dht_at),
        "reach": summary["reach"],
        "probed_at": iso_from_unix(summary["probed_at"]),
        "probe_reason": summary["probe_reason"],
        "serving_experts": summary["serving"],
    }
    if private:
        row["endpoint"], row["platform"] = node.endpoint, node.platform
    return row


def coverage_of(*, project: Project) -> dict[str, int]:
    """Live replicas of each covered grid cell from the last observation (grid order); holes are absent.

    Observations before sparse coverage stored zeros too; they are dropped here. Bounded by what the
    observer stores, never by the grid's size.
    """
    observed = swarm_settings(project=project).coverage or {}
    return {
        str(uid): n for uid, n in observed.items() if isinstance(n, int) and not isinstance(n, bool) and n > 0
    }


def coverage_summary(
    *, project: Project, cells_offset: int = 0, cells_limit: int = CELLS_PAGE[0],
    holes_offset: int = 0, holes_limit: int = HOLES_PAGE[0],
) -> CoverageSummary:  # fmt: skip
    """Counts, one page of covered cells and one page of holes of every grid of the project (a language
    model's blocks one after another): what any grid costs to show."""
    grids = project_grids(project)
    cells = {uid: n for uid, n in coverage_of(project=project).items() if grids.locate(uid) is not None}
    total = grids.total
    listed = list(cells.items())[cells_offset : cells_offset + cells_limit]
    holes = grids.holes(cells, offset=holes_offset, limit=holes_limit)
    return {
        "total": total,
        "covered": len(cells),
        "announced": max(len(cells), swarm_settings(project=project).announced_cells),
        "holes": max(0, total - len(cells)),
        "cells": dict(listed),
        "cells_page": _page(cells_offset, cells_limit, len(cells)),
        "hole_uids": holes,
        "holes_page": _page(holes_offset, holes_limit, max(0, total - len(cells))),
    }


def _page(offset: int, limit: int, count: int) -> Page:
    return {"offset": offset, "limit": limit, "count": count, "more": offset + limit < count}


def recent_metrics(
    *, project: Project, limit: int = RECENT_METRICS, kinds: tuple[str, ...] = ("train",)
) -> list[TrainingMetric]:
    """The last `limit` points of `kinds` ("train", "eval": validation), oldest first. Points of one body can
    share a timestamp (stored to the microsecond): arrival order breaks the tie, so the steps of a run stay
    in order and charts do not split it."""
    metrics = TrainingMetric.objects.filter(project=project, kind__in=kinds).select_related("node")
    latest = metrics.order_by("-timestamp", "-pk")[:limit]
    return list(reversed(latest))


def node_counts(*, project: Project) -> dict[str, int]:
    """Nodes per state (one grouped query)."""
    rows = Node.objects.filter(project=project).values_list("state").annotate(n=Count("pk"))
    return {state: n for state, n in rows}


def node_reach(*, project: Project) -> NodeReach:
    """Of the nodes announced in the DHT at the last observation: how many the observer's last probe
    could connect to, and how many served (one grouped query)."""
    rows = (
        Node.objects.filter(project=project)
        .exclude(announced_experts=[])
        .values_list("probe_state")
        .annotate(n=Count("pk"))
    )
    by_state = {state: n for state, n in rows}
    serving = by_state.get(ProbeState.SERVING, 0)
    return {
        "announced": sum(by_state.values()),
        "reachable": serving + by_state.get(ProbeState.REACHABLE, 0),
        "serving": serving,
    }


def nodes_page(
    *, project: Project, viewer: AnyUser, now: datetime, offset: int = 0, limit: int = NODES_PAGE[0]
) -> NodesPage:
    """One page of a project's nodes for the API, private details only where `viewer` may see them."""
    from swarm.permissions import can_see_node_private

    counts = node_counts(project=project)
    nodes = nodes_of_project(project=project)[offset : offset + limit]
    return {
        "nodes": [node_as_dict(n, now, private=can_see_node_private(viewer, n)) for n in nodes],
        "nodes_page": _page(offset, limit, sum(counts.values())),
        "node_states": counts,
        "node_reach": node_reach(project=project),
    }


def swarm_state(
    *, project: Project, viewer: AnyUser, now: datetime, nodes_offset: int = 0,
    nodes_limit: int = NODES_PAGE[0], **coverage_pages: int,
) -> SwarmState:  # fmt: skip
    """The read-only swarm state of `GET /api/v1/projects/<slug>/swarm`: counts and pages, never the
    whole grid or every node."""
    swarm = swarm_settings(project=project)
    metrics = recent_metrics(project=project, limit=50)
    return {
        "project": project.slug,
        "generated_at": now.isoformat(),
        "observed_at": iso(swarm.observed_at),
        "observation_age_s": age_s(swarm.observed_at, now),
        "observation_error": swarm.observation_error,
        **nodes_page(project=project, viewer=viewer, now=now, offset=nodes_offset, limit=nodes_limit),
        "coverage": coverage_summary(project=project, **coverage_pages),
        "metrics": [
            {
                "run": m.run,
                "step": m.step,
                "loss": m.loss,
                "accuracy": m.accuracy,
                "bits_per_byte": m.bits_per_byte,
                "samples_per_s": m.samples_per_s,
                "timestamp": m.timestamp.isoformat(),
            }
            for m in metrics
        ],
        "metrics_age_s": age_s(metrics[-1].received_at, now) if metrics else None,
    }


def contribution_series(*, nodes: list[Node], since: datetime) -> dict[int, list[tuple[datetime, int]]]:
    """Samples processed per bucket for each node (node pk -> [(bucket start, samples)])."""
    series: dict[int, list[tuple[datetime, int]]] = {n.pk: [] for n in nodes}
    buckets = ContributionBucket.objects.filter(node__in=nodes, start__gte=since).order_by("start")
    for bucket in buckets:
        series[bucket.node_id].append((bucket.start, bucket.samples))
    return series


def open_alerts(*, project: Project | None = None) -> QuerySet[Alert]:
    alerts = Alert.objects.select_related("project", "node").filter(resolved_at__isnull=True)
    return alerts.filter(project=project) if project else alerts


def health_overview(*, now: datetime) -> list[dict[str, Any]]:
    """One summary per active or paused project for the admin swarm-health page."""
    rows = []
    projects = Project.objects.filter(status__in=[ProjectStatus.ACTIVE, ProjectStatus.PAUSED]).order_by(
        "title"
    )
    for project in projects:
        nodes = list(nodes_of_project(project=project)[: NODES_PAGE[1]])
        states = Counter(node_counts(project=project))
        coverage = coverage_summary(project=project, cells_limit=0, holes_limit=40)
        swarm = swarm_settings(project=project)
        rows.append(
            {
                "project": project,
                "swarm": swarm,
                "nodes": nodes,
                "states": states,
                "online": states.get(NodeState.ONLINE, 0),
                "node_total": sum(states.values()),
                "holes": coverage["hole_uids"],
                "hole_count": coverage["holes"],
                "covered": coverage["covered"],
                "announced_cells": coverage["announced"],
                "reach": node_reach(project=project),
                "cells": coverage["total"],
                "troubled": [n for n in nodes if n.state == NodeState.UNREACHABLE or n.failures > 0],
                "pending": [n for n in nodes if n.state == NodeState.PENDING],
                "versions": sorted(
                    Counter(
                        n.agent_version or "unknown" for n in nodes if n.state != NodeState.OFFLINE
                    ).items()
                ),
                "bootstrap_peers": bootstrap_peers(project=project, now=now),
                "alerts": list(open_alerts(project=project)[:20]),
                "observed_at": swarm.observed_at,
                "observation_age_s": age_s(swarm.observed_at, now),
            }
        )
    return rows


#: Online nodes read for the replicas panel (newest heartbeats first): bounded whatever the swarm's size.
REPLICA_NODES = 2000


def replica_summary(*, project: Project, now: datetime, limit: int = 64) -> dict[str, Any]:
    """Per cell: live replicas (DHT), the newest step a replica reports and how stale the newest state
    is (seconds since a replica last averaged with another, as of now; None when none ever did); and the
    averaging rounds the online nodes completed and failed. The `limit` stalest cells are listed. The
    live panel folds the same reports (swarm.replicas) and lets the ages tick in the browser."""
    coverage = coverage_of(project=project)
    nodes = (
        Node.objects.filter(project=project, state=NodeState.ONLINE)
        .order_by("-last_heartbeat_at")
        .only("replica_states", "averaging_rounds_completed", "averaging_rounds_failed", "last_heartbeat_at")
    )[:REPLICA_NODES]
    summary = fold_reports((replica_report(node) for node in nodes), limit=limit)
    moment = now.timestamp()
    cells = [
        {
            **cell,
            "replicas": coverage.get(cell["uid"], 0),
            "stale_s": None if (at := cell["averaged_at"]) is None else round(max(0.0, moment - at), 1),
        }
        for cell in summary["cells"]
    ]
    return {
        "cells": cells,
        "cells_count": summary["cells_count"],
        "replicated": sum(1 for n in coverage.values() if n >= 2),
        "rounds_completed": summary["rounds_completed"],
        "rounds_failed": summary["rounds_failed"],
    }
