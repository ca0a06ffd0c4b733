"""Liveness under real load over real UDP: a node whose peers stop answering for a while finds them again,
and one source flooding a node with re-stores does not keep it from answering others.

The paused peer is a real ``node-agent bootstrap`` process stopped with SIGSTOP (its socket stays bound and
silent, as a busy or swapped-out machine's would). Flooders bind 127.0.0.2 (Linux routes 127/8 to loopback):
rate limits are per source address, so they must not fall on the honest nodes at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from node_agent.dht import DHTError, DHTNode
from node_agent.dht.endpoints import parse_endpoint
from node_agent.dht.protocol import MAX_RECORDS_PER_STORE
from node_agent.dht.records import sign_record
from tests.processes import wait_until_async

FLOODER_HOST = "127.0.0.2"


def start_bootstrap(listen: str) -> tuple[subprocess.Popen, str]:
    """A real ``node-agent bootstrap`` process; returns it and the endpoint it printed."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "node_agent",
            "bootstrap",
            "--listen",
            listen,
            "--ephemeral",
            "--any-namespace",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()  # type: ignore[union-attr]


@pytest.fixture
def bootstrap_process() -> Iterator[tuple[subprocess.Popen, str]]:
    process, endpoint = start_bootstrap("127.0.0.1:0")
    try:
        assert endpoint.startswith("127.0.0.1:"), endpoint
        yield process, endpoint
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(timeout=10)


async def get_value(node: DHTNode, key: str) -> object:
    try:
        found = await asyncio.wait_for(node.get(key, latest=True), 20.0)
    except (DHTError, TimeoutError):
        return None
    return found[None].value if None in found else None


@pytest.mark.parametrize("client_mode", [True, False], ids=["client", "server"])
async def test_a_node_finds_its_peers_again_after_they_were_paused(bootstrap_process, client_mode) -> None:
    process, endpoint = bootstrap_process
    writer = await DHTNode.create(initial_peers=[endpoint])
    assert await writer.store("liveness", {"v": 1}, time.time() + 600)
    await writer.shutdown()  # from now on only the bootstrap process holds the record
    node = await DHTNode.create(initial_peers=[endpoint], client_mode=client_mode)
    try:
        assert await get_value(node, "liveness") == {"v": 1}
        os.kill(process.pid, signal.SIGSTOP)
        try:
            paused_until = time.monotonic() + 4.0
            while time.monotonic() < paused_until:  # lookups time out against the paused peer
                assert await get_value(node, "liveness") is None
        finally:
            os.kill(process.pid, signal.SIGCONT)
        recovered = await wait_until_async(lambda: get_value(node, "liveness"), timeout=30, interval=0.2)
        assert recovered == {"v": 1}
        assert node.failure is None
    finally:
        await node.shutdown()


async def test_a_re_store_flood_from_one_source_leaves_others_answered(dht_swarm) -> None:
    [victim] = await dht_swarm(1)
    flooder = await DHTNode.create(listen=f"{FLOODER_HOST}:0")
    prober = await DHTNode.create(client_mode=True)  # 127.0.0.1: another source
    victim_address = parse_endpoint(victim.endpoint)[:2]
    try:
        start = time.time() + 600
        records = [sign_record(flooder.identity, "flood", None, i, start + i * 0.01) for i in range(20_000)]
        chunks = [
            records[i : i + MAX_RECORDS_PER_STORE] for i in range(0, len(records), MAX_RECORDS_PER_STORE)
        ]
        stores = [
            flooder._call(victim_address, "store", {"r": [r.to_wire() for r in chunk]}, victim.node_id, 3.0)
            for chunk in chunks
        ]

        async def probe() -> tuple[int, int]:
            answered = attempted = 0
            for _ in range(20):
                attempted += 1
                try:
                    await prober._call(victim_address, "ping", {}, victim.node_id, 1.0)
                    answered += 1
                except DHTError:
                    pass
                await asyncio.sleep(0.05)
            return answered, attempted

        results = await asyncio.gather(probe(), *stores, return_exceptions=True)
        answered, attempted = results[0]
        # A ping may miss its 1 s deadline on a loaded machine; a flood that starved others would leave none.
        assert answered >= attempted - 2, f"{answered}/{attempted} pings answered during the flood"
        stored = sum(1 for r in results[1:] if not isinstance(r, BaseException))
        assert stored < len(chunks) // 2  # most of the flood was dropped before any signature check
        assert victim.core.drops.counts["store over the source's rate"] >= len(chunks) // 2
        # An honest store from another source is still accepted at once.
        honest = await DHTNode.create(initial_peers=[victim.endpoint])
        try:
            assert await honest.store("honest", {"v": 1}, time.time() + 60)
        finally:
            await honest.shutdown()
    finally:
        await asyncio.gather(flooder.shutdown(), prober.shutdown())


