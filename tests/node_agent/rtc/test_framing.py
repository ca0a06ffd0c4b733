from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.rtc.framing import (
    FLAG_FIN,
    HEADER_SIZE,
    ByteBudget,
    FrameError,
    FrameKind,
    Reassembler,
    encode_frames,
)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=5000), st.integers(HEADER_SIZE + 1, 700), st.integers(0, 2**32 - 1))
def test_chunked_round_trip(payload, chunk_size, call_id):
    frames = list(encode_frames(FrameKind.REQUEST, call_id, payload, chunk_size))
    assert all(len(f) <= chunk_size for f in frames)
    reassembler = Reassembler()
    results = [reassembler.feed(f) for f in frames]
    assert results[:-1] == [None] * (len(frames) - 1)
    message = results[-1]
    assert (message.kind, message.call_id, message.payload) == (FrameKind.REQUEST, call_id, payload)
    assert reassembler.pending == 0


def test_interleaved_calls_and_id_spaces():
    reassembler = Reassembler()
    a = list(encode_frames(FrameKind.REQUEST, 7, b"a" * 100, 40))
    b = list(encode_frames(FrameKind.RESPONSE, 7, b"b" * 100, 40))  # same id, other direction's space
    out = [reassembler.feed(f) for pair in zip(a, b, strict=True) for f in pair]
    done = [m for m in out if m is not None]
    assert {(m.kind, m.payload) for m in done} == {
        (FrameKind.REQUEST, b"a" * 100),
        (FrameKind.RESPONSE, b"b" * 100),
    }


@pytest.mark.parametrize(
    "frame, match",
    [
        (b"\x01\x01", "shorter than the header"),
        (struct.pack("!BBBBI", 9, 1, 1, 0, 5) + b"x", "version"),
        (struct.pack("!BBBBI", 1, 77, 1, 0, 5), "unknown frame kind"),
        ("text", "text frame"),
    ],
)
def test_malformed_frames(frame, match):
    with pytest.raises(FrameError, match=match):
        Reassembler().feed(frame)


def test_limits_are_enforced_and_partial_state_dropped():
    reassembler = Reassembler(max_frame_size=100, max_payload=150, max_partial=2)
    with pytest.raises(FrameError, match="exceeds"):
        reassembler.feed(next(encode_frames(FrameKind.REQUEST, 1, b"x" * 200, 200)))
    frames = list(encode_frames(FrameKind.REQUEST, 2, b"x" * 300, 100))
    reassembler.feed(frames[0])
    with pytest.raises(FrameError, match="payload exceeds") as info:
        for frame in frames[1:]:
            reassembler.feed(frame)
    assert info.value.call_id == 2 and reassembler.pending == 0
    for call_id in (3, 4):
        reassembler.feed(next(encode_frames(FrameKind.REQUEST, call_id, b"y" * 150, 100)))
    with pytest.raises(FrameError, match="in flight"):
        reassembler.feed(next(encode_frames(FrameKind.REQUEST, 5, b"y" * 150, 100)))


def _unfinished(call_id: int, size: int) -> bytes:
    """The first frame of a message that never gets its FIN."""
    return struct.pack("!BBBBI", 1, FrameKind.REQUEST, 0, 0, call_id) + b"z" * size


def test_unfinished_bytes_bounded_per_connection_and_in_shared_budgets():
    peer = ByteBudget(2500, "peer")
    first = Reassembler(max_partial_bytes=1500, budgets=(peer,))
    for call_id in range(3):
        first.feed(_unfinished(call_id, 500))
    assert first.held_bytes == 1500 and peer.used == 1500
    with pytest.raises(FrameError, match="on this connection") as info:
        first.feed(_unfinished(9, 1))
    assert info.value.fatal and first.pending == 0 and first.held_bytes == 0 and peer.used == 0

    second, third = (Reassembler(max_partial_bytes=1500, budgets=(peer,)) for _ in range(2))
    second.feed(_unfinished(1, 1400))
    third.feed(_unfinished(1, 1000))
    with pytest.raises(FrameError, match="peer budget") as info:
        third.feed(_unfinished(2, 200))  # 1400 + 1200 > 2500: the connection that asks for more goes
    assert info.value.fatal and peer.used == 1400
    message = second.feed(struct.pack("!BBBBI", 1, FrameKind.REQUEST, FLAG_FIN, 0, 1) + b"!")
    assert message.payload == b"z" * 1400 + b"!" and peer.used == 0
    second.feed(_unfinished(3, 100))
    second.clear()  # connection closed
    assert peer.used == 0 and second.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 1), st.binary(max_size=90))))
def test_arbitrary_frames_raise_only_frame_errors_and_keep_accounts(frames):
    budget = ByteBudget(400)
    reassembler = Reassembler(max_frame_size=100, max_payload=300, max_partial=3, budgets=(budget,))
    for kind, call_id, fin, body in frames:
        with contextlib.suppress(FrameError):
            reassembler.feed(struct.pack("!BBBBI", 1, kind, fin, 0, call_id) + body)
        assert reassembler.held_bytes == budget.used <= 300 * 3
    reassembler.clear()
    assert budget.used == 0


def test_a_full_shared_budget_can_reclaim_from_the_greediest_holder():
    greedy, modest = Reassembler(), Reassembler()

    def reclaim(size: int, holder: Reassembler) -> None:
        if greedy is not holder and greedy.held_bytes > holder.held_bytes + size:
            greedy.clear()  # what the pool does: drop the connection holding the most

    node = ByteBudget(1000, "node", reclaim)
    greedy.budgets = modest.budgets = (node,)
    greedy.feed(_unfinished(1, 900))
    modest.feed(_unfinished(1, 50))
    modest.feed(_unfinished(2, 100))  # does not fit: the greedy holder's bytes are reclaimed
    assert greedy.held_bytes == 0 and modest.held_bytes == 150 and node.used == 150
    with pytest.raises(FrameError, match="node budget") as info:
        modest.feed(_unfinished(3, 900))  # nobody holds more than the asker: the asker goes
    assert info.value.fatal and node.used == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40) | st.text(max_size=5), max_size=8))
def test_arbitrary_bytes_raise_only_frame_errors(frames):
    reassembler = Reassembler(max_frame_size=32, max_payload=64, max_partial=2, max_partial_bytes=80)
    for frame in frames:
        with contextlib.suppress(FrameError):
            reassembler.feed(frame)
        assert reassembler.held_bytes <= 80
