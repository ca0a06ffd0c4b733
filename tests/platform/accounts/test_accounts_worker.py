"""The welcome e-mail goes through a real Celery worker process and the broker in use."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from accounts.models import User
from tests.processes import wait_until


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_signup_welcome_email_is_sent_by_a_real_worker(client, celery_worker: Path) -> None:
    response = client.post(
        reverse("accounts:signup"),
        {
            "email": "worker.test@example.org",
            "display_name": "Worker Test",
            "role": "volunteer",
            "password": "correct-horse-battery-9",
            "password_confirm": "correct-horse-battery-9",
        },
    )
    assert response.status_code == 302
    user = User.objects.get(email="worker.test@example.org")

    def task_succeeded() -> str:
        # The row is claimed just before the e-mail goes out, so wait for the task's success line too.
        log = celery_worker.read_text(errors="replace")
        return log if "send_welcome_email" in log and "succeeded" in log else ""

    try:
        log = wait_until(task_succeeded, timeout=90, interval=0.25, what="the welcome e-mail task")
    except TimeoutError:
        log = celery_worker.read_text(errors="replace")
    user.refresh_from_db()
    assert user.welcome_sent_at is not None, log
    assert "Subject: Welcome to Colearn" in log  # the worker's console e-mail backend printed it
    assert "accounts.tasks.send_welcome_email" in log
