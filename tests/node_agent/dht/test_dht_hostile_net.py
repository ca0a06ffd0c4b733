"""Hostile traffic against real DHT nodes over real UDP: poisoned contacts, storage floods, port rotation,
replayed requests. Each test sends the kind of traffic that used to break a node and checks it still serves.

Attackers bind 127.0.0.2 (Linux routes all of 127/8 to loopback): penalties and quotas are per source
address, so they must not fall on the honest nodes of the test at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from node_agent.dht import DHTError, DHTNode, DHTNodeStoppedError
from node_agent.dht.endpoints import parse_endpoint, source_key
from node_agent.dht.records import sign_record
from node_agent.dht.routing import Contact
from node_agent.identity import Identity
from node_agent.wire import pack
from tests.node_agent.manual_clock import ManualClock
from tests.processes import wait_until_async

ATTACKER_HOST = "127.0.0.2"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
POISON = [("a\x00b", 4000), ("::1", 4000), ("example.com", 4000), ("0.0.0.0", 4000), ("127.0.0.1", 0)]


def address(node: DHTNode) -> tuple[str, int]:
    host, port, _ = parse_endpoint(node.endpoint)
    return host, port


def run_on(loop_name: str, scenario: Callable[[], Awaitable[None]], timeout: float = 60.0) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        runner.run(asyncio.wait_for(scenario(), timeout))


def poison_routing_table(node: DHTNode) -> None:
    """The hostile node answers every find with contacts at addresses nobody can or should send to."""
    bucket = node.core.routing.buckets[0]
    for host, port in POISON:
        node_id = os.urandom(20)
        bucket.contacts[node_id] = Contact(node_id, host, port, last_seen=time.time())


def maintenance_task(node: DHTNode) -> asyncio.Task:
    [task] = [t for t in node._tasks if t.get_name() == "maintenance"]
    return task


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_poisoned_contacts_in_answers_neither_kill_the_socket_nor_the_maintenance(loop_name: str) -> None:
    async def scenario() -> None:
        hostile = await DHTNode.create(listen=f"{ATTACKER_HOST}:0")
        poison_routing_table(hostile)
        clock = ManualClock()
        victim = await DHTNode.create(  # short RPC timeouts: once the hostile node is banned, every
            initial_peers=[hostile.endpoint],  # lookup and rejoin waits them out
            refresh_interval=1.0,
            republish_interval=1.0,
            rpc_timeout=0.5,
            clock=clock,
        )
        try:
            for _ in range(3):
                try:
                    await victim.store("k", 1, time.time() + 60)
                    await victim.get("k", latest=True)
                    await victim.find_nearest(os.urandom(20))
                except DHTError:
                    pass  # the hostile node may be banned by now: failing is fine, failing oddly is not
            for _ in range(2):  # maintenance rounds refresh buckets through the hostile node, republish
                await clock.advance(1.0)
                assert not maintenance_task(victim).done()
            honest = await DHTNode.create(initial_peers=[victim.endpoint])  # the victim still answers
            try:
                assert victim.node_id in honest.core.routing
                assert await honest.store("after", 2, time.time() + 60)
                assert (await victim.get("after", latest=True))[None].value == 2
            finally:
                await honest.shutdown()
            assert victim.core.drops.counts["malformed contacts"] >= 1
            assert victim._transport.send_errors == 0  # no poisoned address ever reached the socket
        finally:
            await victim.shutdown()
            await hostile.shutdown()

    run_on(loop_name, scenario)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_rpc_to_an_endpoint_from_the_network_fails_as_a_dht_error(loop_name: str) -> None:
    async def scenario() -> None:
        node = await DHTNode.create()
        try:
            for endpoint in ("a\x00b:1", "[::1]:4000", "0.0.0.0:4000", "nowhere.invalid:4000", "1.2.3.4:0"):
                with pytest.raises(DHTError):
                    await node.call_rpc(endpoint, "rtc.offer", {}, timeout=0.5)
        finally:
            await node.shutdown()

    run_on(loop_name, scenario)


def test_a_lost_socket_stops_the_node_loudly(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        node = await DHTNode.create()
        try:
            # What a poisoned host did before contacts were checked: plain asyncio closes the transport.
            node._transport._transport.sendto(b"x", ("a\x00b", 1))
            await wait_until_async(lambda: node.failure is not None, timeout=5)
            assert "socket was lost" in node.failure
            with pytest.raises(DHTNodeStoppedError):
                await node.get("k")
            with pytest.raises(DHTNodeStoppedError):
                await node.store("k", 1, time.time() + 60)
        finally:
            await node.shutdown()

    with caplog.at_level(logging.CRITICAL, logger="node_agent.dht.node"):
        run_on("asyncio", scenario)
    assert any(r.levelno == logging.CRITICAL and "stops" in r.getMessage() for r in caplog.records)


async def test_maintenance_that_fails_unexpectedly_is_retried_then_stops_the_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    node = await DHTNode.create(
        refresh_interval=1.0, republish_interval=1.0, max_task_failures=3, clock=clock
    )
    try:
        real_republish = node.republish
        calls: list[str] = []

        async def republish_failing_once() -> int:  # fault injection: one round hits a bug
            calls.append("call")
            if len(calls) == 1:
                raise RuntimeError("injected fault")
            return await real_republish()

        node.republish = republish_failing_once  # type: ignore[method-assign]
        await clock.advance(1.0)  # a round: it fails
        assert len(calls) == 1 and "injected fault" in caplog.text
        await clock.advance(1.0)  # retried after 1 s: it succeeds
        assert len(calls) == 2 and not maintenance_task(node).done() and node.failure is None

        async def republish_always_failing() -> int:
            calls.append("call")
            raise RuntimeError("persistent fault")

        node.republish = republish_always_failing  # type: ignore[method-assign]
        for failures in (1, 2):
            await clock.advance(1.0)
            assert len(calls) == 2 + failures and node.failure is None  # retried, not yet given up
        await clock.advance(1.0)
        assert node.failure == "maintenance failed 3 times in a row"
        with pytest.raises(DHTNodeStoppedError):
            await node.get("k")
    finally:
        await node.shutdown()


async def test_one_source_rotating_ports_and_identities_hits_its_storage_cap(dht_swarm) -> None:
    [victim] = await dht_swarm(1, max_records_per_source=300, max_bytes_per_source=4 * 1024 * 1024)
    attackers = [await DHTNode.create(listen=f"{ATTACKER_HOST}:0") for _ in range(4)]  # 4 ports, 4 ids
    try:
        value = b"x" * 4000
        accepted = 0
        for n, attacker in enumerate(attackers):
            for owner_batch in range(2):  # several owners per attacker: the per-owner quota does not help
                owner = Identity.generate()
                records = [
                    sign_record(owner, f"f-{n}-{owner_batch}-{i % 10}", f"s{i}", value, time.time() + 3600)
                    for i in range(100)
                ]
                accepted += sum(await attacker._send_records(victim.node_id, address(victim), records))
        records_held, bytes_held = victim.core.store.source_usage(source_key(ATTACKER_HOST))
        assert accepted == records_held == 300  # 800 sent from 4 ports, the source's cap kept
        assert bytes_held <= 4 * 1024 * 1024 and victim.core.store.total_bytes == bytes_held
        honest = await DHTNode.create(initial_peers=[victim.endpoint])  # 127.0.0.1: another source
        try:
            assert await honest.store("honest", {"v": 1}, time.time() + 60)
            assert (await victim.get("honest"))[None].value == {"v": 1}
        finally:
            await honest.shutdown()
    finally:
        await asyncio.gather(*(a.shutdown() for a in attackers))


async def test_re_storing_one_record_20000_times_keeps_the_expiry_heap_bounded(dht_swarm) -> None:
    [victim] = await dht_swarm(1, store_checks_burst=30_000.0)  # the rate limit would drop most of them
    attacker = await DHTNode.create(listen=f"{ATTACKER_HOST}:0")
    try:
        start = time.time() + 600
        records = [sign_record(attacker.identity, "k", None, i, start + i * 0.01) for i in range(20_000)]
        accepted = await attacker._send_records(victim.node_id, address(victim), records)
        assert all(accepted)
        assert len(victim.core.store) == 1
        assert len(victim.core.store._expiry_heap) <= 2 * len(victim.core.store) + 64
        assert victim.core.store.source_usage(source_key(ATTACKER_HOST))[0] == 1
    finally:
        await attacker.shutdown()


async def test_a_ban_follows_the_address_across_source_ports(bootstrap_node: DHTNode) -> None:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sock in sockets:
            sock.bind((ATTACKER_HOST, 0))
        for sock in sockets[:3]:  # one garbage datagram from each of three ports
            sock.sendto(b"\xc1garbage", address(bootstrap_node))
        drops = bootstrap_node.core.drops.counts
        await wait_until_async(lambda: drops["malformed"] == 3, timeout=5)
        assert bootstrap_node.core.penalties.is_banned(source_key(ATTACKER_HOST), time.time())
        banned_before = drops["banned address"]
        # A well-formed, signed ping from a fourth, fresh port (and a fresh identity) is ignored too.
        probe = await DHTNode.create(listen=f"{ATTACKER_HOST}:0")
        try:
            with pytest.raises(DHTError):
                await probe._call(address(bootstrap_node), "ping", {}, bootstrap_node.node_id, 0.5)
        finally:
            await probe.shutdown()
        sockets[3].sendto(pack([b"x", b"y"]), address(bootstrap_node))
        await wait_until_async(lambda: drops["banned address"] >= banned_before + 2, timeout=5)
        honest = await DHTNode.create(initial_peers=[bootstrap_node.endpoint])  # other addresses are served
        await honest.shutdown()
    finally:
        for sock in sockets:
            sock.close()


async def test_a_ban_ends_after_ban_seconds_of_the_nodes_clock() -> None:
    clock = ManualClock()
    node = await DHTNode.create(clock=clock, ban_seconds=60.0)
    probe = await DHTNode.create(listen=f"{ATTACKER_HOST}:0", clock=clock)
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        garbage.bind((ATTACKER_HOST, 0))
        for _ in range(3):
            garbage.sendto(b"\xc1garbage", address(node))
        await wait_until_async(lambda: node.core.drops.counts["malformed"] == 3, timeout=5)
        with pytest.raises(DHTError):  # the whole address is ignored, signed pings included
            await probe._call(address(node), "ping", {}, node.node_id, 0.3)
        await clock.advance(59.0)
        with pytest.raises(DHTError):
            await probe._call(address(node), "ping", {}, node.node_id, 0.3)
        await clock.advance(2.0)
        assert (await probe._call(address(node), "ping", {}, node.node_id, 2.0)).peer.node_id == node.node_id
    finally:
        garbage.close()
        await probe.shutdown()
        await node.shutdown()


async def test_a_replayed_request_from_another_port_does_not_remap_the_sender(dht_swarm) -> None:
    alice, victim = await dht_swarm(2)
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where Alice sends an unpinned request
    mallory = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tap.bind(("127.0.0.1", 0))
    mallory.bind(("127.0.0.1", 0))
    tap.setblocking(False)
    mallory.setblocking(False)
    loop = asyncio.get_running_loop()

    async def replay_settled(node: DHTNode) -> None:
        """The node answered the replay (to Mallory) and its address check of Alice there is over."""
        await asyncio.wait_for(loop.sock_recv(mallory, 65536), 5.0)
        await wait_until_async(lambda: alice.node_id not in node._checking, timeout=5)

    try:
        assert victim.core.routing.get(alice.node_id).address == address(alice)
        call = asyncio.ensure_future(alice._call(tap.getsockname(), "ping", {}, None, 1.0))
        captured = await asyncio.wait_for(loop.sock_recv(tap, 65536), 2.0)
        mallory.sendto(captured, address(victim))  # replayed at once, from another port
        await replay_settled(victim)
        assert victim.core.routing.get(alice.node_id).address == address(alice)
        # A stranger's replay: the victim has never seen Alice, and still does not map her to Mallory.
        stranger = await DHTNode.create(rpc_timeout=0.3)  # its address check of Alice gives up soon
        try:
            mallory.sendto(captured, address(stranger))
            await replay_settled(stranger)
            assert stranger.core.routing.get(alice.node_id) is None
        finally:
            await stranger.shutdown()
        with pytest.raises(DHTError):
            await call
    finally:
        tap.close()
        mallory.close()
