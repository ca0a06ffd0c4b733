"""Probed record sizes on real connections: loopback finds a whole DTLS record, a 1,500-byte MTU path finds
just under it, a path whose MTU drops recovers (black hole), and peers without whole-record reads, or with
no patches at all, keep aiortc's standard chunks and still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.rtc.config import RTCOptions
from node_agent.rtc.plpmtu import BASE_PACKET, MAX_PACKET, Phase
from node_agent.rtc.pool import ConnectionPool
from node_agent.rtc.record_probing import ProbeSettings, RecordProber, probe_nonce
from tests.node_agent.rtc.handlers import echo
from tests.processes import wait_until_async

OPTIONS = RTCOptions.for_loopback(connect_timeout=4.0)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


async def _round_trip(link, size: int) -> None:
    payload = os.urandom(size)
    assert await link.rpc.call("echo", payload, timeout=10) == payload


def _complete(link) -> bool:
    return link.prober is not None and link.prober.search.phase is Phase.COMPLETE


async def test_loopback_peers_that_read_whole_records_find_a_whole_record_both_ways(two_nodes):
    a, b = two_nodes
    client = await ConnectionPool.create(a, None, OPTIONS)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        link = await client.connect(b.node_id, b.endpoint)
        await _round_trip(link, 100_000)  # data flows at the base size while the search runs
        (inbound,) = await wait_until_async(lambda: server.links, timeout=5)
        await wait_until_async(lambda: _complete(link) and _complete(inbound), timeout=10)
        for side in (link, inbound):
            assert side.prober.packet_size == MAX_PACKET
            assert type(side.peer_connection.sctp).__name__ == "ProbedSctpTransport"
        chunk = link.prober.chunk_size()
        for size in (1, chunk - 1, chunk + 1, 3 * 2**20 + 17):
            await _round_trip(link, size)  # many records each way, reassembled exactly
    finally:
        await client.close()
        await server.close()
    assert link.prober_task is not None and link.prober_task.done()  # stopped with the connection


async def test_standard_chunks_towards_a_peer_that_reads_no_whole_records(two_nodes):
    a, b = two_nodes
    plain = RTCOptions.for_loopback(connect_timeout=4.0, record_probing=None)
    client = await ConnectionPool.create(a, None, plain)
    server = await ConnectionPool.create(b, echo, OPTIONS)
    try:
        link = await client.connect(b.node_id, b.endpoint)
        (inbound,) = await wait_until_async(lambda: server.links, timeout=5)
        assert link.prober is None and inbound.prober is None  # neither side probes: the client said no
        assert type(link.peer_connection.sctp).__name__ == "RTCSctpTransport"
        assert type(inbound.peer_connection.sctp).__name__ == "RTCSctpTransport"
        await _round_trip(link, 2 * 2**20 + 5)
    finally:
        await client.close()
        await server.close()


PLAIN_PEER = r"""
import asyncio, sys
from aiortc import RTCPeerConnection, RTCSessionDescription, RTCConfiguration
import aioice.ice
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
async def main():
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    done = asyncio.Event()
    @pc.on("datachannel")
    def on_channel(channel):
        channel.on("message", lambda data: channel.send(data))
    offer = sys.stdin.readline().strip().encode().decode("unicode_escape")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    print(pc.localDescription.sdp.encode("unicode_escape").decode(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await pc.close()
asyncio.run(main())
"""


async def test_a_plain_aiortc_peer_in_another_process_connects_and_echoes_intact():
    """No patch of ours in the peer's process: our SACK coalescing and hot-path changes interoperate."""
    import asyncio

    from aiortc import RTCSessionDescription

    from node_agent.rtc.config import apply_process_settings, new_peer_connection

    apply_process_settings(OPTIONS)  # every patch of ours installed on this side
    pc = new_peer_connection(OPTIONS)
    channel = pc.createDataChannel("interop")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await pc.setLocalDescription(await pc.createOffer())
    peer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PLAIN_PEER, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert peer.stdin is not None and peer.stdout is not None
        peer.stdin.write(pc.localDescription.sdp.encode("unicode_escape") + b"\n")
        async with asyncio.timeout(20):
            answer = (await peer.stdout.readline()).decode().strip().encode().decode("unicode_escape")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await opened.wait()
        echoed = bytearray()
        done = asyncio.Event()

        def on_message(data: bytes) -> None:
            echoed.extend(data)
            if len(echoed) >= 2 * 2**20:
                done.set()

        channel.on("message", on_message)
        payload = os.urandom(2 * 2**20)
        for pos in range(0, len(payload), 60_000):
            channel.send(payload[pos : pos + 60_000])
        async with asyncio.timeout(30):
            await done.wait()
        assert bytes(echoed) == payload
    finally:
        if peer.stdin is not None:
            peer.stdin.write(b"bye\n")
        await pc.close()
        async with asyncio.timeout(10):
            await peer.wait()


@given(st.lists(st.tuples(st.integers(0, 2**16 - 1), st.binary(max_size=64)), max_size=8))
def test_any_heartbeat_ack_a_peer_sends_is_handled_without_error_and_validates_nothing(params):
    prober = RecordProber(None, [], ProbeSettings())
    assert prober.heartbeat_acked(SimpleNamespace(params=params)) == (
        probe_nonce(SimpleNamespace(params=params)) is not None
    )
    assert prober.search.plpmtu == BASE_PACKET and not prober._waiting  # no probe outstanding: nothing moves


def test_probes_are_recognised_only_by_their_marker():
    assert probe_nonce(SimpleNamespace(params=[(1, b"colearn-plpmtud:12345678")])) == b"12345678"
    assert probe_nonce(SimpleNamespace(params=[(1, b"a browser's own heartbeat")])) is None
    assert probe_nonce(SimpleNamespace(params=[(2, b"colearn-plpmtud:12345678")])) is None
    assert probe_nonce(SimpleNamespace()) is None


# ---- inside network namespaces whose loopback MTU the test sets (root) -----------------------------------


@pytest.fixture
def namespace() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = f"colearn-mtu-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up", "mtu", "1500"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _record_pair(namespace: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "platform")]))
    command = ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.node_agent.rtc.record_pair"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
    return subprocess.Popen([*command, *args], cwd=REPO, env=env, text=True, **pipes)


def _event(process: subprocess.Popen[str], name: str) -> dict:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"the pair exited (code {process.wait(10)}) before {name!r}"
    event = json.loads(line)
    assert event["event"] == name, event
    return event


#: IPv4 (20), UDP (8) and DTLS record (13 header + up to 48 of AEAD/CBC overhead) bytes around a packet.
ENCAPSULATION = (20 + 8 + 13, 20 + 8 + 13 + 48)


@pytest.mark.e2e
def test_a_1500_byte_mtu_path_finds_just_under_1500_and_recovers_from_a_black_hole(namespace):
    process = _record_pair(namespace, "--black-hole")
    try:
        found = _event(process, "found")
        assert 1500 - ENCAPSULATION[1] - 16 <= found["packet"] <= 1500 - ENCAPSULATION[0], found
        # the path's MTU drops under the size in use: its probes are dropped silently, data is IP-fragmented
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "mtu", "1300"], check=True)
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        recovered = _event(process, "recovered")
        assert recovered["intact"] and recovered["black_holes"] == 1 and recovered["packet"] == BASE_PACKET
        researched = _event(process, "researched")
        assert researched["intact"]
        assert BASE_PACKET < researched["packet"] <= 1300 - ENCAPSULATION[0], researched
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