async def test_a_node_rejoins_a_bootstrap_restarted_with_a_new_identity() -> None:
    """Its only contact now answers with another id (refused): lookups reach nobody, so the node pings its
    initial peer again, unpinned as it was given, and finds the new node there."""
    first, endpoint = start_bootstrap("127.0.0.1:0")
    host, port, _ = parse_endpoint(endpoint)
    second = None
    node = await DHTNode.create(initial_peers=[f"{host}:{port}"], client_mode=True)
    try:
        first.terminate()
        first.wait(timeout=10)
        second, endpoint = start_bootstrap(f"{host}:{port}")
        assert endpoint.startswith(f"{host}:{port}/")
        writer = await DHTNode.create(initial_peers=[endpoint])
        try:
            assert await writer.store("restarted", {"v": 2}, time.time() + 600)
            found = await wait_until_async(lambda: get_value(node, "restarted"), timeout=30, interval=0.2)
            assert found == {"v": 2}
        finally:
            await writer.shutdown()
    finally:
        await node.shutdown()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)


async def test_a_peer_that_stopped_answering_is_not_queried_again_when_others_name_it(dht_swarm) -> None:
    """The bootstrap still names a departed node in its answers (it never asked it anything); once the
    client has seen it time out twice it does not wait for it again on every lookup."""
    bootstrap, departed = await dht_swarm(2)
    client = await DHTNode.create(initial_peers=[bootstrap.endpoint], client_mode=True)
    try:
        assert client.core.routing.get(departed.node_id) is not None
        await departed.shutdown()
        for _ in range(10):
            if client.core.routing.is_stale(departed.node_id):
                break
            await client.find_nearest(departed.node_id)
        assert client.core.routing.is_stale(departed.node_id)
        assert bootstrap.core.routing.get(departed.node_id) is not None  # still named in answers
        assert await client.find_nearest(departed.node_id) == [(bootstrap.node_id, bootstrap.endpoint)]
        assert client.last_lookup is not None and client.last_lookup.queries_sent == 1  # the bootstrap only
    finally:
        await client.shutdown()


async def test_a_departed_node_the_client_never_met_is_not_waited_for_on_every_lookup(dht_swarm) -> None:
    """Others name a node that left before we ever reached it: two timeouts and we stop asking it."""
    [bootstrap] = await dht_swarm(1)
    client = await DHTNode.create(initial_peers=[bootstrap.endpoint], client_mode=True)
    departed = await DHTNode.create(initial_peers=[bootstrap.endpoint])
    try:
        await departed.shutdown()
        assert client.core.routing.get(departed.node_id) is None
        assert bootstrap.core.routing.get(departed.node_id) is not None  # still named in answers
        sent = []
        for _ in range(4):
            await client.find_nearest(departed.node_id)
            assert client.last_lookup is not None
            sent.append(client.last_lookup.queries_sent)
        assert sent[0] == 2 and sent[-1] == 1, sent  # asked while unknown, skipped once it failed twice
    finally:
        await client.shutdown()
