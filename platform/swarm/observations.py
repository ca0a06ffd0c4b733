"""Applies what the swarm observer read from a project's DHT: node states, coverage and alerts.

The decisions are made by the pure `swarm.reconcile`; this module loads the facts, writes the outcome and
keeps one open alert per condition (raised when it appears, resolved when it clears).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction

from projects.models import Project
from swarm import selectors
from swarm.events import announce_alert, announce_coverage
from swarm.models import Alert, AlertSeverity, Node, NodeState, ProjectSwarm
from swarm.reconcile import NodeFacts, Thresholds, grid_cells, grid_coverage, reconcile
from swarm.services import node_set_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WantedAlert:
    kind: str
    severity: str
    message: str
    node: Node | None = None


def thresholds() -> Thresholds:
    return Thresholds(
        online_within=float(settings.SWARM["ONLINE_WITHIN"]),
        offline_after=float(settings.SWARM["OFFLINE_AFTER"]),
    )


def _facts(node: Node) -> NodeFacts:
    return NodeFacts(
        node_id=node.node_id,
        state=node.state,
        role=node.role,
        claimed_experts=tuple(node.experts),
        last_heartbeat=node.last_heartbeat_at.timestamp() if node.last_heartbeat_at else None,
    )


def alerts_sync(*, project: Project, wanted: dict[str, WantedAlert], now: datetime) -> None:
    """Open alerts for new conditions, resolve those that cleared; `wanted` maps a stable key to an alert."""
    open_alerts = {a.key: a for a in Alert.objects.filter(project=project, resolved_at__isnull=True)}
    for key, alert in open_alerts.items():
        if key not in wanted:
            alert.resolved_at = now
            alert.save(update_fields=["resolved_at"])
            announce_alert(alert, project.slug)
    for key, want in wanted.items():
        if key not in open_alerts:
            raised = Alert.objects.create(
                project=project,
                node=want.node,
                key=key,
                kind=want.kind,
                severity=want.severity,
                message=want.message[:300],
                raised_at=now,
            )
            announce_alert(raised, project.slug)
            logger.warning("alert in %s: %s", project.slug, want.message)


def observation_record(
    *, project_id: int, announced: dict[str, set[str]] | None, error: str, now: datetime
) -> list[tuple[str, str, str]]:
    """Reconcile one DHT reading (None if the DHT was unreadable) with heartbeats; returns the changes."""
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project_id)
        swarm, _ = ProjectSwarm.objects.get_or_create(project=project)
        nodes = {n.node_id: n for n in Node.objects.select_related("project").filter(project=project)}
        result = reconcile(
            [_facts(n) for n in nodes.values()], announced, now=now.timestamp(), limits=thresholds()
        )
        for change in result.changes:
            node_set_state(node=nodes[change.node_id], state=change.state, reason=change.reason, now=now)
        swarm.observation_error = error[:300]
        wanted: dict[str, WantedAlert] = {}
        if announced is not None:
            for node_id, node in nodes.items():
                uids = sorted(announced.get(node_id, set()))
                node.announced_experts = uids
                if uids:
                    node.last_seen_in_dht_at = now
                node.save(update_fields=["announced_experts", "last_seen_in_dht_at"])
            # Only covered cells are stored (a hole is a cell not listed), at most as many as a grid may have.
            covered = grid_coverage(selectors.expert_prefix(project), project.grid_dims, announced)
            cells = dict(list(covered.items())[: settings.PROJECT_MAX_GRID_CELLS])
            total = grid_cells(project.grid_dims)
            swarm.coverage, swarm.announced = cells, {k: sorted(v) for k, v in announced.items()}
            swarm.observed_at = now
            holes = total - len(cells)
            if not cells:
                wanted["coverage:none"] = WantedAlert(
                    "coverage", AlertSeverity.CRITICAL, "No expert is live in the DHT."
                )
            elif holes:
                wanted["coverage:holes"] = WantedAlert(
                    "coverage",
                    AlertSeverity.WARNING,
                    f"{holes} of {total} grid cells have no live expert.",
                )
            for node_id in result.announced_without_heartbeat:
                text = f"Node {node_id[:12]} announces experts but sends no heartbeats."
                wanted[f"silent:{node_id}"] = WantedAlert(
                    "silent", AlertSeverity.WARNING, text, nodes[node_id]
                )
            for node_id in result.heartbeat_without_announcement:
                text = f"Node {node_id[:12]} says it serves experts, but none is announced in the DHT."
                wanted[f"unannounced:{node_id}"] = WantedAlert(
                    "unannounced", AlertSeverity.WARNING, text, nodes[node_id]
                )
            if result.unknown_announcers:
                text = f"{len(result.unknown_announcers)} node(s) announce experts without a portal join."
                wanted["unknown-announcers"] = WantedAlert("unknown", AlertSeverity.INFO, text)
            announce_coverage(project.slug, now, cells)
        else:
            wanted["observer"] = WantedAlert(
                "observer", AlertSeverity.WARNING, f"The DHT could not be read: {error}"
            )
        for node in nodes.values():
            if node.state == NodeState.UNREACHABLE:
                wanted[f"unreachable:{node.node_id}"] = WantedAlert(
                    "unreachable",
                    AlertSeverity.WARNING,
                    f"Node {node.short_id} is unreachable: {node.state_reason}",
                    node,
                )
        swarm.save()
        alerts_sync(project=project, wanted=wanted, now=now)
    return [(c.node_id, c.previous, c.state) for c in result.changes]
