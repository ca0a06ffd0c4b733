"""A language-model project for real: a live portal over HTTP, a volunteer's `node-agent join` serving cells
of every block's grid, and the owner's `node-agent train --portal URL --join-code CODE` (no `--task`: the
project's config says what trains), which reports training and validation bits per byte that the portal
stores, and stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.models import Role, User
from projects import services as project_services
from swarm import services as swarm_services
from swarm.models import CodePurpose, Node, NodeState, ProjectSwarm, TrainingMetric
from tests.e2e.test_join_flow import (
    FAST,
    PASSWORD,
    REPO_DIR,
    Processes,
    agent_env,
    portal_env,
    processes,  # noqa: F401 - the fixture
    start_bootstrap,
    start_portal,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(240),
]

TRAINER_TEST_OPTIONS = [
    "--rtc-loopback-only", "--wait-period", "1", "--heartbeat-period", "2", "--log-every", "2",
    "--eval-every", "4", "--no-progress", "--batch-size", "4", "--k-best", "2", "--corpus-bytes", "200000",
]  # fmt: skip


def test_the_owner_trains_a_language_model_project(processes: Processes, tmp_path: Path) -> None:  # noqa: F811
    owner = User.objects.create_user("lm@example.org", PASSWORD, display_name="Res", role=Role.RESEARCHER)
    project = project_services.project_create(
        owner=owner, title="Byte LM", expert_architecture="ffn", hidden_size=16, grid_shape="2x2",
        optimizer="adam", learning_rate=1e-3, dataset="digits", join_policy="open", launch=True,
        task="lm", lm_blocks=2, lm_seq_len=16, lm_window=8, lm_heads=2,
    )  # fmt: skip
    env = portal_env() | FAST | {"PYTHONUNBUFFERED": "1"}
    ProjectSwarm.objects.create(project=project, bootstrap_peers=[start_bootstrap(processes, env)])
    url = start_portal(processes, env)

    now = timezone.now()
    code = swarm_services.join_code_create(project=project, user=owner, now=now)[1]
    server = [sys.executable, "-m", "node_agent", "join", url, code, "--data-dir", str(tmp_path / "server")]
    server += ["--listen", "127.0.0.1:0", "--rtc-loopback-only", "--heartbeat-period", "2"]
    processes.start("server", server, agent_env(), REPO_DIR)  # the default: cells of both blocks

    def served() -> list[str]:
        node = Node.objects.filter(project=project, role="server").first()
        return list(node.experts) if node is not None else []

    experts = wait_for("the volunteer's heartbeat", served, 90, processes.logs)
    assert sorted(uid[:5] for uid in experts) == ["lm.b0", "lm.b0", "lm.b1", "lm.b1"], experts

    train = CodePurpose.TRAIN
    train_code = swarm_services.join_code_create(project=project, user=owner, now=now, purpose=train)[1]
    command = [sys.executable, "-m", "node_agent", "train", "--portal", url, "--join-code", train_code]
    command += ["--data-dir", str(tmp_path / "trainer"), *TRAINER_TEST_OPTIONS]
    trainer = processes.start("trainer", command, agent_env(), REPO_DIR)
    trainer_log = processes.logs[-1]

    def evaluated() -> bool:
        return TrainingMetric.objects.filter(project=project, kind="eval").exists()

    wait_for("a validation point", evaluated, 150, processes.logs)
    processes.stop(trainer, signal.SIGTERM)
    assert trainer.returncode == 0, trainer_log.read_text()[-3000:]
    assert "model: 2 blocks x 2x2 experts" in trainer_log.read_text()
    rows = list(TrainingMetric.objects.filter(project=project).values("kind", "loss", "bits_per_byte"))
    assert {row["kind"] for row in rows} == {"train", "eval"}
    assert all(0 < row["bits_per_byte"] < 9 for row in rows), rows
    assert all(abs(row["bits_per_byte"] * 0.6931471805599453 - row["loss"]) < 1e-6 for row in rows), rows
    trainer_node = Node.objects.get(project=project, role="trainer")
    assert trainer_node.state == NodeState.OFFLINE and trainer_node.state_reason.startswith("stopped cleanly")
