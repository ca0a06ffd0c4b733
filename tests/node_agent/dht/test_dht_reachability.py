"""Pure reachability logic: address voting, dial-back outcomes, the signed observed-address field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.dht.endpoints import wire_address
from node_agent.dht.messages import seal, unseal, verify_sealed
from node_agent.dht.reachability import AddressVotes, Reachability, dial_back_outcome
from node_agent.identity import Identity
from node_agent.wire import WireError, pack, pack_message
from tests.node_agent.msgpack_strategies import msgpack_values

IDENTITY = Identity.generate()
PUBLIC = ("198.51.100.7", 40000)


def test_one_liar_never_moves_the_address_and_a_majority_is_needed():
    votes = AddressVotes(min_votes=3, ttl=100)
    votes.add("10.0.1.0/24", PUBLIC, 0)
    votes.add("10.0.2.0/24", PUBLIC, 0)
    assert votes.winner(1) is None  # two agree: not enough
    votes.add("10.0.3.0/24", ("203.0.113.9", 1), 0)
    votes.add("10.0.3.0/24", ("203.0.113.9", 2), 0)  # the same reporter again replaces its vote
    assert votes.winner(1) is None
    votes.add("10.0.4.0/24", PUBLIC, 0)
    assert votes.winner(1) == PUBLIC
    for i in range(3):  # as many disagreeing reporters: no strict majority any more
        votes.add(f"10.1.{i}.0/24", ("203.0.113.9", 1), 50)
    assert votes.winner(60) is None
    assert votes.winner(120) == ("203.0.113.9", 1)  # the old votes expired


def test_votes_are_bounded():
    votes = AddressVotes(capacity=8)
    for i in range(100):
        votes.add(i, PUBLIC, 0)
    assert len(votes) == 8


@pytest.mark.parametrize(
    ("sent", "arrived", "outcome"),
    [
        ([True, True, False], True, Reachability.REACHABLE),
        ([False], True, Reachability.REACHABLE),
        ([True, True, True], False, Reachability.UNREACHABLE),
        ([True, False, False], False, Reachability.UNKNOWN),  # one lost probe proves nothing
        ([], False, Reachability.UNKNOWN),
    ],
)
def test_dial_back_outcome(sent, arrived, outcome):
    assert dial_back_outcome(sent, arrived) is outcome


def test_observed_address_is_signed_in_responses():
    data = seal(IDENTITY, "ok", b"r" * 8, 1.0, b"", False, {}, 8192, observed=PUBLIC)
    assert verify_sealed(unseal(data, 8192)).observed == PUBLIC
    assert (
        verify_sealed(unseal(seal(IDENTITY, "ok", b"r" * 8, 1.0, b"", False, {}, 8192), 8192)).observed
        is None
    )


@settings(max_examples=300, deadline=None)
@given(observed=msgpack_values)
def test_hostile_observed_field_is_a_clear_wire_error(observed):
    body = {
        "id": b"r" * 8,
        "ts": 1.0,
        "pk": IDENTITY.public_key_bytes,
        "to": b"",
        "c": False,
        "p": {},
        "o": observed,
    }
    inner = pack_message("ok", body, 8192)
    data = pack([inner, IDENTITY.sign(inner)])
    try:
        envelope = verify_sealed(unseal(data, 8192))
    except WireError:
        return
    assert envelope.observed == wire_address(observed)


@given(raw=msgpack_values)
def test_wire_address_accepts_only_unicast_literals(raw):
    try:
        host, port = wire_address(raw)
    except ValueError:
        return
    assert isinstance(host, str) and 0 < port < 65536


@given(
    st.sampled_from(
        [["0.0.0.0", 1], ["224.0.0.1", 5], ["255.255.255.255", 5], ["example.org", 5], ["1.2.3.4", 0]]
    )
)
def test_wire_address_refuses_non_unicast(raw):
    with pytest.raises(ValueError):
        wire_address(raw)
