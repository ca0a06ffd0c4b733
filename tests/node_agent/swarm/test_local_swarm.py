"""End to end on real processes: a local swarm trains digits, survives a killed server, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node_agent.swarm.launcher import LocalSwarm, SwarmConfig
from node_agent.training.metrics import MetricsStream
from node_agent.training.session import SessionConfig, run_training
from node_agent.training.trainer import TrainConfig

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


def test_training_continues_when_an_expert_server_is_killed():
    lines: list[str] = []
    config = SwarmConfig(servers=3, grid=(3, 3), hidden_dim=32, announce_ttl=20, announce_period=5)
    with LocalSwarm(config, output=lines.append) as swarm:
        assert swarm.initial_peer.startswith("127.0.0.1:")
        assert any(line.startswith("[server-2] ") for line in lines)
        killed_at = []

        def on_step(step: int) -> None:
            if step == 40:
                swarm.kill_server(0)
                killed_at.append(step)

        events = []
        session = SessionConfig(
            hidden_dim=32,
            grid=(3, 3),
            k_best=3,
            initial_peers=[swarm.initial_peer],
            rtc_loopback_only=True,
            forward_timeout=4.0,
            backward_timeout=4.0,
            timeout_after_k_min=0.5,
            train=TrainConfig(steps=80, eval_every=0, log_every=20),
        )
        result = run_training(session, MetricsStream(events.append), on_step=on_step)
        assert killed_at == [40]
        assert not swarm.servers[0].running and swarm.servers[1].running
    assert result.steps == 80  # every step eventually trained; failed ones were retried on new batches
    assert result.final_accuracy > 0.85
    assert result.experts_failed > 0  # the dead server's experts were masked out
    after_kill = [e for e in events if e.kind == "train" and e.step > 40]
    assert after_kill and all(e.experts_answered > 0 for e in after_kill)
    assert not any(server.running for server in swarm.servers)
    assert not swarm.bootstrap.running


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def test_swarm_command_trains_then_stops_on_sigterm(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    train_args = f"--steps 20 --eval-every 0 --log-every 10 --k-best 2 --metrics-file {metrics}"
    command = [
        sys.executable,
        "-m",
        "node_agent",
        "swarm",
        "--servers",
        "2",
        "--grid",
        "2x2",
        "--hidden-dim",
        "32",
    ]
    command += ["--train", "--train-args", train_args, "--keep-running"]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ}
    )
    output: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 150
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            if "trainer finished" in line or time.monotonic() > deadline:
                break
        text = "\n".join(output)
        assert "bootstrap: 127.0.0.1:" in text
        assert "trainer finished with exit code 0" in text, text[-3000:]
        children = _children(process.pid)
        assert len(children) == 3  # bootstrap + two servers still up (--keep-running)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        assert "stopping the swarm" in rest
        for child in children:
            assert (
                not Path(f"/proc/{child}").exists()
                or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    summary = json.loads(next(line.split("] ", 1)[1] for line in output if '] {"steps": 20' in line))
    assert summary["steps"] == 20 and summary["experts_answered"] > 0
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [10, 20]
    expected = {
        "kind",
        "step",
        "loss",
        "accuracy",
        "samples_per_s",
        "experts_answered",
        "experts_failed",
        "timestamp",
    }
    assert set(records[0]) == expected
