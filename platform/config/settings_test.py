"""Test settings: the normal settings, made fast and isolated per pytest run.

Each run gets its own Celery folders, queue name, channel-layer prefix and test database name, so several
engineers (or CI jobs) running the suite on one machine, against one Redis and one PostgreSQL, never steal
each other's tasks or events. Worker processes started by tests inherit these through the environment.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_RUNS_DIR = Path(__file__).resolve().parent.parent.parent / "var" / "test-runs"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_runs() -> None:
    if not _RUNS_DIR.is_dir():
        return
    for run in _RUNS_DIR.iterdir():
        if run.name.isdigit() and not _pid_alive(int(run.name)):
            shutil.rmtree(run, ignore_errors=True)


if "COLEARN_TEST_RUN" not in os.environ:
    _remove_stale_runs()
    os.environ["COLEARN_TEST_RUN"] = str(os.getpid())
_RUN = os.environ["COLEARN_TEST_RUN"]
RUN_DIR = _RUNS_DIR / _RUN
RUN_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("CELERY_DATA_DIR", str(RUN_DIR / "celery"))
os.environ.setdefault("CELERY_QUEUE", f"colearn-test-{_RUN}")
os.environ.setdefault("CHANNELS_PREFIX", f"colearn-test-{_RUN}")

from config.settings import *  # noqa: E402,F403
from config.settings import DATABASES  # noqa: E402

DEBUG = False
ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
STATIC_ROOT = RUN_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Tasks run inline unless a test turns this off to exercise a real worker process.
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True

_db = DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so a Celery worker subprocess can open the same test database.
    _db["TEST"] = {"NAME": str(RUN_DIR / "test.sqlite3")}
else:
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{_RUN}"}
