"""`platform/` is a source root, not a package: `import platform` must stay the standard library's module.

Checked where the portal runs: under pytest, under `python manage.py`, and inside a real Celery worker
process started the way production starts it (`celery -A config --workdir platform worker`).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.processes import stop_process

REPO_DIR = Path(__file__).resolve().parent.parent
STDLIB_DIR = Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_stdlib_platform(module_file: str) -> bool:
    return Path(module_file).resolve() == STDLIB_DIR / "platform.py"


def test_no_init_file_turns_platform_into_a_package() -> None:
    assert not (REPO_DIR / "platform" / "__init__.py").exists()


def test_under_pytest() -> None:
    assert is_stdlib_platform(platform.__file__)
    assert platform.python_version()  # the real module's API works


def test_under_manage_py() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", "import platform; print(platform.__file__)"],
        cwd=REPO_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert is_stdlib_platform(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_in_a_celery_worker_process(tmp_path: Path) -> None:
    from django.conf import settings

    from config.celery import app
    from core.tasks import runtime_info

    log_path = tmp_path / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "config", "--workdir", "platform", "worker",
        "--pool", "solo", "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
        "-Q", settings.CELERY_TASK_DEFAULT_QUEUE, "-n", f"platform-guard-{os.getpid()}@%h",
    ]  # fmt: skip
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "PYTHONPATH": ""}
    was_eager = app.conf.task_always_eager
    app.conf.task_always_eager = False
    with log_path.open("wb") as log:
        worker = subprocess.Popen(command, cwd=REPO_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        info = runtime_info.delay().get(timeout=90)
    finally:
        app.conf.task_always_eager = was_eager
        stop_process(worker, timeout=15)
    assert is_stdlib_platform(info["platform_module"]), log_path.read_text(errors="replace")
    assert info["platform_system"] == platform.system()
