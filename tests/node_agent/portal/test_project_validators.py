"""Every node of a project checks every namespace, and nobody is blamed for relaying what it could not judge.

Real DHT nodes over UDP on 127.0.0.1, and a real `node-agent bootstrap` process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_agent.dht import DHTNode
from node_agent.dht.endpoints import parse_endpoint
from node_agent.dht.records import sign_record
from node_agent.identity import Identity
from node_agent.moe.announce import announce_experts
from node_agent.portal.gate import CredentialPolicy, fetch_revocations, install_credential_checks
from node_agent.portal.revocations import revocation_list_value, revocations_key

PROJECT = "demo"
PORTAL = Identity.generate()


def address(node: DHTNode) -> tuple[str, int]:
    host, port, _ = parse_endpoint(node.endpoint)
    return host, port


async def still_answers(reader: DHTNode, peer: DHTNode) -> bool:
    """A peer that ``reader`` banned is ignored: its answers are dropped and the ping times out."""
    try:
        await reader._call(address(peer), "ping", {}, peer.node_id, 1.0)
    except Exception:
        return False
    return True


async def test_relaying_a_forged_revocation_list_gets_nobody_banned() -> None:
    """A node that checks nothing (as `node-agent bootstrap` did) holds a forged `revocations:<project>`;
    credential-checking nodes read it again and again. Before, each read was an offence of the relayer
    and after three reads every reader banned it."""
    relayer = await DHTNode.create(listen="127.0.0.1:0")  # no validators: it cannot judge the list
    nodes = [relayer]
    try:
        readers = []
        for _ in range(3):
            reader = await DHTNode.create(initial_peers=[relayer.endpoint], listen="127.0.0.1:0")
            policy = CredentialPolicy(PROJECT, PORTAL.public_key_bytes)
            install_credential_checks(reader, policy)
            readers.append((reader, policy))
            nodes.append(reader)
        mallory = await DHTNode.create(
            initial_peers=[relayer.endpoint], listen="127.0.0.1:0", client_mode=True
        )
        nodes.append(mallory)
        forged_list = revocation_list_value(["cid-of-an-honest-volunteer"], time.time() + 3600)
        forged = sign_record(mallory.identity, revocations_key(PROJECT), None, forged_list, time.time() + 600)
        assert await mallory._send_records(relayer.node_id, address(relayer), [forged]) == [True]
        for reader, _ in readers:  # the gated nodes refuse it themselves
            assert await mallory._send_records(reader.node_id, address(reader), [forged]) == [False]

        for _ in range(5):
            for reader, policy in readers:
                assert await fetch_revocations(reader, policy) is None  # the forgery is dropped
        for reader, _ in readers:
            assert reader.core.drops.counts["record refused without blame"] >= 5
            assert reader.core.drops.counts["invalid records"] == 0
            assert await still_answers(reader, relayer)
    finally:
        for node in nodes:
            await node.shutdown()


@pytest.fixture
def project_config(tmp_path: Path) -> Path:
    config = {
        "project": PROJECT,
        "portal_public_key": PORTAL.public_key_bytes.hex(),
        "expert": {"hidden_dim": 8, "grid": [2, 2], "prefix": "ffn"},
        "gated": True,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def start_bootstrap(*extra: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "node_agent", "bootstrap", "--listen", "127.0.0.1:0", "--ephemeral", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip() if process.stdout else ""


@pytest.fixture
def gated_bootstrap(project_config: Path) -> Iterator[str]:
    process, peer = start_bootstrap("--project-config", str(project_config))
    try:
        yield peer
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def bare_bootstrap() -> Iterator[str]:
    process, peer = start_bootstrap()
    try:
        yield peer
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_project_bootstrap_refuses_forged_lists_unknown_keys_and_uncredentialed_experts(
    gated_bootstrap: str,
) -> None:
    mallory = await DHTNode.create(initial_peers=[gated_bootstrap], listen="127.0.0.1:0", client_mode=True)
    portal = await DHTNode.create(
        initial_peers=[gated_bootstrap], listen="127.0.0.1:0", identity=PORTAL, client_mode=True
    )
    try:
        now = time.time()
        assert not await mallory.store(revocations_key(PROJECT), revocation_list_value(["x"], now), now + 600)
        assert not await mallory.store("junk:parked", "x" * 1000, now + 600)
        assert not any(await announce_experts(mallory, ["ffn.0.1"], ttl=60))  # no credential
        assert await portal.store(revocations_key(PROJECT), revocation_list_value(["cid-9"], now), now + 600)
        found = await mallory.get(revocations_key(PROJECT), latest=True)
        assert found[None].owner == PORTAL.node_id and found[None].value["revoked"] == ["cid-9"]
    finally:
        await mallory.shutdown()
        await portal.shutdown()


async def test_a_bootstrap_without_a_project_refuses_revocation_lists_without_blaming_the_portal(
    bare_bootstrap: str,
) -> None:
    portal = await DHTNode.create(
        initial_peers=[bare_bootstrap], listen="127.0.0.1:0", identity=PORTAL, client_mode=True
    )
    try:
        for _ in range(4):  # three offences used to get a sender ignored
            now = time.time()
            value = revocation_list_value(["cid-9"], now)
            assert not await portal.store(revocations_key(PROJECT), value, now + 600)
        assert any(await announce_experts(portal, ["ffn.0.0"], ttl=60))  # still heard: not ignored
        assert not await portal.store("cli-key", 1, time.time() + 60)  # not a project namespace
    finally:
        await portal.shutdown()
