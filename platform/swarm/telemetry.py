"""Agent telemetry: signed heartbeats and training metrics, checked before anything is stored.

Order of checks for each body (the view has already verified its signature and freshness): schema,
credential (portal signature, this node's key, not revoked), node known and not banned, rate limit,
nonce not seen before. Only then, in the same transaction, is anything written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from credit import services as credit_services
from node_agent.portal.schemas import Heartbeat, MetricPoint, MetricsReport
from projects.lifecycle import ProjectStatus
from swarm import services
from swarm.errors import InvalidRequest, NotAuthenticated, NotPermitted, RateLimited
from swarm.events import announce_metrics, announce_node
from swarm.models import HeartbeatSample, IssuedCredential, Node, NodeState, TrainingMetric
from swarm.ratelimit import take_token

logger = logging.getLogger(__name__)

MAX_UNIX_TIME = 4_102_444_800.0  # 2100-01-01
_WAKES_ON_HEARTBEAT = {NodeState.REGISTERED, NodeState.OFFLINE}


def _authorised_node(*, public_key: bytes, token: str, node_id: str, now: datetime) -> Node:
    credential = services.verify_credential_for(
        token=token, public_key=public_key, now=now, allow_grace=False
    )
    if node_id != credential.node_id.hex():
        raise InvalidRequest("wrong_node_id", "node_id is not the signing key's node id")
    row = IssuedCredential.objects.filter(cid=credential.cid).select_related("node").first()
    if row is None:
        raise NotAuthenticated("unknown_credential", "this portal has no record of the credential")
    if row.revoked_at is not None:
        raise NotPermitted("credential_revoked", "this credential was revoked")
    node = Node.objects.select_for_update().select_related("project").get(pk=row.node_id)
    if node.state == NodeState.BANNED:
        raise NotPermitted("banned", "this node is banned from the project")
    if node.project.slug != credential.project or node.project.status == ProjectStatus.ARCHIVED:
        raise NotPermitted("credential_wrong_project", "the credential's project is not this node's")
    return node


def _take_rate_token(node: Node, now: datetime) -> None:
    interval = float(settings.SWARM["HEARTBEAT_INTERVAL"])
    decision = take_token(
        node.rate_tokens,
        node.rate_updated_at,
        now=now.timestamp(),
        interval=interval / 2,  # metrics and heartbeats share the bucket; twice the heartbeat rate fits
        burst=settings.SWARM["HEARTBEAT_BURST"],
    )
    if not decision.allowed:
        logger.warning("rate limit: node %s sends telemetry too often", node.short_id)
        raise RateLimited(
            "rate_limited", "too many telemetry bodies; slow down", retry_after=decision.retry_after
        )
    node.rate_tokens, node.rate_updated_at = decision.tokens, now.timestamp()


def heartbeat_record(*, public_key: bytes, heartbeat: Heartbeat, now: datetime) -> Node:
    """Store a verified heartbeat: counters, experts claimed, endpoint; wake a registered/offline node, or
    mark it offline at once when the agent says it is going offline (a clean stop)."""
    with transaction.atomic():
        node = _authorised_node(
            public_key=public_key, token=heartbeat.credential, node_id=heartbeat.node_id, now=now
        )
        _take_rate_token(node, now)
        services.nonce_record(public_key=public_key, nonce=heartbeat.nonce, now=now)
        node.role, node.endpoint = heartbeat.role, heartbeat.endpoint
        node.agent_version, node.platform = heartbeat.agent_version, heartbeat.platform
        node.experts = sorted(set(heartbeat.experts))
        node.peers = [{"node_id": p.node_id, "requests": p.requests} for p in heartbeat.peers]
        node.replica_states = [
            {"uid": r.uid, "step": r.step, "averaged_age_s": r.averaged_age_s}
            for r in heartbeat.replica_states
        ]
        node.averaging_rounds_completed = heartbeat.averaging_rounds_completed
        node.averaging_rounds_failed = heartbeat.averaging_rounds_failed
        for name in ("requests", "samples", "failures", "bytes_in", "bytes_out", "samples_per_s", "uptime_s"):
            setattr(node, name, getattr(heartbeat, name))
        node.last_heartbeat_at = now
        node.save()
        if heartbeat.role == "trainer":
            credit_services.progress_record(node=node, heartbeat_samples=heartbeat.samples)
        credit_services.receipts_record(server=node, texts=heartbeat.receipts, now=now)
        HeartbeatSample.objects.create(
            node=node,
            received_at=now,
            requests=heartbeat.requests,
            samples=heartbeat.samples,
            failures=heartbeat.failures,
            bytes_in=heartbeat.bytes_in,
            bytes_out=heartbeat.bytes_out,
            samples_per_s=heartbeat.samples_per_s,
            uptime_s=heartbeat.uptime_s,
        )
        if heartbeat.going_offline:
            reason = "stopped cleanly (going-offline heartbeat)"
            if not services.node_set_state(node=node, state=NodeState.OFFLINE, reason=reason, now=now):
                announce_node(node, node.project.slug)
        elif node.state in _WAKES_ON_HEARTBEAT:
            services.node_set_state(node=node, state=NodeState.ONLINE, reason="heartbeat received", now=now)
        else:
            announce_node(node, node.project.slug)
    return node


def _advancing(node: Node, points: Sequence[MetricPoint]) -> list[MetricPoint]:
    """The points whose step goes beyond what their run already stored (per kind): steps stay monotonic
    within a run, and a batch sent twice (a retry after a lost reply) is stored once. Points of agents that
    send no run id are all kept (their restarts show as a fall of the step on the charts)."""
    runs = {point.run for point in points if point.run}
    if not runs:
        return list(points)
    last: dict[tuple[str, str], int] = {
        (run, kind): step
        for run, kind, step in TrainingMetric.objects.filter(node=node, run__in=runs)
        .values_list("run", "kind")
        .annotate(step=Max("step"))
    }
    kept = []
    for point in points:
        key = (point.run, point.kind)
        if point.run and point.step <= last.get(key, -1):
            continue
        last[key] = point.step
        kept.append(point)
    return kept


def metrics_record(*, public_key: bytes, report: MetricsReport, now: datetime) -> int:
    """Store a trainer's metrics points; returns how many were stored (points that do not advance their
    run's step are skipped)."""
    if not all(0 < point.timestamp < MAX_UNIX_TIME for point in report.metrics):
        raise InvalidRequest("invalid", "metrics timestamps must be unix times in seconds")
    with transaction.atomic():
        node = _authorised_node(
            public_key=public_key, token=report.credential, node_id=report.node_id, now=now
        )
        _take_rate_token(node, now)
        services.nonce_record(public_key=public_key, nonce=report.nonce, now=now)
        node.save(update_fields=["rate_tokens", "rate_updated_at"])
        rows = TrainingMetric.objects.bulk_create(
            [
                TrainingMetric(
                    project=node.project,
                    node=node,
                    run=point.run,
                    kind=point.kind,
                    step=point.step,
                    loss=point.loss,
                    accuracy=point.accuracy,
                    bits_per_byte=point.bits_per_byte,
                    samples_per_s=point.samples_per_s,
                    experts_answered=point.experts_answered,
                    experts_failed=point.experts_failed,
                    timestamp=datetime.fromtimestamp(point.timestamp, tz=UTC),
                    received_at=now,
                )
                for point in _advancing(node, report.metrics)
            ]
        )
        announce_metrics(node.project.slug, node, rows)  # train and eval points: charts draw both
    return len(rows)
