from __future__ import annotations

import contextlib

import msgpack
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.tensor_codec import (
    BLOCK_SIZE,
    DTYPES,
    Compression,
    TensorCodecError,
    TensorSchema,
    decode_tensor,
    decode_tensors,
    encode_tensor,
    encode_tensors,
)
from tests.node_agent.msgpack_strategies import hostile_headers, msgpack_values

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4).map(tuple)


def _random(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 10).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=gen, dtype=dtype)


def _wire(header: dict) -> dict:
    """Round trip through msgpack, as on the data channel."""
    return msgpack.unpackb(msgpack.packb(header), raw=False)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(DTYPES)), shapes, st.integers(0, 2**16))
def test_uncompressed_round_trip_is_exact_for_every_dtype(name, shape, seed):
    tensor = _random(DTYPES[name], shape, seed)
    decoded = decode_tensor(_wire(encode_tensor(tensor)), TensorSchema.of(tensor))
    assert decoded.dtype == tensor.dtype and decoded.shape == tensor.shape
    assert torch.equal(decoded, tensor)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
    st.sampled_from(list(Compression)),
    shapes,
    st.integers(0, 2**16),
)
def test_compressed_round_trip_within_tolerance(name, compression, shape, seed):
    tensor = _random(DTYPES[name], shape, seed)
    decoded = decode_tensor(_wire(encode_tensor(tensor, compression)))
    assert decoded.dtype == tensor.dtype and decoded.shape == tensor.shape
    if tensor.numel() == 0:
        return
    ref = tensor.float()
    spread = float(ref.max() - ref.min()) + 1e-6
    tol = {
        Compression.NONE: 0.0,
        Compression.FLOAT16: 1e-2,
        Compression.UNIFORM_8BIT: spread / 255,
        Compression.BLOCKWISE_8BIT: float(ref.abs().max()) / 127,
    }[compression]
    tol += 0.01 * float(ref.abs().max())  # destination dtype rounding (bfloat16 / float16)
    assert float((decoded.float() - ref).abs().max()) <= tol + 1e-6


