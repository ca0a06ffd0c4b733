"""A portal trainer as the Train page starts it, for real (an agent process, DHT nodes, the local portal):
on a new project it waits, saying so, for a listed peer and then for answering experts instead of failing;
it trains until SIGTERM, stops cleanly with a last "going offline" heartbeat, and reports its metrics under
one run id."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from local_portal import LocalPortal
from test_portal_agent_restart import agent_options, gated_node
from test_portal_join_agent import REPO, read_until, start_agent, stop_agent

from tests.processes import wait_until_async

pytestmark = pytest.mark.slow


async def test_a_portal_trainer_waits_for_peers_and_experts_then_trains_until_stopped(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    local_portal.behaviour.bootstrap_peers = []  # a new project: no server has heartbeated yet
    local_portal.behaviour.codes |= {"TRAIN-CODE", "NODE-CODE"}
    trainer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_agent", "train", "--portal", local_portal.url,
        "--join-code", "TRAIN-CODE",
        "--data-dir", str(tmp_path / "trainer"), "--rtc-loopback-only", "--wait-period", "0.5",
        "--max-failed-steps", "2", "--k-best", "1", "--batch-size", "8", "--log-every", "2",
        "--eval-every", "0", "--no-progress", "--heartbeat-period", "1",
        cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    lines: list[str] = []
    agent_lines: list[str] = []
    agent = bootstrap = None
    try:
        await read_until(trainer, r"training run [0-9a-f]{16} of project demo until stopped", lines)
        await read_until(
            trainer, r"waiting for experts: project demo lists no online expert server yet", lines
        )
        bootstrap = await gated_node(local_portal, "127.0.0.1:0")
        local_portal.behaviour.bootstrap_peers = [f"{bootstrap.endpoint}/{bootstrap.node_id.hex()}"]
        await read_until(trainer, r"waiting for experts to come online: 2 steps in a row", lines)
        agent = await start_agent(local_portal.url, "NODE-CODE", *agent_options(tmp_path / "node"))
        await read_until(trainer, r"experts answer: training", lines, timeout=90)
        assert await wait_until_async(lambda: len(local_portal.metrics) >= 2, timeout=60, interval=0.2)
        trainer.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(trainer.communicate(), 60)
        output = "".join(lines) + rest.decode(errors="replace")
    finally:
        if trainer.returncode is None:
            trainer.kill()
            await trainer.wait()
        if agent is not None:
            await stop_agent(agent, agent_lines)
        if bootstrap is not None:
            await bootstrap.shutdown()
    assert trainer.returncode == 0, output
    assert "SIGTERM: stopping after this step" in output and "stopped at step" in output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["stopped"] is True and summary["steps"] >= 2 and summary["experts_answered"] > 0
    runs = {point["run"] for point in local_portal.metrics}
    assert len(runs) == 1 and len(runs.pop()) == 16, local_portal.metrics
    steps = [point["step"] for point in local_portal.metrics if point["kind"] == "train"]
    assert steps == sorted(steps) and steps[-1] == summary["steps"], "the last window is reported too"
    trainer_beats = [h for h in local_portal.heartbeats if h["role"] == "trainer"]
    assert trainer_beats[-1]["going_offline"] is True and trainer_beats[-1]["samples"] > 0
