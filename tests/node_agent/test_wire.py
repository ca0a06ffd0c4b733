from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.wire import WIRE_VERSION, DropCounter, WireError, pack, pack_message, unpack, unpack_message


def test_message_round_trip_keeps_kind_body_and_version() -> None:
    data = pack_message("find", {"q": [[b"\x01" * 20, "key"]], "n": 1.5})
    message = unpack_message(data)
    assert message.kind == "find"
    assert message.body == {"q": [[b"\x01" * 20, "key"]], "n": 1.5}
    assert message.version == WIRE_VERSION


@pytest.mark.parametrize(
    "raw,reason",
    [
        (msgpack.packb([1, 2]), "not a map"),
        (msgpack.packb({"v": 99, "t": "x", "b": {}}), "version"),
        (msgpack.packb({"v": WIRE_VERSION, "t": 5, "b": {}}), "type"),
        (msgpack.packb({"v": WIRE_VERSION, "t": "x", "b": []}), "map body"),
        (msgpack.packb(msgpack.ExtType(1, b"x")), "extension"),
        (b"\xc1", "undecodable"),
        (msgpack.packb(1) + b"\x00", "undecodable"),
    ],
)
def test_malformed_messages_raise_wire_error(raw: bytes, reason: str) -> None:
    with pytest.raises(WireError, match=reason):
        unpack_message(raw)


def test_size_limits_apply_both_ways() -> None:
    with pytest.raises(WireError, match="limit"):
        pack_message("x", {"blob": b"0" * 2000}, max_size=1000)
    with pytest.raises(WireError, match="limit"):
        unpack(b"\x00" * 2000, max_size=1000)


def test_unencodable_values_raise_wire_error() -> None:
    with pytest.raises(WireError):
        pack({"x": object()})


def test_drop_counter_counts_by_reason() -> None:
    drops = DropCounter()
    drops.drop("malformed")
    drops.drop("malformed")
    drops.drop("replay")
    assert drops.counts == {"malformed": 2, "replay": 1}
    assert drops.total == 3


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        unpack_message(data)
