"""The welcome e-mail service and tasks: sent once, retried when it never went out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts import services, tasks
from accounts.models import User

pytestmark = pytest.mark.django_db


def test_welcome_is_sent_only_once(volunteer: User) -> None:
    now = timezone.now()
    assert services.user_welcome_send(user=volunteer, now=now) is True
    assert services.user_welcome_send(user=volunteer, now=now) is False
    assert len(mail.outbox) == 1
    assert "volunteer account" in mail.outbox[0].body
    volunteer.refresh_from_db()
    assert volunteer.welcome_sent_at == now


def test_failed_send_releases_the_claim(volunteer: User, settings) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 2
    with pytest.raises(OSError):
        services.user_welcome_send(user=volunteer, now=timezone.now())
    volunteer.refresh_from_db()
    assert volunteer.welcome_sent_at is None


def test_task_for_a_deleted_user_is_harmless() -> None:
    assert tasks.send_welcome_email.delay(999_999).get() is False


def test_retry_task_requeues_only_stale_unsent_welcomes(volunteer: User, researcher: User) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    User.objects.filter(pk=volunteer.pk).update(date_joined=long_ago)
    User.objects.filter(pk=researcher.pk).update(date_joined=long_ago, welcome_sent_at=long_ago)
    assert tasks.retry_welcome_emails.delay().get() == 1
    assert [m.to for m in mail.outbox] == [[volunteer.email]]
    assert tasks.retry_welcome_emails.delay().get() == 0
