"""live.protocol: client message parsing and the seq splicing every outgoing message goes through."""

from __future__ import annotations

import json
import math

import pytest

from live.protocol import ClientMessageError, dumps, encode_flush, encode_with_seq, parse_client_message


def upsert(node_id: str, at: float) -> dict:
    return {"type": "node.upsert", "at": at, "node": {"node_id": node_id}}


def test_resync_is_the_only_client_message() -> None:
    assert parse_client_message('{"type": "resync"}') == {"type": "resync"}
    assert parse_client_message('{"type": "resync", "reason": "gap"}') == {"type": "resync"}


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "{not json",
        "[]",
        '"resync"',
        '{"type": "node.upsert"}',
        '{"type": "resync", "x": "' + "a" * 2000 + '"}',
        "[" * 1000,  # json.loads alone raises RecursionError here
        '{"type": "resync", "x": ' + "[" * 500 + "]" * 500 + "}",
    ],
)
def test_anything_else_is_a_clear_error(text: str | None) -> None:
    with pytest.raises(ClientMessageError):
        parse_client_message(text)


def test_seq_is_spliced_into_an_encoded_body() -> None:
    body = dumps({"server_time": 1.5, "diffs": [upsert("a", 1.0)]})
    message = json.loads(encode_with_seq("swarm.batch", 7, body))
    assert message == {"type": "swarm.batch", "seq": 7, "server_time": 1.5, "diffs": [upsert("a", 1.0)]}
    assert json.loads(encode_with_seq("swarm.snapshot", 1, "{}")) == {"type": "swarm.snapshot", "seq": 1}
    with pytest.raises(ValueError):
        encode_with_seq("swarm.batch", 1, "[1]")


def test_a_lone_diff_goes_out_on_its_own_and_several_as_a_batch() -> None:
    kind, body = encode_flush([upsert("a", 2.0)], since=1.0, server_time=3.0)
    assert kind == "node.upsert"
    assert json.loads(body) == {"at": 2.0, "node": {"node_id": "a"}, "server_time": 3.0, "since": 1.0}
    kind, body = encode_flush([upsert("a", 2.0), upsert("b", 2.5)], since=1.0, server_time=3.0)
    assert kind == "swarm.batch"
    decoded = json.loads(body)
    assert decoded["since"] == 1.0 and [d["node"]["node_id"] for d in decoded["diffs"]] == ["a", "b"]


def test_non_finite_numbers_never_reach_a_browser() -> None:
    with pytest.raises(ValueError):
        dumps({"loss": math.nan})
