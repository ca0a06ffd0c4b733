"""SACK coalescing on a real loopback peer connection: all data arrives, with far fewer packets back."""

from __future__ import annotations

import asyncio
import os

from node_agent.rtc.sctp_tuning import install_sack_coalescing


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
