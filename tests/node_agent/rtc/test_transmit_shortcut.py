"""The transmit shortcut sends exactly what aiortc's own `_transmit` sends: the same packets, the same window,
marks and counters, after any sequence of messages (reliable or not), SACKs (cumulative, stale, with gap
blocks and duplicates, across TSN wrap-around) and T3 expiries; and a lossy real connection still delivers
everything through it."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import aiortc.rtcsctptransport as sctp_module
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.rtc import transmit_shortcut
from node_agent.rtc.transmit_shortcut import install_transmit_shortcut

TSN_MODULO = 2**32


class RecordingDtls:
    """The layer under SCTP, reduced to what `_send_chunk` uses: it records every packet sent."""

    state = "connected"

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def _register_data_receiver(self, receiver: Any) -> None:
        pass

    async def _send_data(self, data: bytes) -> None:
        self.packets.append(data)


class StockTransport(sctp_module.RTCSctpTransport):
    """aiortc's transport with its own `_transmit` and `_receive_chunk`, as before the shortcut."""


def _stock_methods() -> None:
    StockTransport._transmit = transmit_shortcut.original_transmit  # type: ignore[method-assign]
    StockTransport._receive_chunk = transmit_shortcut.original_receive_chunk  # type: ignore[method-assign]


def _transport(cls: type, first_tsn: int, window: int = 3) -> tuple[Any, RecordingDtls]:
    dtls = RecordingDtls()
    transport = cls(dtls)  # type: ignore[arg-type]
    transport._local_verification_tag = transport._remote_verification_tag = 0x1234
    transport._remote_port = 5000
    transport._remote_partial_reliability = True
    transport._local_tsn = first_tsn
    transport._last_sacked_tsn = transport._advanced_peer_ack_tsn = (first_tsn - 1) % TSN_MODULO
    transport._cwnd = window * sctp_module.USERDATA_MAX_LENGTH  # a window some way into the association
    transport._ssthresh = 1 << 20  # what the peer's INIT would have set (its receive window)
    transport._rto = 3600.0  # T3 expires only when the test says so
    return transport, dtls


def _state(transport: Any) -> tuple:
    chunks = [
        (c.tsn, c._retransmit, c._acked, c._misses, c._sent_count, c._abandoned)
        for c in transport._sent_queue
    ]
    waiting = [(c.tsn, c._abandoned) for c in transport._outbound_queue]
    forward = transport._forward_tsn_chunk
    return (
        transport._cwnd,
        transport._flight_size,
        transport._ssthresh,
        transport._partial_bytes_acked,
        transport._fast_recovery_exit,
        transport._fast_recovery_transmit,
        transport._last_sacked_tsn,
        transport._advanced_peer_ack_tsn,
        None if forward is None else bytes(forward),
        transport._t3_handle is None,
        chunks,
        waiting,
    )


def _receiver_sack(transport: Any, arrived: set[int], data: st.DataObject) -> sctp_module.SackChunk:
    """What a receiver reports after some of the outstanding chunks (drawn) arrived, others lost so far."""
    outstanding = [chunk.tsn for chunk in transport._sent_queue]
    if outstanding:
        arrived.update(data.draw(st.lists(st.sampled_from(outstanding), max_size=6), label="arrived"))
    cumulative = transport._last_sacked_tsn
    while (cumulative + 1) % TSN_MODULO in arrived:
        cumulative = (cumulative + 1) % TSN_MODULO
    above = sorted((tsn - cumulative) % TSN_MODULO for tsn in arrived)
    gaps: list[tuple[int, int]] = []
    for offset in (o for o in above if 1 < o < 2**16):
        if gaps and offset == gaps[-1][1] + 1:
            gaps[-1] = (gaps[-1][0], offset)
        else:
            gaps.append((offset, offset))
    return _cumulative_sack(cumulative, gaps)


