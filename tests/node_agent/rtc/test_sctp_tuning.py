"""SACK coalescing on a real loopback peer connection: all data arrives, with far fewer packets back; the
reassembly shortcut delivers exactly what aiortc's own walk delivers, whatever the arrival order."""

from __future__ import annotations

import asyncio
import os

from aiortc.rtcsctptransport import (
    SCTP_DATA_FIRST_FRAG,
    SCTP_DATA_LAST_FRAG,
    SCTP_DATA_UNORDERED,
    DataChunk,
    InboundStream,
)
from hypothesis import given
from hypothesis import strategies as st

from node_agent.rtc import sctp_tuning
from node_agent.rtc.sctp_tuning import install_reassembly_shortcut, install_sack_coalescing


async def _transport_packets(pc) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(sent, received) DTLS packets under the data channel (aiortc's getStats leaves them out)."""
    report = pc.sctp.transport._get_stats()
    stats = [s for s in report.values() if s.type == "transport"]
    return sum(s.packetsSent for s in stats), sum(s.packetsReceived for s in stats)


async def test_bulk_transfer_is_complete_and_acknowledged_in_bursts(loopback_pair):
    assert install_sack_coalescing() and install_sack_coalescing()  # installed by the pool, idempotent
    received: list[bytes] = []
    done = asyncio.Event()
    messages = [os.urandom(60_000) for _ in range(64)]

    @loopback_pair.answer_channel.on("message")
    def on_message(data: bytes) -> None:
        received.append(data)
        if len(received) == len(messages):
            done.set()

    sender = loopback_pair.offer_channel
    writable = asyncio.Event()  # back-pressure as ChannelRPC does it: wait for "bufferedamountlow"
    sender.bufferedAmountLowThreshold = 1 << 19
    sender.on("bufferedamountlow", writable.set)
    sent_before, received_before = await _transport_packets(loopback_pair.answerer)
    for message in messages:
        while sender.bufferedAmount > 1 << 20:
            writable.clear()
            await asyncio.wait_for(writable.wait(), 10)
        sender.send(message)
    async with asyncio.timeout(30):
        await done.wait()
    assert received == messages, "every message arrives intact and in order"
    sent, got = await _transport_packets(loopback_pair.answerer)
    data_packets, ack_packets = got - received_before, sent - sent_before
    assert data_packets > 3000  # ~3.7 MB in ~1.2 KB SCTP packets
    assert ack_packets < 0.7 * data_packets, f"{ack_packets} SACK packets for {data_packets} DATA packets"


# ---- the reassembly shortcut delivers exactly what aiortc's full walk delivers ---------------------------


def _fragments(sizes: list[int], unordered: list[bool]) -> list[DataChunk]:
    """DATA chunks of consecutive messages on one stream (consecutive TSNs, as aiortc's `_send` cuts them)."""
    chunks, tsn, ordered_seq = [], 2**32 - 5, 0  # across the TSN wrap
    for seq, (size, loose) in enumerate(zip(sizes, unordered, strict=True)):
        for i in range(size):
            chunk = DataChunk()
            chunk.flags = (SCTP_DATA_UNORDERED if loose else 0) | (SCTP_DATA_FIRST_FRAG if i == 0 else 0)
            chunk.flags |= SCTP_DATA_LAST_FRAG if i == size - 1 else 0
            chunk.tsn, chunk.stream_id, chunk.protocol = tsn, 0, 51
            chunk.stream_seq = 0 if loose else ordered_seq
            chunk.user_data = bytes([seq % 256, i % 256])
            chunks.append(chunk)
            tsn = (tsn + 1) % 2**32
        ordered_seq += 0 if loose else 1  # unordered messages take no stream sequence number
    return chunks


def _deliveries(chunks: list[DataChunk], add: object, pop: object) -> list[list[tuple[int, int, bytes]]]:
    stream = InboundStream()
    return [(add(stream, chunk), list(pop(stream)))[1] for chunk in chunks]  # type: ignore[operator]


@given(
    st.lists(st.tuples(st.integers(1, 6), st.booleans()), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_the_reassembly_shortcut_delivers_what_the_full_walk_delivers(messages, chance):
    install_reassembly_shortcut()
    chunks = _fragments([size for size, _ in messages], [loose for _, loose in messages])
    arrival = chunks[:]
    if chance.random() < 0.7:  # mostly reordered, as after a loss
        chance.shuffle(arrival)
    shortcut = _deliveries(arrival, InboundStream.add_chunk, InboundStream.pop_messages)
    full = _deliveries(arrival, sctp_tuning.original_add_chunk, sctp_tuning.original_pop_messages)
    assert shortcut == full
    assert sum(len(step) for step in full) == len(messages)  # every message arrives once