def test_compression_shrinks_payload_and_ignores_integers():
    x = torch.randn(64, 1024)
    sizes = {c: len(encode_tensor(x, c)["data"]) for c in Compression}
    assert sizes[Compression.NONE] == 4 * x.numel()
    assert sizes[Compression.FLOAT16] == 2 * x.numel()
    assert sizes[Compression.UNIFORM_8BIT] == sizes[Compression.BLOCKWISE_8BIT] == x.numel()
    assert len(encode_tensor(x, "blockwise8")["scales"]) == 4 * (x.numel() // BLOCK_SIZE)
    ints = torch.arange(10)
    assert encode_tensor(ints, "uint8")["comp"] == "none"


def test_per_tensor_compression_choice():
    a, b = torch.randn(3, 4), torch.randn(5)
    headers = encode_tensors([a, b], ["none", "float16"])
    assert [h["comp"] for h in headers] == ["none", "float16"]
    out = decode_tensors(headers)
    assert torch.equal(out[0], a) and torch.allclose(out[1], b, atol=1e-2)


def test_schema_rejects_wrong_shape_and_dtype_before_reading_buffer():
    schema = TensorSchema(dtype="float32", shape=(None, 16))
    good = encode_tensor(torch.zeros(3, 16))
    assert decode_tensor(good, schema).shape == (3, 16)
    with pytest.raises(TensorCodecError, match="expected shape"):
        decode_tensor(encode_tensor(torch.zeros(3, 15)), schema)
    with pytest.raises(TensorCodecError, match="expected dtype"):
        decode_tensor(encode_tensor(torch.zeros(3, 16, dtype=torch.float64)), schema)
    with pytest.raises(TensorCodecError, match="expected 1 tensors"):
        decode_tensors([good, good], [schema])


def test_nan_rejected_when_asked():
    header = encode_tensor(torch.tensor([1.0, float("nan")]))
    assert torch.isnan(decode_tensor(header)).any()
    with pytest.raises(TensorCodecError, match="NaN"):
        decode_tensor(header, allow_nonfinite=False)


@pytest.mark.parametrize(
    "header",
    [
        None,
        [],
        {"dtype": "object", "shape": [1], "data": b"x"},
        {"dtype": "float32", "shape": [2], "data": b"\0" * 7},
        {"dtype": "float32", "shape": [-1], "data": b""},
        {"dtype": "float32", "shape": [2**20, 2**20], "data": b""},
        {"dtype": "float32", "shape": "2", "data": b""},
        {"dtype": "float32", "shape": [1] * 9, "data": b"\0" * 4},
        {"dtype": "float32", "shape": [2], "data": "text"},
        {"dtype": "float32", "shape": [2], "comp": "zip", "data": b"\0" * 8},
        {"dtype": "int32", "shape": [2], "comp": "float16", "data": b"\0" * 4},
        {"dtype": "float32", "shape": [2], "comp": "uint8", "data": b"\0\0"},
        {"dtype": "float32", "shape": [2], "comp": "blockwise8", "data": b"\0\0", "scales": b"\0"},
        {"dtype": "bool", "shape": [2], "data": b"\0\7"},
    ],
)
def test_malformed_headers_raise_codec_error(header):
    with pytest.raises(TensorCodecError):
        decode_tensor(header)


def test_schema_dict_round_trip_and_validation():
    schema = TensorSchema(dtype="float16", shape=(None, 8))
    assert TensorSchema.from_dict(_wire(schema.to_dict())) == schema
    for bad in [None, {"dtype": "x", "shape": []}, {"dtype": "float32", "shape": [-1]}]:
        with pytest.raises(TensorCodecError):
            TensorSchema.from_dict(bad)


# ---- hostile input: every decoder raises only its documented error -----------------------------------


@settings(max_examples=400, deadline=None)
@given(hostile_headers, st.booleans())
def test_decode_tensor_raises_only_codec_errors(header, with_schema):
    schema = TensorSchema("float32", (None, 2)) if with_schema else None
    try:
        tensor = decode_tensor(header, schema, allow_nonfinite=False)
    except TensorCodecError:
        return
    assert isinstance(tensor, torch.Tensor)


@settings(max_examples=200, deadline=None)
@given(st.lists(hostile_headers, max_size=3) | msgpack_values)
def test_decode_tensors_raises_only_codec_errors(headers):
    with contextlib.suppress(TensorCodecError):
        decode_tensors(headers, [TensorSchema("float32", (None, 2))])


@settings(max_examples=200, deadline=None)
@given(msgpack_values | st.fixed_dictionaries({"dtype": msgpack_values, "shape": msgpack_values}))
def test_schema_from_dict_raises_only_codec_errors(data):
    with contextlib.suppress(TensorCodecError):
        TensorSchema.from_dict(data)


@pytest.mark.parametrize(
    "header, match",
    [
        ({"dtype": ["float32"], "shape": [1], "data": b"\0" * 4}, "unsupported dtype"),
        ({"dtype": {"a": 1}, "shape": [1], "data": b"\0" * 4}, "unsupported dtype"),
        ({"dtype": "float32", "shape": [1], "comp": ["none"], "data": b"\0" * 4}, "unknown compression"),
        ({"dtype": "float32", "shape": [1], "comp": "blockwise8", "scales": 7, "data": b"\0"}, "scales"),
        ({"dtype": "float32", "shape": [1], "data": [0, 0, 0, 0]}, "must be bytes"),
        (
            {"dtype": "float32", "shape": [1], "comp": "uint8", "low": 1, "scale": 1.0, "data": b"\0"},
            "finite",
        ),
    ],
)
def test_wrong_types_in_headers_are_codec_errors(header, match):
    with pytest.raises(TensorCodecError, match=match):
        decode_tensor(header)
    with pytest.raises(TensorCodecError) as info:
        decode_tensor({**header, "dtype": "x" * 10**6})
    assert len(str(info.value)) < 200  # a hostile value is never echoed whole
