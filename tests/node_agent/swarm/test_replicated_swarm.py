"""Real processes: a takeover starts from the last averaged state; export then evaluate matches training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.swarm.launcher import LocalSwarm, SwarmConfig
from node_agent.training.session import SessionConfig, run_training
from node_agent.training.trainer import TrainConfig

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[3]


def session(swarm: LocalSwarm, steps: int, checkpoints: Path, resume: bool = False) -> SessionConfig:
    return SessionConfig(
        hidden_dim=32,
        grid=(2, 2),
        k_best=2,
        initial_peers=[swarm.initial_peer],
        rtc_loopback_only=True,
        forward_timeout=4.0,
        backward_timeout=4.0,
        timeout_after_k_min=0.5,
        resume_from=str(checkpoints) if resume else None,
        train=TrainConfig(steps=steps, eval_every=0, log_every=20, checkpoint_dir=checkpoints),
    )


def node_agent(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "node_agent", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_takeover_starts_from_the_replicas_state_and_export_matches_the_trainer(tmp_path):
    lines: list[str] = []
    config = SwarmConfig(
        servers=2,
        grid=(2, 2),
        hidden_dim=32,
        replicas=2,  # both servers host every cell
        announce_ttl=20,
        announce_period=5,
        extra_serve_args=("--replica-period", "1"),
    )
    with LocalSwarm(config, output=lines.append) as swarm:
        first = run_training(session(swarm, 60, tmp_path / "trainer"))
        assert first.final_accuracy > 0.8

        # Export and evaluate: the same model, run locally, scores what the trainer measured.
        out = tmp_path / "model.safetensors"
        exported = node_agent(
            "export", "--initial-peers", swarm.initial_peer, "--grid", "2x2", "--hidden-dim", "32",
            "--k-best", "2", "--trainer-checkpoint", str(tmp_path / "trainer"), "--out", str(out),
            "--rtc-loopback-only",
        )  # fmt: skip
        assert exported["experts"] == 4 and exported["missing"] == [] and exported["trainer_step"] == 60
        evaluated = node_agent("evaluate", str(out))
        assert abs(evaluated["accuracy"] - first.final_accuracy) <= 0.03, (evaluated, first.final_accuracy)

        # Server 0 leaves; a newcomer takes over its cells from server 1, then server 1 leaves too: the
        # newcomer alone holds what the swarm learned.
        swarm.kill_server(0)
        swarm.start_server(0)
        assert any("starts from replica" in line for line in lines if line.startswith("[server-0]")), lines[
            -20:
        ]
        swarm.kill_server(1)
        second = run_training(session(swarm, 70, tmp_path / "trainer", resume=True))
    assert second.steps == 70
    assert second.final_accuracy >= first.final_accuracy - 0.05, (first.final_accuracy, second.final_accuracy)
