"""Celery task: the daily stats export (scheduled in settings.CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from credit.exports import stats_export


@shared_task
def credit_stats_export() -> dict[str, int]:
    return stats_export(directory=settings.CREDIT_STATS_DIR, now=timezone.now())
