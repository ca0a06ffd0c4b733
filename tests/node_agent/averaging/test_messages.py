"""Every averaging decoder raises only MessageError, whatever the network sends; valid messages round-trip;
relay lists (a NAT'd peer's way in) follow the announcements' rule in every message and record."""

from __future__ import annotations

import contextlib
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.averaging.messages import (
    Declaration,
    JoinRequest,
    Member,
    MessageError,
    ReduceRequest,
    Roster,
    parse_join_reply,
    parse_reduce_reply,
)
from node_agent.averaging.records import PROGRESS_PREFIX, AveragingRecordsValidator, Progress
from node_agent.dht import DHTValidationError, owner_subkey
from node_agent.dht.records import sign_record
from node_agent.dht.validation import ValidatorRegistry
from node_agent.identity import Identity
from node_agent.tensor_codec import encode_tensor
from tests.node_agent.msgpack_strategies import hostile_headers, msgpack_values

OWNER = b"o" * 20
RELAY = "198.51.100.9:4000/" + "ab" * 20
RELAY6 = "[2001:db8::1]:5/" + "cd" * 20

DECODERS = [
    lambda data: Declaration.from_wire(data, OWNER),
    lambda data: Progress.from_wire(data, OWNER),
    lambda data: JoinRequest.from_wire(data, OWNER),
    Roster.from_wire,
    ReduceRequest.from_wire,
    parse_join_reply,
    lambda data: parse_reduce_reply(data, 8),
]

#: Relay lists near the rule: valid relays, the owner as its own relay, junk, too many, duplicates.
near_relays = (
    st.lists(
        st.sampled_from([RELAY, RELAY6, "198.51.100.9:4000/" + OWNER.hex(), "198.51.100.9:4000", "x" * 200])
        | st.text(max_size=110)
        | msgpack_values,
        max_size=5,
    )
    | msgpack_values
)
near_records = st.fixed_dictionaries(
    {
        "ep": st.sampled_from(["127.0.0.1:4000"]) | msgpack_values,
        "tp": st.sampled_from([2e6]) | msgpack_values,
        "relays": near_relays,
    },
    optional={
        "key": st.sampled_from(["avg:x:01"]) | msgpack_values,
        "epoch": st.integers(-1, 3) | msgpack_values,
        "samples": st.integers(-1, 3) | msgpack_values,
        "sps": st.floats() | msgpack_values,
        "t": st.floats() | msgpack_values,
        "cred": st.none() | msgpack_values,
        "taken": st.booleans() | msgpack_values,
    },
)
near_rosters = st.fixed_dictionaries(
    {},
    optional={
        "id": st.binary(min_size=15, max_size=17) | msgpack_values,
        "members": st.lists(
            st.lists(
                st.binary(min_size=20, max_size=20)
                | st.text(max_size=5)
                | st.floats()
                | near_relays
                | msgpack_values,
                max_size=6,
            ),
            max_size=4,
        )
        | msgpack_values,
        "cc": st.floats() | msgpack_values,
    },
)
near_reduce = st.fixed_dictionaries(
    {},
    optional={
        "g": st.binary(min_size=16, max_size=16) | msgpack_values,
        "k": st.integers(-3, 2**25) | msgpack_values,
        "w": st.floats() | msgpack_values,
        "t": hostile_headers | msgpack_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        msgpack_values,
        near_records,
        near_rosters,
        near_reduce,
        st.fixed_dictionaries({"group": near_rosters}),
    )
)
def test_decoders_raise_only_message_error(data):
    for decode in DECODERS:
        with contextlib.suppress(MessageError):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(hostile_headers)
def test_reduce_reply_tensor_checked_against_piece_size(header):
    try:
        values = parse_reduce_reply({"t": header}, 8)
    except MessageError:
        return
    assert values.dtype == torch.float32 and values.shape == (8,)


