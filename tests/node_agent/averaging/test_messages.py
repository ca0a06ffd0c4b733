"""Every averaging decoder raises only MessageError, whatever the network sends; valid messages round-trip."""

from __future__ import annotations

import contextlib

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
from node_agent.averaging.records import Progress
from node_agent.tensor_codec import encode_tensor
from tests.node_agent.msgpack_strategies import hostile_headers, msgpack_values

DECODERS = [
    Declaration.from_wire,
    Progress.from_wire,
    JoinRequest.from_wire,
    Roster.from_wire,
    ReduceRequest.from_wire,
    parse_join_reply,
    lambda data: parse_reduce_reply(data, 8),
]

near_rosters = st.fixed_dictionaries(
    {},
    optional={
        "id": st.binary(min_size=15, max_size=17) | msgpack_values,
        "members": st.lists(
            st.lists(
                st.binary(min_size=20, max_size=20) | st.text(max_size=5) | st.floats() | msgpack_values,
                max_size=5,
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
@given(st.one_of(msgpack_values, near_rosters, near_reduce, st.fixed_dictionaries({"group": near_rosters})))
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
    assert Declaration.from_wire(declaration.to_wire()) == declaration
    progress = Progress(3, 64, 120.5, 1.7e9, "127.0.0.1:4000", None, 32)
    assert Progress.from_wire(progress.to_wire()) == progress
    join = JoinRequest("avg:x:01", "127.0.0.1:4000", 3e6, None)
    assert JoinRequest.from_wire(join.to_wire()) == join
    roster = Roster(b"g" * 16, (Member(b"a" * 20, "h:1", 1e6, None), Member(b"b" * 20, "h:2", 2e6, "t")), 0.5)
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
        Declaration.from_wire({"ep": "h:1", "tp": float("nan")})
