"""Training continues when the portal is down or goes away; the reporter backs off and says so in the log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_portal import LocalPortal

from node_agent.backoff import Backoff
from node_agent.identity import Identity
from node_agent.portal.state import AGENT_STATE_FILE, AgentState, save_agent_state
from node_agent.portal.trainer_reporting import start_trainer_reporting
from node_agent.training.metrics import MetricsStream
from node_agent.training.session import SessionConfig, run_training
from node_agent.training.trainer import TrainConfig
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[3]


def saved_state(portal: LocalPortal, directory: Path) -> tuple[AgentState, Identity]:
    """What an earlier `node-agent join` leaves in the data directory."""
    identity = Identity.load_or_create(directory / "identity.key")
    state = AgentState(
        portal_url=portal.url,
        project="demo",
        credential=portal.credential_for(identity.public_key_bytes),
        config=portal.config(),
    )
    save_agent_state(directory / AGENT_STATE_FILE, state)
    return state, identity


def test_training_finishes_when_the_portal_goes_away_mid_run(
    local_portal: LocalPortal, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node_agent.portal.reporter")
    state, identity = saved_state(local_portal, tmp_path)
    reporting = start_trainer_reporting(
        state,
        identity,
        batch_size=32,
        heartbeat_period=0.2,
        metrics_period=0.05,
        backoff=Backoff(base=0.05, maximum=0.5),
        say=lambda message: None,
    )
    metrics = MetricsStream(reporting.sink)
    reported_before_outage: list[int] = []

    def on_step(step: int) -> None:
        if step == 60:  # the portal vanishes in the middle of training
            reported_before_outage.append(len(local_portal.metrics))
            local_portal.stop()

    config = SessionConfig(
        mode="local",
        hidden_dim=16,
        grid=(2, 2),
        train=TrainConfig(steps=120, batch_size=32, log_every=2, eval_every=0),
    )
    try:
        result = run_training(config, metrics, on_step=on_step)
    finally:
        reporting.stop(flush_timeout=0.5)
    assert result.steps == 120 and result.failed_steps == 0
    assert (
        reported_before_outage and reported_before_outage[0] > 0
    )  # it was reporting while the portal was up
    assert local_portal.heartbeats and local_portal.heartbeats[0]["role"] == "trainer"
    assert reporting.telemetry.reporter is not None and reporting.telemetry.reporter.failures > 0
    assert any(
        "portal unreachable" in r.getMessage() and "retrying in" in r.getMessage() for r in caplog.records
    )
    assert len(reporting.telemetry.outbox) > 0  # metrics after the outage stay queued for a later run


@pytest.mark.slow
def test_train_cli_with_no_portal_listening_trains_and_logs_backoff(tmp_path: Path) -> None:
    dead_portal = LocalPortal(free_port())  # never started: nothing listens on its port
    saved_state(dead_portal, tmp_path)
    command = [
        sys.executable,
        "-m",
        "node_agent",
        "-v",
        "train",
        "--local",
        "--steps",
        "150",
        "--log-every",
        "5",
    ]
    command += ["--eval-every", "0", "--no-progress", "--credential-file", str(tmp_path / AGENT_STATE_FILE)]
    command += ["--heartbeat-period", "1"]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert '"steps": 150' in done.stdout
    assert "portal unreachable; starting with the saved project config" in output
    assert "heartbeat failing: portal unreachable" in output
    assert "retrying in" in output


def test_trainer_heartbeats_carry_its_averaging_rounds(local_portal: LocalPortal, tmp_path: Path) -> None:
    """A collaborative trainer's averaging rounds (gradients and state together) reach the portal the way a
    server's replica rounds do."""

    class Rounds:
        def averaging_rounds(self) -> tuple[int, int]:
            return 7, 2

    state, identity = saved_state(local_portal, tmp_path)
    reporting = start_trainer_reporting(
        state, identity, batch_size=32, heartbeat_period=0.1, say=lambda message: None
    )
    try:
        reporting.report_averaging(Rounds())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            h.get("averaging_rounds_completed") == 7 for h in local_portal.heartbeats
        ):
            time.sleep(0.05)
    finally:
        reporting.stop(flush_timeout=0.5)
    beat = next(h for h in local_portal.heartbeats if h.get("averaging_rounds_completed") == 7)
    assert beat["role"] == "trainer" and beat["averaging_rounds_failed"] == 2
