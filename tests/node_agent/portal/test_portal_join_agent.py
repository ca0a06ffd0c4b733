"""`node-agent join` as a real process: join code -> credential, DHT announcements, heartbeats, SIGTERM.

The portal is the local HTTP test portal; the DHT peers are real gated nodes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from local_portal import LocalPortal

from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.moe.announce import live_replicas, uid_key
from node_agent.portal.gate import CredentialPolicy, install_credential_checks
from node_agent.portal.state import AGENT_STATE_FILE, AgentState, load_agent_state, save_agent_state

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
async def gated_bootstrap(local_portal: LocalPortal) -> AsyncIterator[DHTNode]:
    node = await DHTNode.create(listen="127.0.0.1:0")
    install_credential_checks(node, CredentialPolicy("demo", local_portal.identity.public_key_bytes))
    local_portal.behaviour.bootstrap_peers = [f"{node.endpoint}/{node.node_id.hex()}"]
    yield node
    await node.shutdown()


async def start_agent(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_agent", "-v", "join", *args,
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


async def read_until(
    process: asyncio.subprocess.Process, pattern: str, lines: list[str], timeout: float = 60
):
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no line matching {pattern!r}; output:\n" + "".join(lines)
        raw = await asyncio.wait_for(process.stdout.readline(), remaining)  # type: ignore[union-attr]
        assert raw, f"agent exited before {pattern!r}; output:\n" + "".join(lines)
        lines.append(raw.decode(errors="replace"))
        match = re.search(pattern, lines[-1])
        if match:
            return match


async def stop_agent(process: asyncio.subprocess.Process, lines: list[str]) -> int:
    process.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(process.communicate(), 30)
    lines.append(rest.decode(errors="replace"))
    return process.returncode  # type: ignore[return-value]


async def train_against_the_agent(portal: LocalPortal, directory: Path) -> None:
    """A gated trainer (config from the saved credential file) trains on the agent's experts and reports."""
    identity = Identity.load_or_create(directory / "identity.key")
    state = AgentState(portal.url, "demo", portal.credential_for(identity.public_key_bytes), portal.config())
    save_agent_state(directory / AGENT_STATE_FILE, state)
    command = [
        sys.executable,
        "-m",
        "node_agent",
        "train",
        "--steps",
        "12",
        "--log-every",
        "4",
        "--eval-every",
        "0",
    ]
    command += [
        "--no-progress",
        "--credential-file",
        str(directory / AGENT_STATE_FILE),
        "--rtc-loopback-only",
    ]
    command += ["--k-best", "2", "--batch-size", "16", "--heartbeat-period", "0.5"]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    output = out.decode(errors="replace")
    assert process.returncode == 0, output
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["experts_answered"] > 0, output
    assert {m["step"] for m in portal.metrics} >= {4, 8, 12}
    trainer_beats = [h for h in portal.heartbeats if h["node_id"] == identity.node_id.hex()]
    assert trainer_beats and all(h["role"] == "trainer" for h in trainer_beats)
    # The trainer reports which expert servers it called: the portal draws these as trainer->expert edges.
    called = {peer["node_id"] for h in trainer_beats for peer in h["peers"] if peer["requests"] > 0}
    assert called, trainer_beats


async def visible(reader: DHTNode, uid: str) -> list[bytes]:
    return [h.node_id for h in live_replicas(uid, await reader.get(uid_key(uid), latest=True))]


async def test_join_announces_heartbeats_and_withdraws_on_sigterm(
    local_portal: LocalPortal, gated_bootstrap: DHTNode, tmp_path: Path
) -> None:
    reader = await DHTNode.create(
        initial_peers=[gated_bootstrap.endpoint], listen="127.0.0.1:0", client_mode=True
    )
    install_credential_checks(reader, CredentialPolicy("demo", local_portal.identity.public_key_bytes))
    common = ["--data-dir", str(tmp_path), "--listen", "127.0.0.1:0", "--rtc-loopback-only", "--experts", "2"]
    common += ["--heartbeat-period", "1", "--announce-period", "2"]
    lines: list[str] = []
    process = await start_agent(local_portal.url, "CODE-1234", *common)
    try:
        joined = await read_until(process, r"joined project demo as node ([0-9a-f]{40})", lines)
        node_id = bytes.fromhex(joined.group(1))
        serving = await read_until(
            process, r"serving 2 ffn expert\(s\) of project demo: ([^ ]+, [^ ]+) ", lines
        )
        uids = serving.group(1).split(", ")
        await read_until(process, r"heartbeat ok", lines)
        state = load_agent_state(tmp_path / AGENT_STATE_FILE)
        assert (tmp_path / AGENT_STATE_FILE).stat().st_mode & 0o777 == 0o600
        assert state.project == "demo" and local_portal.joins
        heartbeat = local_portal.heartbeats[-1]
        assert heartbeat["node_id"] == node_id.hex() and sorted(heartbeat["experts"]) == sorted(uids)
        assert heartbeat["role"] == "server" and heartbeat["credential"] == state.credential
        for uid in uids:  # the gated reader accepts the credentialed announcements
            assert await visible(reader, uid) == [node_id]
        found = await reader.get(uid_key(uids[0]), latest=True)
        assert all(entry.value["cred"] == state.credential for entry in found.values())
        await train_against_the_agent(local_portal, tmp_path / "trainer")
    finally:
        code = await stop_agent(process, lines)
    output = "".join(lines)
    assert code == 0, output
    assert "withdrawing announcements" in output and "stopped" in output
    # Its last heartbeat, and only that one, told the portal it is going offline (shown offline at once).
    beats = [h for h in local_portal.heartbeats if h["node_id"] == node_id.hex()]
    assert beats[-1]["going_offline"] is True, output
    assert not any(h.get("going_offline") for h in beats[:-1])
    for uid in uids:
        assert await visible(reader, uid) == []

    # A restart needs no new code and works with the portal down (saved credential and config).
    local_portal.stop()
    lines = []
    process = await start_agent(local_portal.url, *common)
    try:
        await read_until(process, r"portal unreachable; starting with the saved project config", lines)
        await read_until(process, r"serving 2 ffn expert", lines)
        await read_until(process, r"heartbeat failing: portal unreachable", lines)
    finally:
        code = await stop_agent(process, lines)
        await reader.shutdown()
    assert code == 0, "".join(lines)


async def test_join_with_a_used_code_fails_clearly(local_portal: LocalPortal, tmp_path: Path) -> None:
    process = await start_agent(local_portal.url, "USED-CODE", "--data-dir", str(tmp_path))
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    output = out.decode()
    assert process.returncode == 1, output
    assert "the portal refused the join code: code_used" in output
    assert not (tmp_path / AGENT_STATE_FILE).exists()
