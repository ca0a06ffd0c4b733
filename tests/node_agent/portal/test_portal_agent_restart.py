"""`node-agent join` outlives its bootstrap peers: a real agent process, real DHT nodes, the local portal.

A node none of whose bootstrap peers answers (the portal restarting) serves anyway, retries them with backoff
and re-reads them from the portal; a spent join code restarts from the saved credential.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from local_portal import LocalPortal
from test_portal_join_agent import REPO, read_until, start_agent, stop_agent, visible

from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.portal.gate import CredentialPolicy, install_credential_checks
from node_agent.portal.state import AGENT_STATE_FILE, AgentState, save_agent_state
from tests.processes import free_port, wait_until_async

pytestmark = pytest.mark.slow


async def gated_node(portal: LocalPortal, listen: str, identity: Identity | None = None, peers=()) -> DHTNode:
    node = await DHTNode.create(initial_peers=list(peers), listen=listen, identity=identity)
    install_credential_checks(node, CredentialPolicy("demo", portal.identity.public_key_bytes))
    return node


def agent_options(data_dir: Path) -> list[str]:
    options = ["--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--rtc-loopback-only"]
    options += ["--experts", "1", "--heartbeat-period", "1", "--announce-period", "1"]
    return [*options, "--peer-refresh-period", "1"]


async def test_agent_waits_for_a_bootstrap_that_starts_later_and_a_used_code_restarts(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    port = free_port()  # a TCP port free now; the UDP one of the same number is free in practice too
    bootstrap_identity = Identity.generate()
    local_portal.behaviour.bootstrap_peers = [f"127.0.0.1:{port}/{bootstrap_identity.node_id.hex()}"]
    lines: list[str] = []
    process = await start_agent(local_portal.url, "CODE-1234", *agent_options(tmp_path))
    bootstrap: DHTNode | None = None
    try:
        await read_until(process, r"bootstrap peer\(s\) answered; serving anyway", lines)
        serving = await read_until(process, r"serving 1 ffn expert\(s\) of project demo: (\S+) ", lines)
        uid = serving.group(1)
        node_id = Identity.load_or_create(tmp_path / "identity.key").node_id
        bootstrap = await gated_node(local_portal, f"127.0.0.1:{port}", bootstrap_identity)
        # The agent keeps pinging the bootstrap address with backoff and announces once it answers.
        assert await wait_until_async(lambda: _visible_now(bootstrap, uid, node_id), timeout=60, interval=0.5)
    finally:
        code = await stop_agent(process, lines)
    assert code == 0, "".join(lines)
    assert "rejoined the DHT" in "".join(lines)
    # No live replica held its cell: the agent asked the portal for the project's last export (none here).
    assert local_portal.export_fetches == 1 and "the project has no export yet" in "".join(lines)

    # Re-running the Join page's command (its code is spent) restarts from the saved credential and says how.
    lines = []
    process = await start_agent(local_portal.url, "CODE-1234", *agent_options(tmp_path))
    try:
        hint = r"code_used .*run `node-agent join \S+` without a code.*doing that now"
        await read_until(process, hint, lines)
        await read_until(process, r"serving 1 ffn expert", lines)
        await read_until(process, r"heartbeat ok", lines)
    finally:
        code = await stop_agent(process, lines)
        if bootstrap is not None:
            await bootstrap.shutdown()
    assert code == 0, "".join(lines)
    assert len(local_portal.joins) == 1


async def test_agent_rereads_bootstrap_peers_from_the_portal(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}/{Identity.generate().node_id.hex()}"  # nothing listens there
    local_portal.behaviour.bootstrap_peers = [dead]
    live = await gated_node(local_portal, "127.0.0.1:0")
    lines: list[str] = []
    process = await start_agent(local_portal.url, "CODE-1234", *agent_options(tmp_path))
    try:
        await read_until(process, r"bootstrap peer\(s\) answered; serving anyway", lines)
        serving = await read_until(process, r"serving 1 ffn expert\(s\) of project demo: (\S+) ", lines)
        uid = serving.group(1)
        node_id = Identity.load_or_create(tmp_path / "identity.key").node_id
        # The portal restarted with its bootstrap node elsewhere: the agent learns it from the project config.
        local_portal.behaviour.bootstrap_peers = [f"{live.endpoint}/{live.node_id.hex()}"]
        await read_until(process, r"the portal lists new bootstrap peers: " + live.endpoint, lines)
        assert await wait_until_async(lambda: _visible_now(live, uid, node_id), timeout=60, interval=0.5)
    finally:
        code = await stop_agent(process, lines)
        await live.shutdown()
    assert code == 0, "".join(lines)
    saved = (tmp_path / AGENT_STATE_FILE).read_text()
    assert live.endpoint in saved and dead not in saved  # a later restart starts from the new peers


async def test_used_code_without_saved_credential_says_how_to_restart(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    process = await start_agent(local_portal.url, "USED-CODE", "--data-dir", str(tmp_path))
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    output = out.decode()
    assert process.returncode == 1, output
    assert "code_used" in output and "without a code and with the --data-dir of its first join" in output
    assert not (tmp_path / AGENT_STATE_FILE).exists()


async def _visible_now(reader: DHTNode, uid: str, node_id: bytes) -> bool:
    return node_id in await visible(reader, uid)


async def test_a_portal_trainer_waits_for_its_bootstrap_then_trains(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    port = free_port()
    bootstrap_identity = Identity.generate()
    local_portal.behaviour.bootstrap_peers = [f"127.0.0.1:{port}/{bootstrap_identity.node_id.hex()}"]
    trainer_dir = tmp_path / "trainer"
    identity = Identity.load_or_create(trainer_dir / "identity.key")
    state = AgentState(local_portal.url, "demo", local_portal.credential_for(identity.public_key_bytes),
                       local_portal.config())  # fmt: skip
    save_agent_state(trainer_dir / AGENT_STATE_FILE, state)
    agent_lines: list[str] = []
    agent = await start_agent(local_portal.url, "CODE-1234", *agent_options(tmp_path / "agent"))
    trainer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node_agent", "train", "--steps", "4", "--log-every", "2", "--eval-every", "0",
        "--no-progress", "--credential-file", str(trainer_dir / AGENT_STATE_FILE), "--rtc-loopback-only",
        "--k-best", "1", "--batch-size", "8", "--heartbeat-period", "0.5",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    trainer_lines: list[str] = []
    bootstrap: DHTNode | None = None
    try:
        await read_until(agent, r"serving 1 ffn expert", agent_lines)
        await read_until(
            trainer, r"waiting for the project's DHT: none of 1 peer\(s\) answers yet", trainer_lines
        )
        bootstrap = await gated_node(local_portal, f"127.0.0.1:{port}", bootstrap_identity)
        out, _ = await asyncio.wait_for(trainer.communicate(), 120)
        output = "".join(trainer_lines) + out.decode(errors="replace")
        assert trainer.returncode == 0, output
        summary = json.loads(output.strip().splitlines()[-1])
        assert summary["steps"] == 4 and summary["experts_answered"] > 0, output
    finally:
        if trainer.returncode is None:
            trainer.kill()
            await trainer.wait()
        await stop_agent(agent, agent_lines)
        if bootstrap is not None:
            await bootstrap.shutdown()
