"""Shared portal fixtures: users of each role, a project, logged-in clients and a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import Client

from accounts.models import Role, User
from projects import services as project_services
from projects.models import Project
from tests.processes import stop_process

REPO_DIR = Path(__file__).resolve().parents[2]
PLATFORM_DIR = REPO_DIR / "platform"
PASSWORD = "a-Strong-passphrase-42"


def make_user(email: str, role: str = Role.VOLUNTEER, **extra: object) -> User:
    return User.objects.create_user(
        email, PASSWORD, display_name=email.split("@")[0].title(), role=role, **extra
    )


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    """Rate-limit windows live in the (per-process, local-memory) cache: each test starts with none."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def volunteer(db: None) -> User:
    return make_user("vera@example.org", Role.VOLUNTEER)


@pytest.fixture
def researcher(db: None) -> User:
    return make_user("rosa@example.org", Role.RESEARCHER)


@pytest.fixture
def other_researcher(db: None) -> User:
    return make_user("otto@example.org", Role.RESEARCHER)


@pytest.fixture
def staff(db: None) -> User:
    return make_user("admin@example.org", Role.VOLUNTEER, is_staff=True, is_superuser=True)


PROJECT_FIELDS = {
    "title": "Digits swarm",
    "description": "Mixture of experts on 8x8 digits.",
    "expert_architecture": "ffn",
    "hidden_size": 64,
    "grid_shape": "4x4",
    "optimizer": "adam",
    "learning_rate": 0.001,
    "dataset": "digits",
    "join_policy": "open",
}


@pytest.fixture
def make_project(researcher: User) -> Callable[..., Project]:
    def make(owner: User | None = None, launch: bool = True, **fields: object) -> Project:
        return project_services.project_create(
            owner=owner or researcher, launch=launch, **{**PROJECT_FIELDS, **fields}
        )

    return make


@pytest.fixture
def project(make_project: Callable[..., Project]) -> Project:
    return make_project()


@pytest.fixture
def project_fields() -> dict[str, object]:
    """Valid settings for a project, as keyword arguments or form data."""
    return dict(PROJECT_FIELDS)


@pytest.fixture
def logged_in() -> Callable[[User], Client]:
    """Build a test client already logged in as the given user."""

    def build(user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return build


@pytest.fixture
def celery_worker_env() -> Callable[[], dict[str, str]]:
    """The environment a worker needs to see this test run's database, broker folders and queue."""

    def build() -> dict[str, str]:
        from django.db import connection

        from config.env import database_url

        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = "config.settings"
        env["DATABASE_URL"] = database_url(connection.settings_dict)
        env["PYTHONPATH"] = os.pathsep.join([str(PLATFORM_DIR), str(REPO_DIR)])
        return env

    return build


@pytest.fixture
def celery_worker(celery_worker_env: Callable[[], dict[str, str]], tmp_path: Path) -> Iterator[Path]:
    """A real `celery worker` subprocess on this run's broker and queue; yields its log file.

    Eager mode is switched off so `.delay()` really goes through the broker.
    """
    from django.conf import settings

    from config.celery import app

    was_eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    log_path = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "config", "--workdir", str(PLATFORM_DIR), "worker",
        "--pool", "solo", "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        "--without-heartbeat", "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-n", f"test-{os.getpid()}@%h",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=celery_worker_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        stop_process(process, timeout=15)
        app.conf.task_always_eager = was_eager
