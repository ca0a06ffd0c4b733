"""The expert server's request schema: any body, however hostile, is refused with a clean error code."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.moe.server.requests import (
    BackwardRequest,
    ForwardRequest,
    RequestError,
    parse_request,
    payload_bytes,
)
from node_agent.tensor_codec import encode_tensor
from tests.node_agent.moe.conftest import make_backends
from tests.node_agent.msgpack_strategies import hostile_headers, msgpack_values

BACKENDS = make_backends("ffn.0", hidden_dim=4)
CODES = {"unknown_expert", "unknown_method", "bad_request", "bad_tensor"}

bodies = msgpack_values | st.fixed_dictionaries(
    {"uid": st.just("ffn.0") | msgpack_values},
    optional={
        "inputs": st.lists(hostile_headers, max_size=2) | msgpack_values,
        "grads": st.lists(hostile_headers, max_size=2) | msgpack_values,
        "fid": st.binary(min_size=16, max_size=16) | msgpack_values,
        "keep": msgpack_values,
        "reply_compression": st.sampled_from(["none", "float16"]) | msgpack_values,
    },
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["forward", "backward", "info"]) | msgpack_values, bodies)
def test_any_body_raises_only_request_errors(method, body):
    try:
        parse_request(method, body, BACKENDS, max_batch_size=8)
    except RequestError as exc:
        assert exc.code in CODES


@settings(max_examples=200, deadline=None)
@given(msgpack_values)
def test_payload_accounting_takes_any_structure(headers):
    assert payload_bytes(headers) >= 0


def _good(rows: int) -> dict:
    return encode_tensor(torch.ones(rows, 4))


def test_valid_requests_decode():
    forward = parse_request("forward", {"uid": "ffn.0", "inputs": [_good(3)], "keep": True}, BACKENDS, 8)
    assert isinstance(forward, ForwardRequest) and forward.keep and forward.payload_bytes == 48
    backward = parse_request(
        "backward", {"uid": "ffn.0", "inputs": [_good(3)], "grads": [_good(3)]}, BACKENDS, 8
    )
    assert isinstance(backward, BackwardRequest) and backward.fid is None and backward.payload_bytes == 96


@pytest.mark.parametrize(
    "method, body, code",
    [
        ("forward", {"uid": "ffn.0", "inputs": [_good(0)]}, "bad_tensor"),  # empty batch
        ("forward", {"uid": "ffn.0", "inputs": [_good(9)]}, "bad_tensor"),  # over max_batch_size
        ("forward", {"uid": "ffn.0", "inputs": [{**_good(1), "dtype": ["float32"]}]}, "bad_tensor"),
        ("forward", {"uid": "ffn.0", "inputs": [{**_good(1), "scales": 5}]}, None),  # ignored field
        ("forward", {"uid": "ffn.0", "inputs": [_good(1)], "reply_compression": {"x": 1}}, "bad_request"),
        ("forward", {"uid": "ffn.0", "inputs": [_good(1)], "keep": "yes"}, "bad_request"),
        ("backward", {"uid": "ffn.0", "grads": [_good(2)], "inputs": [_good(3)]}, "bad_tensor"),
        ("backward", {"uid": "ffn.0", "grads": [_good(2)], "fid": [1, 2]}, "bad_request"),
        ("sideways", {"uid": "ffn.0"}, "unknown_method"),
        ("forward", {"uid": ["ffn.0"]}, "unknown_expert"),
    ],
)
def test_malformed_requests_get_their_code(method, body, code):
    if code is None:
        assert parse_request(method, body, BACKENDS, 8).payload_bytes == 16
        return
    with pytest.raises(RequestError) as info:
        parse_request(method, body, BACKENDS, 8)
    assert info.value.code == code
