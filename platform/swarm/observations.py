"""Applies what the swarm observer read from a project's DHT: node states, coverage and alerts.

The decisions are made by the pure `swarm.reconcile`; this module loads the facts, writes the outcome and
keeps one open alert per condition (raised when it appears, resolved when it clears).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction

from projects.models import Project
from swarm import selectors
from swarm.events import announce_alert, announce_coverage, announce_node
from swarm.models import Alert, AlertSeverity, Node, NodeState, ProbeState, ProjectSwarm
from swarm.probe_schedule import ProbeOutcome
from swarm.reconcile import NodeFacts, Thresholds, reconcile
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
        probe=node.probe_state,
        probe_reason=node.probe_reason,
    )


def _apply_probe(node: Node, outcome: ProbeOutcome) -> bool:
    """Store the observer's latest probe of `node`; True if anything changed (and was saved)."""
    at = datetime.fromtimestamp(outcome.at, UTC)
    serving = sorted(outcome.serving)
    if node.probed_at == at and node.probe_state == outcome.state:
        return False
    node.probe_state, node.probed_at = outcome.state, at
    node.probe_reason, node.serving_experts = outcome.reason[:200], serving
    node.save(update_fields=["probe_state", "probed_at", "probe_reason", "serving_experts"])
    return True


def serving_experts(
    announced: Mapping[str, set[str]], probes: Mapping[str, ProbeOutcome] | None, nodes: Mapping[str, Node]
) -> dict[str, set[str]]:
    """node id hex -> the announced uids it was last seen serving: this round's probe outcome, or for a
    node not probed this time its stored one. Nodes never seen serving are absent."""
    serving: dict[str, set[str]] = {}
    for node_id, uids in announced.items():
        outcome = (probes or {}).get(node_id)
        node = nodes.get(node_id)
        if outcome is not None:
            state, served = outcome.state, set(outcome.serving)
        elif node is not None:
            state, served = node.probe_state, set(node.serving_experts)
        else:
            continue
        if state == ProbeState.SERVING and served & uids:
            serving[node_id] = served & uids
    return serving


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
    *,
    project_id: int,
    announced: dict[str, set[str]] | None,
    error: str,
    now: datetime,
    probes: Mapping[str, ProbeOutcome] | None = None,
) -> list[tuple[str, str, str]]:
    """Reconcile one DHT reading (None if the DHT was unreadable) and the observer's latest probes of the
    announced nodes (`probes`: node id hex -> outcome) with heartbeats; returns the state changes."""
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project_id)
        swarm, _ = ProjectSwarm.objects.get_or_create(project=project)
        nodes = {n.node_id: n for n in Node.objects.select_related("project").filter(project=project)}
        probed: set[str] = set()
        if announced is not None:  # before the state changes, so that their events carry it
            for node_id, node in nodes.items():
                uids = sorted(announced.get(node_id, set()))
                node.announced_experts = uids
                if uids:
                    node.last_seen_in_dht_at = now
                node.save(update_fields=["announced_experts", "last_seen_in_dht_at"])
        for node_id, outcome in (probes or {}).items():
            probed_node = nodes.get(node_id)
            if probed_node is not None and _apply_probe(probed_node, outcome):
                probed.add(node_id)
        result = reconcile(
            [_facts(n) for n in nodes.values()], announced, now=now.timestamp(), limits=thresholds()
        )
        for change in result.changes:
            node_set_state(node=nodes[change.node_id], state=change.state, reason=change.reason, now=now)
            probed.discard(change.node_id)  # node_set_state announced it already
        for node_id in probed:
            announce_node(nodes[node_id], project.slug)
        swarm.observation_error = error[:300]
        wanted: dict[str, WantedAlert] = {}
        if announced is not None:
            # A cell is covered only by a node the observer saw serving it (an `info` probe answered);
            # announcing it is not enough. Only covered cells are stored (a hole is a cell not listed), at
            # most as many as a project's grids may have. Every grid counts: a language model's block 1
            # without a server has holes however whole block 0 is.
            grids = selectors.project_grids(project)
            serving = serving_experts(announced, probes, nodes)
            covered = grids.coverage(serving)
            cells = dict(list(covered.items())[: settings.PROJECT_MAX_GRID_CELLS])
            total = grids.total
            swarm.coverage, swarm.announced = cells, {k: sorted(v) for k, v in announced.items()}
            swarm.announced_cells = min(len(grids.coverage(announced)), total)
            swarm.observed_at = now
            holes = total - len(cells)
            not_serving = swarm.announced_cells - len(cells)
            unverified = f" ({not_serving} more announced, but not served)" if not_serving > 0 else ""
            if not cells:
                wanted["coverage:none"] = WantedAlert(
                    "coverage", AlertSeverity.CRITICAL, f"No expert is serving{unverified}."
                )
            elif holes:
                wanted["coverage:holes"] = WantedAlert(
                    "coverage",
                    AlertSeverity.WARNING,
                    f"{holes} of {total} grid cells have no serving expert{grids.where(cells)}{unverified}.",
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
