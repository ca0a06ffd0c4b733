"""Celery tasks for swarms: thin wrappers that call swarm.housekeeping (scheduled in settings)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.utils import timezone

from swarm import housekeeping


@shared_task
def swarm_housekeeping() -> dict[str, Any]:
    """Roll up contributions, prune raw rows, and cover for a silent observer; one beat entry runs it."""
    now = timezone.now()
    return {
        "rolled_up": housekeeping.contributions_roll_up(now=now),
        "pruned": housekeeping.raw_prune(now=now),
        "heartbeat_only": housekeeping.stale_observations_fill_in(now=now),
    }
