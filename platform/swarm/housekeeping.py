"""Periodic swarm work run by Celery beat: roll heartbeats up into buckets, prune raw rows, and keep
node states moving when the observer is down (heartbeats alone then decide, with an alert)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F

from projects.lifecycle import ProjectStatus
from projects.models import Project
from swarm.models import ContributionBucket, HeartbeatSample, ProjectSwarm, SeenNonce, TrainingMetric
from swarm.observations import observation_record

logger = logging.getLogger(__name__)

BUCKET_SECONDS = 60
COUNTERS = ("requests", "samples", "failures", "bytes_in", "bytes_out")
NONCE_RETENTION = timedelta(minutes=10)  # well past the 60 s clock-skew window of signed bodies


def bucket_start(moment: datetime, seconds: int = BUCKET_SECONDS) -> datetime:
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def counter_delta(previous: int | None, current: int) -> int:
    """Growth of a since-agent-start counter; a smaller value means the agent restarted (count it all)."""
    if previous is None or current < previous:
        return current
    return current - previous


def contributions_roll_up(*, now: datetime) -> int:
    """Turn new heartbeat samples into per-minute contribution buckets; returns samples processed."""
    processed = 0
    node_ids = HeartbeatSample.objects.filter(rolled_up=False).values_list("node_id", flat=True).distinct()
    for node_id in list(node_ids):
        with transaction.atomic():
            fresh = list(
                HeartbeatSample.objects.select_for_update()
                .filter(node_id=node_id, rolled_up=False)
                .order_by("received_at")
            )
            if not fresh:
                continue
            reference = (
                HeartbeatSample.objects.filter(
                    node_id=node_id, rolled_up=True, received_at__lte=fresh[0].received_at
                )
                .order_by("-received_at")
                .first()
            )
            totals: dict[datetime, dict[str, int]] = {}
            for sample in fresh:
                bucket = totals.setdefault(bucket_start(sample.received_at), dict.fromkeys(COUNTERS, 0))
                for name in COUNTERS:
                    previous = getattr(reference, name) if reference is not None else None
                    bucket[name] += counter_delta(previous, getattr(sample, name))
                reference = sample
            for start, deltas in totals.items():
                row, created = ContributionBucket.objects.get_or_create(
                    node_id=node_id, start=start, seconds=BUCKET_SECONDS, defaults=deltas
                )
                if not created:
                    ContributionBucket.objects.filter(pk=row.pk).update(
                        **{k: F(k) + v for k, v in deltas.items()}
                    )
            HeartbeatSample.objects.filter(pk__in=[s.pk for s in fresh]).update(rolled_up=True)
            processed += len(fresh)
    return processed


def raw_prune(*, now: datetime) -> dict[str, int]:
    """Delete rolled-up heartbeat samples and old metrics past retention, and nonces past the skew window."""
    cutoff = now - timedelta(seconds=settings.SWARM["RAW_RETENTION"])
    heartbeats, _ = HeartbeatSample.objects.filter(rolled_up=True, received_at__lt=cutoff).delete()
    nonces, _ = SeenNonce.objects.filter(seen_at__lt=now - NONCE_RETENTION).delete()
    metrics, _ = TrainingMetric.objects.filter(received_at__lt=now - timedelta(days=30)).delete()
    return {"heartbeats": heartbeats, "nonces": nonces, "metrics": metrics}


def stale_observations_fill_in(*, now: datetime) -> list[str]:
    """For projects the observer has not read lately, decide node states from heartbeats alone."""
    limit = now - timedelta(seconds=3 * settings.SWARM["OBSERVE_INTERVAL"] + BUCKET_SECONDS)
    slugs = []
    for project in Project.objects.filter(
        status__in=[ProjectStatus.ACTIVE, ProjectStatus.PAUSED], nodes__isnull=False
    ).distinct():
        swarm = ProjectSwarm.objects.filter(project=project).first()
        if swarm is not None and swarm.observed_at is not None and swarm.observed_at >= limit:
            continue
        observation_record(
            project_id=project.pk,
            announced=None,
            error="the swarm observer has not reported recently",
            now=now,
        )
        slugs.append(project.slug)
    return slugs