def _any_sack(transport: Any, data: st.DataObject) -> sctp_module.SackChunk:
    """A SACK as a peer could send it: cumulative TSN at or behind what is outstanding (stale ones too), any
    gap blocks above it, duplicates."""
    outstanding = len(transport._sent_queue)
    advance = data.draw(st.integers(-3, outstanding), label="cumulative advance")
    ends = sorted(set(data.draw(st.lists(st.integers(2, outstanding + 3), max_size=8), label="gap ends")))
    gaps, start = [], 2
    for end in ends:
        if end >= start:
            gaps.append((start, end))
            start = end + 2
    sack = _cumulative_sack((transport._last_sacked_tsn + advance) % TSN_MODULO, gaps)
    sack.duplicates = data.draw(st.lists(st.integers(0, TSN_MODULO - 1), max_size=3), label="duplicates")
    return sack


def _cumulative_sack(cumulative_tsn: int, gaps: list[tuple[int, int]]) -> sctp_module.SackChunk:
    sack = sctp_module.SackChunk()
    sack.cumulative_tsn, sack.gaps, sack.advertised_rwnd = cumulative_tsn, list(gaps), 1 << 20
    return sack


async def _settle() -> None:
    for _ in range(4):  # T3's expiry schedules a `_transmit` task
        await asyncio.sleep(0)


async def _same_behaviour(
    data: st.DataObject, first_tsn: int, window: int, steps: int, refill: bool = False
) -> None:
    stock, stock_wire = _transport(StockTransport, first_tsn, window)
    fast, fast_wire = _transport(sctp_module.RTCSctpTransport, first_tsn, window)
    fast._colearn_refill = refill
    arrived: set[int] = set()  # TSNs the simulated receiver got
    for step in range(steps):
        actions = st.sampled_from(["send", "send", "sack", "sack", "any sack", "t3"])
        action = data.draw(actions, label=f"step {step}")
        if action == "send":
            size = data.draw(st.integers(1, 12 * sctp_module.USERDATA_MAX_LENGTH), label="message size")
            retransmits = data.draw(st.sampled_from([None, None, 0, 1]), label="max retransmits")
            message = bytes(size)
            for transport in (stock, fast):
                await transport._send(1, 53, message, max_retransmits=retransmits)
        elif action in ("sack", "any sack"):
            sack = _receiver_sack(stock, arrived, data) if action == "sack" else _any_sack(stock, data)
            for transport in (stock, fast):
                await transport._receive_chunk(sack)
        else:
            for transport in (stock, fast):
                if transport._t3_handle is not None:
                    transport._t3_handle.cancel()
                    transport._t3_expired()
        await _settle()
        assert fast_wire.packets == stock_wire.packets, f"different packets after {action}"
        assert _state(fast) == _state(stock), f"different state after {action}"
    for transport in (stock, fast):
        transport._t3_cancel()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    first_tsn=st.one_of(st.integers(0, TSN_MODULO - 1), st.integers(TSN_MODULO - 40, TSN_MODULO - 1)),
    window=st.integers(3, 40),
    steps=st.integers(1, 40),
)
def test_the_shortcut_sends_what_aiortc_sends(
    data: st.DataObject, first_tsn: int, window: int, steps: int
) -> None:
    assert install_transmit_shortcut() and install_transmit_shortcut()  # installed by the pool, idempotent
    _stock_methods()
    asyncio.run(_same_behaviour(data, first_tsn, window, steps))


def test_a_quiet_window_is_not_walked_but_a_gap_report_is():
    install_transmit_shortcut()

    async def scenario() -> None:
        transport, _wire = _transport(sctp_module.RTCSctpTransport, 100)
        transport._cwnd = 6 * sctp_module.USERDATA_MAX_LENGTH
        await transport._send(1, 53, bytes(4 * sctp_module.USERDATA_MAX_LENGTH))  # TSNs 100-103
        await transport._send(1, 53, bytes(2 * sctp_module.USERDATA_MAX_LENGTH))  # TSNs 104-105
        assert len(transport._sent_queue) == 6 and transport._colearn_scan is False
        await transport._receive_chunk(_cumulative_sack(99, []))
        assert transport._colearn_scan is False, "no gap reported: nothing can be marked"
        for last in (2, 3, 4):  # 100 missing while 101, 102, 103 arrive: three strikes, fast retransmit
            await transport._receive_chunk(_cumulative_sack(99, [(2, last)]))
        assert transport._sent_queue[0]._sent_count == 2
        assert transport._colearn_scan is False, "the struck chunk went again: nothing is marked now"
        transport._t3_handle.cancel()
        transport._t3_expired()  # T3 marks all, the window falls to one chunk: one goes again, five wait
        await _settle()
        assert [c._sent_count for c in transport._sent_queue] == [3, 1, 1, 1, 1, 1]
        assert transport._colearn_scan is True, "marked chunks wait: the next _transmit walks again"
        transport._t3_cancel()

    asyncio.run(scenario())


