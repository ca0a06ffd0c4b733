"""Pure relay logic: reservation caps, expiry, windows, and what may cross a relay (hostile input)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.dht.messages import seal
from node_agent.dht.relaying import RelayBook, RelayCaps, RelayRefused, relayable
from node_agent.identity import Identity
from tests.node_agent.msgpack_strategies import msgpack_values

IDENTITY = Identity.generate()
ADDRESS = ("198.51.100.7", 40000)
CAPS = RelayCaps(max_reservations=2, ttl=45, window=60, max_messages=3, max_bytes=1000, max_message=400)


def _peer(i: int) -> bytes:
    return bytes([i]) * 20


def test_reservations_are_capped_renewed_and_lapse():
    book = RelayBook(CAPS)
    book.reserve(_peer(1), ADDRESS, 0)
    book.reserve(_peer(2), ADDRESS, 0)
    with pytest.raises(RelayRefused, match="full"):
        book.reserve(_peer(3), ADDRESS, 1)
    book.reserve(_peer(1), ("198.51.100.8", 1), 40)  # a renewal moves the address and the expiry
    assert book.admit(_peer(1), 10, 80).address == ("198.51.100.8", 1)
    with pytest.raises(RelayRefused, match="no reservation"):
        book.admit(_peer(2), 10, 50)  # lapsed at 45
    book.reserve(_peer(3), ADDRESS, 50)  # its place is free again
    assert len(book) == 2


def test_messages_bytes_and_size_per_window():
    book = RelayBook(CAPS)
    book.reserve(_peer(1), ADDRESS, 0)
    with pytest.raises(RelayRefused, match="exceeds"):
        book.admit(_peer(1), 401, 0)
    for _ in range(3):
        book.admit(_peer(1), 100, 1)
    with pytest.raises(RelayRefused, match="messages per"):
        book.admit(_peer(1), 100, 2)
    book.reserve(_peer(1), ADDRESS, 30)
    book.reserve(_peer(1), ADDRESS, 60)
    book.admit(_peer(1), 400, 61)  # a new window
    book.charge_answer(_peer(1), 400, 61)
    with pytest.raises(RelayRefused, match="bytes per"):
        book.admit(_peer(1), 300, 62)
    with pytest.raises(RelayRefused, match="byte caps"):
        book.charge_answer(_peer(1), 300, 62)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["reserve", "admit", "answer", "release"]), st.integers(0, 5), st.integers(0, 900)
        ),
        max_size=60,
    )
)
def test_no_sequence_breaks_the_caps(operations):
    book = RelayBook(CAPS)
    now = 0.0
    for op, peer, size in operations:
        now += 7
        try:
            if op == "reserve":
                book.reserve(_peer(peer), ADDRESS, now)
            elif op == "admit":
                book.admit(_peer(peer), size, now)
            elif op == "answer":
                book.charge_answer(_peer(peer), size, now)
            else:
                book.release(_peer(peer))
        except RelayRefused:
            pass
        assert len(book) <= CAPS.max_reservations
        for reservation in book._reservations.values():
            assert reservation.messages <= CAPS.max_messages and reservation.bytes <= CAPS.max_bytes


def test_only_signalling_crosses_a_relay():
    offer = seal(
        IDENTITY, "rpc", b"r" * 8, 1.0, _peer(1), False, {"n": "rtc.offer", "p": {"sdp": "v=0"}}, 8192
    )
    assert relayable(offer, 8192).kind == "rpc"
    forward = seal(IDENTITY, "rpc", b"r" * 8, 1.0, _peer(1), False, {"n": "expert.forward", "p": {}}, 8192)
    with pytest.raises(RelayRefused, match="signalling only"):
        relayable(forward, 8192)
    store = seal(IDENTITY, "store", b"r" * 8, 1.0, _peer(1), False, {"r": []}, 8192)
    with pytest.raises(RelayRefused, match="signalling only"):
        relayable(store, 8192)
    with pytest.raises(RelayRefused, match="exceeds"):
        relayable(offer, 100)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600) | msgpack_values)
def test_hostile_relayed_payloads_are_refused_clearly(data):
    with pytest.raises(RelayRefused):
        relayable(data, 8192)
