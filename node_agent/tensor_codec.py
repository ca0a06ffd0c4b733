"""Tensors on the wire: a small msgpack-able header (dtype, shape, compression) plus one raw buffer.

Never pickle and never `torch.load` network data (docs/architecture.md, 3.1 "Identity and wire"): decoding
only reinterprets bytes as a known dtype after checking that the length matches the declared shape, and
checks the result against the expert's schema before any compute sees it.

Compression (chosen per tensor, floating-point tensors only; others always travel uncompressed):
* `none`: exact.
* `float16`: half precision, 2 bytes per value (values are clamped to the float16 range).
* `uint8`: uniform 8-bit, one (min, scale) pair per tensor, 1 byte per value.
* `blockwise8`: 8-bit absmax quantisation per block of `BLOCK_SIZE` values (one float32 scale per block),
  robust to outliers (as in Dettmers et al. 2022, "8-bit optimizers via block-wise quantization").
Byte order is little-endian, as on every platform the agent supports.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch

MAX_DIMS = 8
MAX_ELEMENTS = 2**28
BLOCK_SIZE = 4096
_FLOAT16_MAX = 65504.0

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class Compression(enum.StrEnum):
    NONE = "none"
    FLOAT16 = "float16"
    UNIFORM_8BIT = "uint8"
    BLOCKWISE_8BIT = "blockwise8"


_COMPRESSIONS = frozenset(c.value for c in Compression)


class TensorCodecError(ValueError):
    """A tensor header or buffer is malformed, or the tensor does not match the expected schema."""


@dataclass(frozen=True, slots=True)
class TensorSchema:
    """Expected dtype and shape of one tensor; `None` in `shape` matches any size (e.g. the batch axis)."""

    dtype: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any) -> TensorSchema:
        if not isinstance(data, dict) or not _is_dtype_name(data.get("dtype")):
            raise TensorCodecError(f"bad tensor schema {_brief(data)}")
        shape = data.get("shape")
        if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
            raise TensorCodecError(f"bad tensor schema shape {_brief(shape)}")
        if not all(s is None or (type(s) is int and s >= 0) for s in shape):
            raise TensorCodecError(f"bad tensor schema shape {_brief(shape)}")
        return cls(dtype=data["dtype"], shape=tuple(shape))

    @classmethod
    def of(cls, tensor: torch.Tensor, batch_axis: bool = True) -> TensorSchema:
        """Schema of an example tensor; with `batch_axis`, its first dimension may vary."""
        shape: list[int | None] = list(tensor.shape)
        if batch_axis and shape:
            shape[0] = None
        return cls(dtype=dtype_name(tensor.dtype), shape=tuple(shape))

    def check(self, tensor: torch.Tensor, what: str = "tensor") -> None:
        self.check_header(dtype_name(tensor.dtype), tuple(tensor.shape), what)

    def check_header(self, dtype: str, shape: tuple[int, ...], what: str = "tensor") -> None:
        """Check a declared dtype and shape, before the buffer is even looked at."""
        if dtype != self.dtype:
            raise TensorCodecError(f"{what}: expected dtype {self.dtype}, got {dtype}")
        if len(shape) != len(self.shape) or any(
            want is not None and want != got for want, got in zip(self.shape, shape, strict=True)
        ):
            expected = tuple("*" if s is None else s for s in self.shape)
            raise TensorCodecError(f"{what}: expected shape {expected}, got {tuple(shape)}")


def _is_dtype_name(name: object) -> TypeGuard[str]:
    """A known dtype name; anything else from the wire (lists, maps: unhashable) is simply not one."""
    return isinstance(name, str) and name in DTYPES


def _brief(value: object, limit: int = 60) -> str:
    """A bounded description of untrusted input for error messages (an attacker's value may be megabytes,
    so nothing large is ever passed to `repr`)."""
    if isinstance(value, str | bytes | bytearray):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if isinstance(value, list | tuple) and len(value) <= MAX_DIMS and all(_is_scalar(v) for v in value):
        return repr(value)[: limit * 2]
    if isinstance(value, list | tuple | dict):
        return f"<{type(value).__name__} of {len(value)}>"
    return repr(value)[:limit]


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, int | float)


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise TensorCodecError(f"unsupported dtype {dtype}") from None


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    return flat.numpy().tobytes()


def encode_tensor(tensor: torch.Tensor, compression: Compression | str = Compression.NONE) -> dict[str, Any]:
    """Header and buffer of one tensor as a msgpack-ready dict (`data` holds the raw bytes)."""
    compression = Compression(compression)
    tensor = tensor.detach().cpu()
    name = dtype_name(tensor.dtype)
    if tensor.dim() > MAX_DIMS or tensor.numel() > MAX_ELEMENTS:
        raise TensorCodecError(f"tensor too large to send: shape {tuple(tensor.shape)}")
    header: dict[str, Any] = {"dtype": name, "shape": list(tensor.shape)}
    if not tensor.is_floating_point() or compression is Compression.NONE or tensor.numel() == 0:
        header.update(comp=Compression.NONE.value, data=_raw_bytes(tensor))
        return header
    values = tensor.reshape(-1).float()
    if compression is Compression.FLOAT16:
        values = values.clamp(-_FLOAT16_MAX, _FLOAT16_MAX)
        header.update(comp=compression.value, data=_raw_bytes(values.half()))
    elif compression is Compression.UNIFORM_8BIT:
        low, high = float(values.min()), float(values.max())
        scale = (high - low) / 255.0 if math.isfinite(high - low) and high > low else 1.0
        codes = ((values - low) / scale).round_().clamp_(0, 255).to(torch.uint8)
        header.update(comp=compression.value, low=low, scale=scale, data=_raw_bytes(codes))
    else:
        padded = torch.nn.functional.pad(values, (0, (-values.numel()) % BLOCK_SIZE)).view(-1, BLOCK_SIZE)
        absmax = padded.abs().amax(dim=1).clamp_(min=1e-30)
        codes = (padded / absmax[:, None] * 127.0).round_().clamp_(-127, 127).to(torch.int8)
        header.update(
            comp=compression.value,
            scales=_raw_bytes(absmax),
            data=_raw_bytes(codes.view(-1)[: values.numel()]),
        )
    return header


def _from_bytes(data: Any, dtype: torch.dtype, count: int, what: str) -> torch.Tensor:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TensorCodecError(f"{what}: buffer must be bytes")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if len(data) != count * itemsize:
        raise TensorCodecError(f"{what}: buffer has {len(data)} bytes, expected {count * itemsize}")
    if count == 0:
        return torch.empty(0, dtype=dtype)
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.frombuffer(data, dtype=np.int16).copy()).view(torch.bfloat16)
    if dtype == torch.bool:
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.max(initial=0) > 1:
            raise TensorCodecError(f"{what}: bool buffer holds values other than 0 and 1")
        return torch.from_numpy(raw.astype(np.bool_))
    return torch.from_numpy(np.frombuffer(data, dtype=torch.empty((), dtype=dtype).numpy().dtype).copy())


def decode_tensor(
    header: Any, schema: TensorSchema | None = None, *, allow_nonfinite: bool = True, what: str = "tensor"
) -> torch.Tensor:
    """Rebuild a tensor from `encode_tensor`'s dict, validating everything before allocating compute.

    Raises only TensorCodecError, whatever structure `header` is (it comes from the network).
    """
    if not isinstance(header, dict):
        raise TensorCodecError(f"{what}: header must be a map")
    name, shape, comp = header.get("dtype"), header.get("shape"), header.get("comp", "none")
    if not _is_dtype_name(name):
        raise TensorCodecError(f"{what}: unsupported dtype {_brief(name)}")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise TensorCodecError(f"{what}: bad shape {_brief(shape)}")
    if not all(type(s) is int and 0 <= s <= MAX_ELEMENTS for s in shape):
        raise TensorCodecError(f"{what}: bad shape {_brief(shape)}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise TensorCodecError(f"{what}: {count} elements exceed the limit of {MAX_ELEMENTS}")
    dtype = DTYPES[name]
    if schema is not None:
        schema.check_header(name, tuple(shape), what)
    if not isinstance(comp, str) or comp not in _COMPRESSIONS:
        raise TensorCodecError(f"{what}: unknown compression {_brief(comp)}")
    comp = Compression(comp)
    if comp is not Compression.NONE and not dtype.is_floating_point:
        raise TensorCodecError(f"{what}: compression {comp} applies to floating-point tensors only")
    data = header.get("data")
    if comp is Compression.NONE:
        flat = _from_bytes(data, dtype, count, what)
    elif comp is Compression.FLOAT16:
        flat = _from_bytes(data, torch.float16, count, what).to(dtype)
    elif comp is Compression.UNIFORM_8BIT:
        low, scale = header.get("low"), header.get("scale")
        if (
            type(low) is not float
            or type(scale) is not float
            or not (math.isfinite(low) and math.isfinite(scale))
        ):
            raise TensorCodecError(f"{what}: uint8 compression needs finite low and scale")
        flat = (_from_bytes(data, torch.uint8, count, what).float() * scale + low).to(dtype)
    else:
        blocks = -(-count // BLOCK_SIZE)
        scales = _from_bytes(header.get("scales"), torch.float32, blocks, what + " scales")
        codes = _from_bytes(data, torch.int8, count, what).float()
        codes = torch.nn.functional.pad(codes, (0, (-count) % BLOCK_SIZE)).view(-1, BLOCK_SIZE)
        flat = (codes * (scales[:, None] / 127.0)).view(-1)[:count].to(dtype)
    tensor = flat.view(shape)
    if not allow_nonfinite and dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
        raise TensorCodecError(f"{what}: contains NaN or infinite values")
    return tensor


def encode_tensors(
    tensors: Sequence[torch.Tensor], compression: Compression | str | Sequence[Compression | str] = "none"
) -> list[dict[str, Any]]:
    """Encode a list of tensors; `compression` is one choice for all or one per tensor."""
    choices = [compression] * len(tensors) if isinstance(compression, str) else list(compression)
    if len(choices) != len(tensors):
        raise TensorCodecError("need one compression choice per tensor")
    return [encode_tensor(t, c) for t, c in zip(tensors, choices, strict=True)]


def decode_tensors(
    headers: Any,
    schemas: Sequence[TensorSchema] | None = None,
    *,
    allow_nonfinite: bool = True,
    what: str = "tensors",
) -> list[torch.Tensor]:
    """Decode a list, checking the count and each tensor against its schema."""
    if not isinstance(headers, list):
        raise TensorCodecError(f"{what}: expected a list of tensors")
    if schemas is not None and len(headers) != len(schemas):
        raise TensorCodecError(f"{what}: expected {len(schemas)} tensors, got {len(headers)}")
    return [
        decode_tensor(
            h, None if schemas is None else schemas[i], allow_nonfinite=allow_nonfinite, what=f"{what}[{i}]"
        )
        for i, h in enumerate(headers)
    ]
