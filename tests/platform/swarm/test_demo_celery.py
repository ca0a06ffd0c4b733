"""The demo's Celery command line (scripts/demo-celery: worker with beat embedded) really runs housekeeping.

It once died at start (a relative `--schedule` path opened after `--workdir platform`), so no contribution
buckets ever appeared in the demo. This runs the same script with a 1 s housekeeping interval.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from swarm.models import ContributionBucket, HeartbeatSample, Node
from tests.processes import stop_process, wait_until

REPO_DIR = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_demo_worker_and_beat_run_housekeeping(
    joined: dict[str, Any], celery_worker_env: Callable[[], dict[str, str]], tmp_path: Path
) -> None:
    node = Node.objects.get()
    HeartbeatSample.objects.create(
        node=node, received_at=timezone.now(), requests=3, samples=96, failures=0, bytes_in=0, bytes_out=0,
        samples_per_s=1.0, uptime_s=1.0,
    )  # fmt: skip
    env = celery_worker_env() | {
        "PYTHON": sys.executable,
        "SWARM_ROLLUP_S": "1",
        "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "beat-schedule"),
    }
    log_path = tmp_path / "celery.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(REPO_DIR / "scripts" / "demo-celery")], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: ContributionBucket.objects.filter(node=node).exists() or process.poll() is not None,
            timeout=60,
            interval=0.25,
            what="a contribution bucket from the demo's beat",
        )
    finally:
        stop_process(process, timeout=15)
    output = log_path.read_text(errors="replace")
    assert ContributionBucket.objects.get(node=node).samples == 96, output
    assert "swarm.tasks.swarm_housekeeping" in output and "succeeded" in output, output
    assert (tmp_path / "beat-schedule").exists() or list(tmp_path.glob("beat-schedule*")), output
