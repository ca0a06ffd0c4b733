"""DHT records of averaging (`avg:` namespace) and their validator; imports no torch (every project node,
bootstrap included, validates these records).

* `avg:<prefix>:<group bits>` -> `Declaration` under the owner's subkey: a peer looking for a group; the
  record's expiration is its matchmaking deadline.
* `avg:progress:<run>` -> `Progress` under the owner's subkey: a collaborative trainer's epoch and the samples
  it accumulated towards the next global step (hivemind's progress tracker).

In a gated project both carry the owner's portal credential; a record without a valid one is refused.
A peer behind a NAT (unreachable from outside) also names its relays (`relays`, the rule of
`node_agent.dht.endpoints.checked_relays`, as in expert announcements): whoever connects to it signals
through them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node_agent.dht.api import (
    DHTNodeAPI,
    DHTRecordRefused,
    DHTValidationError,
    RecordValidator,
    RecordView,
    subkey_owner,
)
from node_agent.dht.endpoints import MAX_RELAYS, checked_relays

NAMESPACE = "avg:"
PROGRESS_PREFIX = "avg:progress:"
MAX_ENDPOINT_CHARS = 256
MAX_CREDENTIAL_CHARS = 4096
MAX_THROUGHPUT = 1e12
MAX_EPOCH = 2**53
MAX_SAMPLES = 2**53


class MessageError(ValueError):
    """A malformed averaging message (from the network: log, refuse, penalise; never crash)."""


def _map(data: Any, what: str) -> dict[Any, Any]:
    if not isinstance(data, dict):
        raise MessageError(f"{what} must be a map")
    return data


def _text(data: dict[Any, Any], key: str, limit: int, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MessageError(f"{what}: '{key}' must be a string of 1..{limit} characters")
    return value


def _credential(data: dict[Any, Any], what: str) -> str | None:
    value = data.get("cred")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CREDENTIAL_CHARS:
        raise MessageError(f"{what}: bad credential")
    return value


def _relays(data: dict[Any, Any], owner: bytes, what: str) -> tuple[str, ...]:
    """The sender's relays (`owner`: who sent or signed them); none when the key is absent."""
    if "relays" not in data:
        return ()
    try:
        return checked_relays(data["relays"], owner)
    except ValueError as exc:
        raise MessageError(f"{what}: {exc}") from None


def _with_relays(wire: dict[str, Any], relays: Sequence[str]) -> dict[str, Any]:
    """`wire` plus our relays; a reachable peer sends none (and old decoders see what they know)."""
    if relays:
        wire["relays"] = list(relays)
    return wire


def own_relays(dht: DHTNodeAPI) -> tuple[str, ...]:
    """Our relays as peers must be told them (empty while we are reachable)."""
    return tuple(dht.relays)[:MAX_RELAYS]


def _number(value: Any, low: float, high: float, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        raise MessageError(f"{what} must be a number in [{low}, {high}]")
    return float(value)


def _bytes(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise MessageError(f"{what} must be {size} bytes")
    return value


@dataclass(frozen=True, slots=True)
class Declaration:
    endpoint: str
    throughput: float
    credential: str | None = None
    taken: bool = False
    relays: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "ep": self.endpoint,
            "tp": self.throughput,
            "cred": self.credential,
            "taken": self.taken,
        }
        return _with_relays(wire, self.relays)

    @classmethod
    def from_wire(cls, data: Any, owner: bytes) -> Declaration:
        """`owner`: the record's signer (its relays must be other nodes)."""
        data = _map(data, "declaration")
        taken = data.get("taken", False)
        if not isinstance(taken, bool):
            raise MessageError("declaration: 'taken' must be a bool")
        return cls(
            _text(data, "ep", MAX_ENDPOINT_CHARS, "declaration"),
            _number(data.get("tp"), 1.0, MAX_THROUGHPUT, "declaration throughput"),
            _credential(data, "declaration"),
            taken,
            _relays(data, owner, "declaration"),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """A collaborative trainer's progress: its epoch (global steps done), samples accumulated since, its
    measured samples per second, when it said so (wall time), where to reach it, its credential."""

    epoch: int
    samples: int
    samples_per_s: float
    time: float
    endpoint: str
    credential: str | None = None
    #: Samples of its local batches: it contributes at least one before it takes a global step.
    batch: int = 0
    relays: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "b": self.batch,
            "epoch": self.epoch,
            "samples": self.samples,
            "sps": self.samples_per_s,
            "t": self.time,
            "ep": self.endpoint,
            "cred": self.credential,
        }
        return _with_relays(wire, self.relays)

    @classmethod
    def from_wire(cls, data: Any, owner: bytes) -> Progress:
        """`owner`: the record's signer (its relays must be other nodes)."""
        data = _map(data, "progress")
        epoch, samples = data.get("epoch"), data.get("samples")
        if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
            raise MessageError("progress: bad epoch")
        if type(samples) is not int or not 0 <= samples <= MAX_SAMPLES:
            raise MessageError("progress: bad samples")
        batch = data.get("b", 0)
        if type(batch) is not int or not 0 <= batch <= MAX_SAMPLES:
            raise MessageError("progress: bad batch size")
        return cls(
            epoch,
            samples,
            _number(data.get("sps"), 0.0, 1e9, "progress samples/s"),
            _number(data.get("t"), 0.0, 1e11, "progress time"),
            _text(data, "ep", MAX_ENDPOINT_CHARS, "progress"),
            _credential(data, "progress"),
            batch,
            _relays(data, owner, "progress"),
        )


class CredentialCheck(Protocol):
    def check(self, token: object, *, owner: bytes, now: float) -> Any: ...


class AveragingRecordsValidator(RecordValidator):
    """`avg:` records: well-formed, under their owner's subkey, small, short-lived, credentialed if gated."""

    max_value_size = 8 * 1024
    max_expiration_ahead = 600.0

    def __init__(self, policy: CredentialCheck | None = None) -> None:
        self.policy = policy

    def validate(self, record: RecordView, now: float) -> None:
        if record.subkey is None or subkey_owner(record.subkey) != record.owner:
            raise DHTValidationError("averaging records live under their owner's subkey")
        try:
            if record.key.startswith(PROGRESS_PREFIX):
                credential = Progress.from_wire(record.value, record.owner).credential
            else:
                credential = Declaration.from_wire(record.value, record.owner).credential
        except MessageError as exc:
            raise DHTValidationError(str(exc)) from None
        if self.policy is not None:
            try:
                self.policy.check(credential, owner=record.owner, now=time.time())
            except ValueError as exc:
                raise DHTRecordRefused(f"averaging record without a valid credential: {exc}") from None
