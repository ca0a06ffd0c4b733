from __future__ import annotations

import asyncio
import contextlib
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.rtc.rpc import (
    ChannelRPC,
    RPCClosedError,
    RPCHandlerError,
    RPCRemoteError,
    RPCTimeoutError,
    parse_error_reply,
    parse_request,
)
from node_agent.wire import WireError
from tests.node_agent.msgpack_strategies import msgpack_values
from tests.processes import wait_until_async


def _handler(slow_started: asyncio.Event | None = None):
    """Echoes, refuses or crashes by method name; `slow` sets `slow_started` and never answers in time."""

    async def echo(method: str, body):
        if method == "slow":
            if slow_started is not None:
                slow_started.set()
            await asyncio.sleep(30)
        if method == "refuse":
            raise RPCHandlerError("bad_request", "refused on purpose")
        if method == "crash":
            raise RuntimeError("boom")
        return {"method": method, "body": body}

    return echo


_echo = _handler()


async def test_calls_both_ways_with_large_chunked_payloads(loopback_pair):
    client = ChannelRPC(loopback_pair.offer_channel, _echo, chunk_size=16 * 1024)
    server = ChannelRPC(loopback_pair.answer_channel, _echo, chunk_size=16 * 1024)
    big = bytes(range(256)) * 4096  # 1 MiB: 64 chunks, back-pressure engages
    results = await asyncio.gather(*(client.call("echo", big + bytes([i]), timeout=30) for i in range(3)))
    assert [r["body"] for r in results] == [big + bytes([i]) for i in range(3)]
    assert (await server.call("ping", {"x": 1}, timeout=5)) == {"method": "ping", "body": {"x": 1}}


async def test_errors_timeouts_and_cancellation(loopback_pair):
    client = ChannelRPC(loopback_pair.offer_channel, None)
    server = ChannelRPC(loopback_pair.answer_channel, _echo)
    with pytest.raises(RPCRemoteError, match="refused on purpose") as info:
        await client.call("refuse", None, timeout=5)
    assert info.value.code == "bad_request"
    with pytest.raises(RPCRemoteError, match="internal: RuntimeError: boom"):
        await client.call("crash", None, timeout=5)
    with pytest.raises(RPCTimeoutError):
        await client.call("slow", None, timeout=0.3)
    # the CANCEL frame reaches the server and stops the handler
    await wait_until_async(lambda: server.in_flight == 0, timeout=5)
    with pytest.raises(RPCRemoteError, match="unknown_method"):
        await server.call("anything", None, timeout=5)


async def test_malformed_frames_answered_and_peer_survives(loopback_pair):
    server = ChannelRPC(loopback_pair.answer_channel, _echo)
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    raw = loopback_pair.offer_channel
    raw.on("message", replies.put_nowait)
    raw.send(struct.pack("!BBBBI", 9, 1, 1, 0, 42) + b"junk")  # wrong version, names call 42
    reply = await asyncio.wait_for(replies.get(), 5)
    assert reply[1] == 3 and struct.unpack("!I", reply[4:8])[0] == 42  # ERROR for call 42
    assert msgpack.unpackb(reply[8:])["code"] == "bad_frame"
    raw.send(struct.pack("!BBBBI", 1, 1, 1, 0, 43) + b"\xc1")  # valid frame, undecodable msgpack
    reply = await asyncio.wait_for(replies.get(), 5)
    assert msgpack.unpackb(reply[8:])["code"] == "bad_request"
    raw.send(struct.pack("!BBBBI", 1, 1, 1, 0, 44) + msgpack.packb([1, 2]))  # wrong request shape
    reply = await asyncio.wait_for(replies.get(), 5)
    assert msgpack.unpackb(reply[8:])["code"] == "bad_request"
    raw.send("a text message")
    raw.send(b"\x00")
    await wait_until_async(lambda: server.bad_frames == 3, timeout=5)  # the version one, text, too short
    assert replies.empty()  # frames naming no call get no answer
    raw.remove_all_listeners("message")
    client = ChannelRPC(raw, None)
    assert (await client.call("still", "alive", timeout=5))["body"] == "alive"


async def test_peer_closing_fails_pending_calls(loopback_pair):
    started = asyncio.Event()
    client = ChannelRPC(loopback_pair.offer_channel, None)
    ChannelRPC(loopback_pair.answer_channel, _handler(slow_started=started))
    pending = asyncio.ensure_future(client.call("slow", None, timeout=20))
    await asyncio.wait_for(started.wait(), 10)  # the call is being served when the peer goes
    await loopback_pair.answerer.close()
    with pytest.raises(RPCClosedError):
        await asyncio.wait_for(pending, 10)
    with pytest.raises(RPCClosedError):
        await client.call("x", None, timeout=1)


@settings(max_examples=300, deadline=None)
@given(msgpack_values | st.fixed_dictionaries({"m": msgpack_values, "b": msgpack_values}))
def test_request_and_error_decoders_raise_only_wire_errors(value):
    payload = msgpack.packb(value)
    for decode in (parse_request, parse_error_reply):
        with contextlib.suppress(WireError):
            decode(payload, 1 << 20)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_request_decoder_on_arbitrary_bytes(payload):
    with contextlib.suppress(WireError):
        parse_request(payload, 1 << 20)


def test_error_reply_is_cut_to_bounded_strings():
    error = parse_error_reply(msgpack.packb({"code": "c" * 500, "message": "m" * 10**5}), 1 << 20)
    assert len(error.code) == 64 and len(error.message) == 1024
