"""The Celery app (`celery -A config worker --workdir platform`), configured from Django settings.

Settings prefixed `CELERY_` configure it; tasks are discovered in each installed app's `tasks.py`.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