def test_valid_messages_round_trip():
    declaration = Declaration("127.0.0.1:4000", 2e6, "token")
    assert Declaration.from_wire(declaration.to_wire(), OWNER) == declaration
    assert "relays" not in declaration.to_wire()  # a reachable peer names none
    nat_declaration = Declaration("192.168.1.2:4000", 2e6, None, relays=(RELAY, RELAY6))
    assert Declaration.from_wire(nat_declaration.to_wire(), OWNER) == nat_declaration
    progress = Progress(3, 64, 120.5, 1.7e9, "127.0.0.1:4000", None, 32)
    assert Progress.from_wire(progress.to_wire(), OWNER) == progress
    nat_progress = Progress(3, 64, 120.5, 1.7e9, "127.0.0.1:4000", None, 32, (RELAY,))
    assert Progress.from_wire(nat_progress.to_wire(), OWNER) == nat_progress
    join = JoinRequest("avg:x:01", "127.0.0.1:4000", 3e6, None)
    assert JoinRequest.from_wire(join.to_wire(), OWNER) == join
    nat_join = JoinRequest("avg:x:01", "127.0.0.1:4000", 3e6, None, (RELAY6,))
    assert JoinRequest.from_wire(nat_join.to_wire(), OWNER) == nat_join
    members = (
        Member(b"a" * 20, "h:1", 1e6, None),
        Member(b"b" * 20, "h:2", 2e6, "t"),
        Member(b"c" * 20, "h:3", 2e6, None, (RELAY, RELAY6)),
    )
    roster = Roster(b"g" * 16, members, 0.5)
    assert [len(m) for m in roster.to_wire()["members"]] == [4, 4, 5]
    assert Roster.from_wire(roster.to_wire()) == roster
    assert parse_join_reply({"group": roster.to_wire()}) == roster
    assert parse_join_reply({"refused": "full"}) == "full"
    header = encode_tensor(torch.arange(8.0), "float16")
    request = ReduceRequest(b"g" * 16, 3, 2.0, header)
    assert ReduceRequest.from_wire(request.to_wire()) == request
    assert torch.equal(parse_reduce_reply({"t": header}, 8), torch.arange(8.0))


def test_roster_refuses_duplicates_and_wrong_sizes():
    member = [b"a" * 20, "h:1", 1e6, None]
    with pytest.raises(MessageError):
        Roster.from_wire({"id": b"g" * 16, "members": [member, member], "cc": 1.0})
    with pytest.raises(MessageError):
        parse_reduce_reply({"t": encode_tensor(torch.zeros(9))}, 8)
    with pytest.raises(MessageError):
        Declaration.from_wire({"ep": "h:1", "tp": float("nan")}, OWNER)


#: The announcements' cases (`tests/node_agent/moe/test_announce.py`): one rule for every relay list.
BAD_RELAYS = [
    ([], "1 to 3"),
    ([RELAY] * 2, "distinct"),
    ([f"198.51.100.{i}:1/{i:02x}" + "ab" * 19 for i in range(4)], "1 to 3"),
    (["198.51.100.9:4000"], "distinct node id"),
    (["198.51.100.9:4000/" + OWNER.hex()], "other than the owner"),
    (["198.51.100.9:4000/" + "ab" * 20 + "x" * 80], "at most"),
    ([7], "host:port"),
    ("198.51.100.9:4000", "list"),
]


@pytest.mark.parametrize(("relays", "reason"), BAD_RELAYS)
def test_bad_relay_lists_are_refused_in_every_message(relays: object, reason: str) -> None:
    declaration = {**Declaration("h:1", 1e6).to_wire(), "relays": relays}
    progress = {**Progress(1, 2, 3.0, 4.0, "h:1").to_wire(), "relays": relays}
    join = {**JoinRequest("avg:x:01", "h:1", 1e6).to_wire(), "relays": relays}
    for decode, data in [
        (Declaration.from_wire, declaration),
        (Progress.from_wire, progress),
        (JoinRequest.from_wire, join),
    ]:
        with pytest.raises(MessageError, match=reason):
            decode(data, OWNER)
    roster = {"id": b"g" * 16, "members": [[OWNER, "h:1", 1e6, None, relays]], "cc": 1.0}
    with pytest.raises(MessageError, match=reason):
        Roster.from_wire(roster)


def test_the_records_validator_refuses_bad_relays_and_keeps_good_ones() -> None:
    peer, now = Identity.generate(), time.time()
    checks = ValidatorRegistry(16 * 1024, 24 * 3600)
    checks.register("avg:", AveragingRecordsValidator())
    subkey = owner_subkey("peer", peer.node_id)
    good = Declaration("192.168.1.2:4000", 2e6, relays=(RELAY,)).to_wire()
    view = checks.check(sign_record(peer, "avg:x:.01", subkey, good, now + 30), now)
    assert Declaration.from_wire(view.value, view.owner).relays == (RELAY,)
    own_relay = [f"198.51.100.9:4000/{peer.node_id.hex()}"]
    for key, value in [
        ("avg:x:.01", {**good, "relays": own_relay}),
        (PROGRESS_PREFIX + "run", {**Progress(1, 2, 3.0, 4.0, "h:1").to_wire(), "relays": [RELAY] * 2}),
    ]:
        with pytest.raises(DHTValidationError, match="distinct"):
            checks.check(sign_record(peer, key, subkey, value, now + 30), now)
