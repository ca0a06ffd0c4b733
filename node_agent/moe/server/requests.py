"""The expert server's request schema (pure: no channel, no clock, no compute).

Every request body comes from a peer we may not trust, so it is checked here, whole, before the batching
runtime sees anything: a malformed body of any shape raises only :class:`RequestError`, whose `code` is the
RPC error code the caller gets (`unknown_expert`, `unknown_method`, `bad_request`, `bad_tensor`).
The formats themselves are described in `node_agent.moe.server.server`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from node_agent.credit.receipts import NONCE_BYTES
from node_agent.tensor_codec import Compression, TensorCodecError, TensorSchema, decode_tensors

FORWARD_ID_BYTES = 16
METHODS = ("info", "forward", "backward")
_COMPRESSIONS = frozenset(c.value for c in Compression)


class RequestError(ValueError):
    """A request the server refuses; `code` is the RPC error code answered."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class InfoRequest:
    uid: str


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    uid: str
    inputs: list[torch.Tensor]
    keep: bool
    compression: Compression
    #: Tensor bytes received (telemetry's bandwidth counter).
    payload_bytes: int
    #: The trainer's request nonce: the answer is signed over it (`node_agent.credit.receipts`).
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class BackwardRequest:
    """With `fid`: the gradients for a kept forward. Without: `inputs` to recompute the forward."""

    uid: str
    grads: list[torch.Tensor]
    fid: bytes | None
    inputs: list[torch.Tensor] | None
    compression: Compression
    payload_bytes: int
    nonce: bytes | None = None


Request = InfoRequest | ForwardRequest | BackwardRequest


def parse_request(method: Any, body: Any, backends: Mapping[str, Any], max_batch_size: int) -> Request:
    """Check one request against the expert's schema and decode its tensors; RequestError otherwise."""
    if not isinstance(body, dict):
        raise RequestError("bad_request", "request body must be a map")
    uid = body.get("uid")
    backend = backends.get(uid) if isinstance(uid, str) else None
    if backend is None or not isinstance(uid, str):
        shown = uid[:64] if isinstance(uid, str) else type(uid).__name__
        raise RequestError("unknown_expert", f"expert {shown!r} is not served here")
    if method == "info":
        return InfoRequest(uid)
    if method not in METHODS:
        shown = method[:64] if isinstance(method, str) else type(method).__name__
        raise RequestError("unknown_method", f"unknown method {shown!r}")
    compression = _compression(body.get("reply_compression", "none"))
    nonce = body.get("rn")
    if nonce is not None and (not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES):
        raise RequestError("bad_request", f"rn must be {NONCE_BYTES} bytes")
    if method == "forward":
        keep = body.get("keep", False)
        if not isinstance(keep, bool):
            raise RequestError("bad_request", "keep must be true or false")
        inputs_raw = body.get("inputs")
        inputs = decode_batch(inputs_raw, backend.input_schema, "inputs", max_batch_size)
        return ForwardRequest(uid, inputs, keep, compression, payload_bytes(inputs_raw), nonce)
    grads_raw = body.get("grads")
    grads = decode_batch(grads_raw, backend.output_schema, "grads", max_batch_size)
    fid = body.get("fid")
    if fid is not None:
        if not isinstance(fid, bytes) or len(fid) != FORWARD_ID_BYTES:
            raise RequestError("bad_request", f"fid must be {FORWARD_ID_BYTES} bytes")
        return BackwardRequest(uid, grads, fid, None, compression, payload_bytes(grads_raw), nonce)
    inputs_raw = body.get("inputs")
    inputs = decode_batch(inputs_raw, backend.input_schema, "inputs", max_batch_size)
    if grads[0].shape[0] != inputs[0].shape[0]:
        raise RequestError("bad_tensor", "grads and inputs have different batch sizes")
    received = payload_bytes(inputs_raw) + payload_bytes(grads_raw)
    return BackwardRequest(uid, grads, None, inputs, compression, received, nonce)


def decode_batch(
    headers: Any, schemas: Sequence[TensorSchema], what: str, max_batch_size: int
) -> list[torch.Tensor]:
    """Tensors matching `schemas` (finite values) that share one batch axis of 1..max_batch_size rows."""
    try:
        tensors = decode_tensors(headers, schemas, allow_nonfinite=False, what=what)
    except TensorCodecError as exc:
        raise RequestError("bad_tensor", str(exc)) from None
    if not tensors or any(t.dim() == 0 for t in tensors):
        raise RequestError("bad_tensor", f"{what}: tensors need a batch axis")
    sizes = {t.shape[0] for t in tensors}
    if len(sizes) != 1:
        raise RequestError("bad_tensor", f"{what}: tensors must share one batch axis")
    size = sizes.pop()
    if size == 0:
        raise RequestError("bad_tensor", f"{what}: empty batch")
    if size > max_batch_size:
        raise RequestError("bad_tensor", f"{what}: batch exceeds {max_batch_size}")
    return tensors


def payload_bytes(headers: Any) -> int:
    """Tensor bytes in encoded headers (bandwidth counters); counts only byte strings, whatever the shape."""
    if not isinstance(headers, list):
        return 0
    total = 0
    for header in headers:
        if isinstance(header, dict):
            for name in ("data", "scales"):
                value = header.get(name)
                if isinstance(value, bytes | bytearray | memoryview):
                    total += len(value)
    return total


def _compression(value: Any) -> Compression:
    if not isinstance(value, str) or value not in _COMPRESSIONS:
        shown = value[:32] if isinstance(value, str) else type(value).__name__
        raise RequestError("bad_request", f"unknown compression {shown!r}")
    return Compression(value)
