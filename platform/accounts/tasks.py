"""Celery tasks for accounts: thin wrappers that load by id and call a service."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from accounts import selectors, services

logger = logging.getLogger(__name__)


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def send_welcome_email(user_id: int) -> bool:
    user = selectors.user_get(user_id=user_id)
    if user is None:
        logger.warning("welcome e-mail: user %s no longer exists", user_id)
        return False
    return services.user_welcome_send(user=user, now=timezone.now())


@shared_task
def retry_welcome_emails() -> int:
    return services.user_welcome_retry_pending(now=timezone.now())