async def test_a_lossy_connection_delivers_everything_through_the_shortcut(loopback_pair):
    """Real peers; 3% of the answerer's incoming datagrams dropped: fast retransmits and T3 do the rest."""
    assert install_transmit_shortcut()
    ice = loopback_pair.answerer.sctp.transport.transport  # the answerer's ICE transport, DTLS reads from it
    receive = ice._recv
    chance = random.Random(7)
    dropped = 0

    async def lossy_recv() -> bytes:
        nonlocal dropped
        while True:
            data = await receive()
            if chance.random() >= 0.03:
                return data
            dropped += 1

    ice._recv = lossy_recv
    messages = [os.urandom(30_000) for _ in range(40)]
    received: list[bytes] = []
    done = asyncio.Event()

    @loopback_pair.answer_channel.on("message")
    def on_message(data: bytes) -> None:
        received.append(data)
        if len(received) == len(messages):
            done.set()

    for message in messages:
        loopback_pair.offer_channel.send(message)
    async with asyncio.timeout(60):
        await done.wait()
    assert received == messages
    assert dropped > 10


def test_a_coalesced_sack_releases_what_it_acknowledged_plus_the_burst():
    """Four packets acknowledged by one SACK stand for four per-packet SACKs: aiortc would send 4 packets for
    it (its burst limit) and keep the flight at 4 forever, below a window it never grows (growth needs a full
    window); the refill sends what left the flight too, so the flight grows towards the window."""
    install_transmit_shortcut()

    async def flights(refill: bool) -> list[int]:
        transport, _wire = _transport(sctp_module.RTCSctpTransport, 1000, window=20)
        transport._colearn_refill = refill
        await transport._send(1, 53, bytes(80 * sctp_module.USERDATA_MAX_LENGTH))
        seen = [len(transport._sent_queue)]
        for _ in range(4):
            cumulative = transport._sent_queue[-1].tsn  # every chunk in flight arrived: one SACK for all
            await transport._receive_chunk(_cumulative_sack(cumulative, []))
            seen.append(len(transport._sent_queue))
            assert transport._flight_size <= transport._cwnd
        transport._t3_cancel()
        return seen

    assert asyncio.run(flights(refill=False)) == [4, 4, 4, 4, 4]
    assert asyncio.run(flights(refill=True)) == [4, 8, 12, 16, 20]


async def test_the_window_opens_across_a_path_with_delay(loopback_pair):
    """Real peers, 10 ms added to every datagram each way: the window grows past aiortc's burst of 4."""
    assert install_transmit_shortcut()
    loop = asyncio.get_running_loop()
    pumps = []
    for peer in (loopback_pair.offerer, loopback_pair.answerer):
        ice = peer.sctp.transport.transport
        receive, delayed = ice._recv, asyncio.Queue()  # type: ignore[var-annotated]

        async def pump(receive: Any = receive, delayed: asyncio.Queue = delayed) -> None:
            while True:
                data = await receive()
                loop.call_later(0.01, delayed.put_nowait, data)

        pumps.append(asyncio.ensure_future(pump()))
        ice._recv = delayed.get
    total, received, done = 3 * 2**20, 0, asyncio.Event()

    @loopback_pair.answer_channel.on("message")
    def on_message(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received >= total:
            done.set()

    for _ in range(total // 2**16):
        loopback_pair.offer_channel.send(bytes(2**16))
    try:
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        for task in pumps:
            task.cancel()
    sender = loopback_pair.offerer.sctp
    assert sender._cwnd > 30 * sctp_module.USERDATA_MAX_LENGTH, "the window grew beyond the burst limit"
