"""Wire format for structured messages: versioned msgpack, size-limited, never trusting the input.

Every datagram or frame from the network goes through :func:`unpack_message`, which either returns a
well-formed ``Message`` or raises :class:`WireError` with a reason; callers drop, log at debug level and
count (:class:`DropCounter`). Nothing here pickles or evaluates anything that came from the network.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack

logger = logging.getLogger(__name__)

WIRE_VERSION = 1
#: Default largest datagram accepted and sent (loopback and LAN; UDP's hard limit is 65,507 bytes).
DEFAULT_MAX_DATAGRAM = 60 * 1024


class WireError(ValueError):
    """Malformed, oversized or unsupported bytes; the message is dropped, never raised into a loop."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed")


def pack(obj: Any) -> bytes:
    """msgpack with bin/str kept apart; raises WireError for values msgpack cannot encode."""
    try:
        packed: bytes = msgpack.packb(obj, use_bin_type=True)  # msgpack ships no types
        return packed
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot encode value: {exc}") from exc


def unpack(data: bytes, max_size: int = DEFAULT_MAX_DATAGRAM) -> Any:
    """Decode one msgpack object from untrusted bytes (size-checked, no extension types, no trailing data)."""
    if len(data) > max_size:
        raise WireError(f"{len(data)} bytes exceeds the {max_size}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_reject_ext)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, ValueError, TypeError, ...)
        raise WireError(f"undecodable msgpack: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Message:
    """A versioned typed message: ``kind`` says which schema ``body`` follows."""

    kind: str
    body: dict[str, Any]
    version: int = WIRE_VERSION


def pack_message(kind: str, body: dict[str, Any], max_size: int = DEFAULT_MAX_DATAGRAM) -> bytes:
    data = pack({"v": WIRE_VERSION, "t": kind, "b": body})
    if len(data) > max_size:
        raise WireError(f"{kind} message of {len(data)} bytes exceeds the {max_size}-byte limit")
    return data


def unpack_message(data: bytes, max_size: int = DEFAULT_MAX_DATAGRAM) -> Message:
    """Parse a message built by :func:`pack_message`; unknown versions and shapes raise WireError."""
    obj = unpack(data, max_size)
    if not isinstance(obj, dict):
        raise WireError("message is not a map")
    version, kind, body = obj.get("v"), obj.get("t"), obj.get("b")
    if version != WIRE_VERSION:
        raise WireError(f"unsupported wire version {version!r}")
    if not isinstance(kind, str) or not isinstance(body, dict):
        raise WireError("message lacks a string type or a map body")
    return Message(kind=kind, body=body, version=version)


class DropCounter:
    """Counts dropped messages by reason and logs each at debug level (bad input never crashes a node)."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._log = log or logger

    def drop(self, reason: str, detail: object = "", source: object = None) -> None:
        self.counts[reason] += 1
        self._log.debug("dropped message from %s: %s %s", source, reason, detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
