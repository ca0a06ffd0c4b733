"""State download: a peer streams the current state (parameters, optimiser moments, step) from another.

Used by a server taking over an expert (the newest live replica is the donor), by replicas catching up,
by `node-agent export` and by collaborative trainers joining late. One protocol, three RPC methods over
an existing `ChannelRPC` (the WebRTC pool's data channel):

* `state.open` `{"key": str, "comp": "none"|"float16"}` -> a manifest
  `{"key", "step", "sid": 16 bytes, "part_bytes", "tensors": [{"name", "dtype", "shape", "comp"}]}`.
  The donor takes a consistent snapshot (its `snapshot` callback runs it between optimiser steps), encodes
  it into one flat buffer (the tensors' raw bytes, in manifest order) and keeps it for the session.
  `float16` halves parameters only: optimiser moments always travel exact, since Adam's second moment
  underflows in half precision and a zero there turns the next update into `m / eps`.
* `state.part` `{"sid", "index"}` -> `{"data": bytes}`: part `index` of the buffer, `part_bytes` long
  (the last one shorter). `part_bytes` keeps every message under 64 KiB, the size browsers and aiortc
  accept; the downloader keeps a small window of parts in flight, which is the back-pressure: a donor
  never has more than `window` parts queued per downloader.
* `state.close` `{"sid"}` -> `{}`: frees the snapshot (sessions also expire after `session_ttl` idle).

Donors cap concurrent sessions (`max_sessions`; more are answered `busy` and the downloader tries the
next donor), so a swarm of newcomers cannot exhaust one donor's memory. Downloaders trust nothing: the
manifest must match the state they expect (`StateSchema`: names, dtypes, shapes; bounded total size), the
step must be the one the donor advertised when it was ranked (a donor lying about its step to be picked
is refused), every part must have its exact length, every value must be finite and within `max_abs`. A
refused or failed donor costs at most one manifest plus the parts received before the failure, under
per-part deadlines derived from the throughput measured so far; then the next donor is tried.

Tensors are reinterpreted from raw bytes after length checks (`node_agent.tensor_codec`); nothing from the
network is unpickled or `torch.load`ed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.rtc.rpc import RPCHandlerError, current_caller
from node_agent.tensor_codec import (
    DTYPES,
    MAX_DIMS,
    Compression,
    TensorCodecError,
    TensorSchema,
    decode_tensor,
    dtype_name,
    encode_tensor,
)

logger = logging.getLogger(__name__)

OPEN = "state.open"
PART = "state.part"
CLOSE = "state.close"
METHODS = frozenset({OPEN, PART, CLOSE})

#: Raw bytes per part: with msgpack's few bytes of framing a part stays under 64 KiB.
PART_BYTES = 60 * 1024
SESSION_ID_BYTES = 16
MAX_KEY_CHARS = 200
MAX_NAME_CHARS = 200
MAX_TENSORS = 4096
MAX_STEP = 2**53
DEFAULT_MAX_STATE_BYTES = 1 << 30
#: Values beyond this are refused: no trained parameter or moment is anywhere near, a poisoned one may be.
DEFAULT_MAX_ABS = 1e6
_WIRE_COMPRESSIONS = {Compression.NONE.value: None, Compression.FLOAT16.value: torch.float16}


class StateDownloadError(Exception):
    """A donor's manifest, part or values were refused, or the download failed (the next donor is tried)."""


# ---- what is sent -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateSnapshot:
    """A consistent copy of one state: `tensors` in a fixed order, `step` the donor's optimiser step."""

    step: int
    tensors: Mapping[str, torch.Tensor]


@dataclass(frozen=True, slots=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    comp: str

    @property
    def nbytes(self) -> int:
        wire = _WIRE_COMPRESSIONS[self.comp] or DTYPES[self.dtype]
        return math.prod(self.shape) * torch.empty((), dtype=wire).element_size()

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "comp": self.comp}


@dataclass(frozen=True, slots=True)
class Manifest:
    key: str
    step: int
    sid: bytes
    part_bytes: int
    entries: tuple[TensorEntry, ...]

    @property
    def total_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries)

    @property
    def parts(self) -> int:
        return max(1, -(-self.total_bytes // self.part_bytes))

    def part_length(self, index: int) -> int:
        if index < self.parts - 1:
            return self.part_bytes
        return self.total_bytes - self.part_bytes * (self.parts - 1)

    def to_wire(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "step": self.step,
            "sid": self.sid,
            "part_bytes": self.part_bytes,
            "tensors": [entry.to_wire() for entry in self.entries],
        }


@dataclass(frozen=True, slots=True)
class StateSchema:
    """What a downloader accepts: for each allowed name the allowed (dtype, shape) pairs; `required` names
    must all be present. An expert's module tensors are required; optimiser moments are optional (a donor
    that never stepped has none) but bounded by the parameters' shapes."""

    allowed: Mapping[str, tuple[TensorSchema, ...]]
    required: frozenset[str]

    def check(self, entries: Sequence[TensorEntry]) -> None:
        seen: set[str] = set()
        for entry in entries:
            options = self.allowed.get(entry.name)
            if options is None:
                raise StateDownloadError(f"unexpected tensor {entry.name[:60]!r}")
            if entry.name in seen:
                raise StateDownloadError(f"tensor {entry.name!r} listed twice")
            seen.add(entry.name)
            if not any(_fits(option, entry) for option in options):
                raise StateDownloadError(
                    f"tensor {entry.name!r}: {entry.dtype} {entry.shape} is not what this state holds"
                )
        missing = self.required - seen
        if missing:
            raise StateDownloadError(f"missing tensors: {sorted(missing)[:5]}")


def _fits(schema: TensorSchema, entry: TensorEntry) -> bool:
    return schema.dtype == entry.dtype and schema.shape == entry.shape


def snapshot_entries(snapshot: StateSnapshot, compress: Callable[[str], bool]) -> list[TensorEntry]:
    """Manifest entries of a snapshot; `compress(name)` says which floating tensors go in float16."""
    entries = []
    for name, tensor in snapshot.tensors.items():
        half = compress(name) and tensor.is_floating_point() and tensor.dtype != torch.float16
        comp = Compression.FLOAT16.value if half else Compression.NONE.value
        entries.append(TensorEntry(name, dtype_name(tensor.dtype), tuple(tensor.shape), comp))
    return entries


def entries_of(tensors: Mapping[str, torch.Tensor]) -> list[TensorEntry]:
    """Manifest entries describing tensors as they are (to check local files against a `StateSchema`)."""
    return snapshot_entries(StateSnapshot(0, tensors), lambda _name: False)


def encode_snapshot(snapshot: StateSnapshot, entries: Sequence[TensorEntry]) -> bytes:
    """The flat buffer the parts are cut from: each tensor's bytes, as its entry says, in order."""
    chunks = []
    for entry in entries:
        encoded = encode_tensor(snapshot.tensors[entry.name], entry.comp)
        chunks.append(encoded["data"])
    return b"".join(chunks)


# ---- parsing what arrives (every function raises StateDownloadError only) -------------------------------


def parse_manifest(
    body: Any, *, key: str, max_bytes: int = DEFAULT_MAX_STATE_BYTES, max_part_bytes: int = PART_BYTES
) -> Manifest:
    """Check a `state.open` reply's structure and bounds (not yet against a schema)."""
    if not isinstance(body, dict):
        raise StateDownloadError("manifest is not a map")
    if body.get("key") != key:
        raise StateDownloadError("manifest is for another key")
    step, sid, part_bytes, tensors = (
        body.get("step"),
        body.get("sid"),
        body.get("part_bytes"),
        body.get("tensors"),
    )
    if type(step) is not int or not 0 <= step <= MAX_STEP:
        raise StateDownloadError("manifest step is not a non-negative integer")
    if not isinstance(sid, bytes) or len(sid) != SESSION_ID_BYTES:
        raise StateDownloadError("manifest lacks a session id")
    if type(part_bytes) is not int or not 1024 <= part_bytes <= max_part_bytes:
        raise StateDownloadError(f"part size must be within [1024, {max_part_bytes}] bytes")
    if not isinstance(tensors, list) or not 0 < len(tensors) <= MAX_TENSORS:
        raise StateDownloadError(f"manifest must list 1 to {MAX_TENSORS} tensors")
    entries = tuple(_parse_entry(item) for item in tensors)
    manifest = Manifest(key, step, sid, part_bytes, entries)
    if manifest.total_bytes > max_bytes:
        raise StateDownloadError(f"state of {manifest.total_bytes} bytes exceeds the {max_bytes}-byte limit")
    return manifest


def _parse_entry(item: Any) -> TensorEntry:
    if not isinstance(item, dict):
        raise StateDownloadError("manifest entry is not a map")
    name, dtype, shape, comp = item.get("name"), item.get("dtype"), item.get("shape"), item.get("comp")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        raise StateDownloadError("manifest entry has a bad name")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise StateDownloadError(f"{name[:60]!r}: unknown dtype")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise StateDownloadError(f"{name[:60]!r}: bad shape")
    if not all(type(size) is int and 0 <= size <= 2**31 for size in shape):
        raise StateDownloadError(f"{name[:60]!r}: bad shape")
    if not isinstance(comp, str) or comp not in _WIRE_COMPRESSIONS:
        raise StateDownloadError(f"{name[:60]!r}: compression must be none or float16")
    if comp != Compression.NONE.value and not DTYPES[dtype].is_floating_point:
        raise StateDownloadError(f"{name[:60]!r}: only floating-point tensors may be compressed")
    return TensorEntry(name, dtype, tuple(shape), comp)


def parse_part(body: Any, manifest: Manifest, index: int) -> bytes:
    """A `state.part` reply: exactly the bytes of part `index`."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), bytes):
        raise StateDownloadError(f"part {index}: reply lacks data")
    data: bytes = body["data"]
    if len(data) != manifest.part_length(index):
        raise StateDownloadError(f"part {index}: {len(data)} bytes, expected {manifest.part_length(index)}")
    return data


def decode_state(
    manifest: Manifest, buffer: bytes | bytearray, max_abs: float = DEFAULT_MAX_ABS
) -> dict[str, torch.Tensor]:
    """Rebuild the tensors from the flat buffer; refuse non-finite values and values beyond `max_abs`."""
    if len(buffer) != manifest.total_bytes:
        raise StateDownloadError(f"state has {len(buffer)} bytes, expected {manifest.total_bytes}")
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    view = memoryview(buffer)
    for entry in manifest.entries:
        data = bytes(view[offset : offset + entry.nbytes])
        offset += entry.nbytes
        header = {"dtype": entry.dtype, "shape": list(entry.shape), "comp": entry.comp, "data": data}
        try:
            tensor = decode_tensor(header, allow_nonfinite=False, what=entry.name)
        except TensorCodecError as exc:
            raise StateDownloadError(str(exc)) from None
        if tensor.is_floating_point() and tensor.numel() and float(tensor.abs().max()) > max_abs:
            raise StateDownloadError(f"{entry.name!r}: values beyond {max_abs:g}")
        tensors[entry.name] = tensor
    return tensors


# ---- the donor's side ----------------------------------------------------------------------------------

SnapshotFn = Callable[[str], Awaitable[StateSnapshot | None]]


@dataclass(slots=True)
class _Session:
    manifest: Manifest
    buffer: bytes
    caller: bytes | None
    last_used: float


@dataclass(slots=True)
class DonorStats:
    opened: int = 0
    completed: int = 0
    refused_busy: int = 0


class StateDonor:
    """Serves `state.*` calls; `snapshot(key)` gives the state to send (None: not held here).

    `compress_name(name)`: which tensors may travel in float16 when the downloader asks for it (by
    default those whose name does not start with `optim.`).
    """

    def __init__(
        self,
        snapshot: SnapshotFn,
        *,
        max_sessions: int = 2,
        session_ttl: float = 30.0,
        part_bytes: int = PART_BYTES,
        compress_name: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.snapshot = snapshot
        self.max_sessions = max_sessions
        self.session_ttl = session_ttl
        self.part_bytes = part_bytes
        self.compress_name = compress_name or (lambda name: not name.startswith("optim."))
        self.clock = clock
        self.sessions: dict[bytes, _Session] = {}
        self.stats = DonorStats()

    async def handle(self, method: str, body: Any) -> Any:
        self._expire()
        if not isinstance(body, dict):
            raise RPCHandlerError("bad_request", "state calls take a map")
        if method == OPEN:
            return await self._open(body)
        session = self._session(body.get("sid"))
        if method == PART:
            index = body.get("index")
            if type(index) is not int or not 0 <= index < session.manifest.parts:
                raise RPCHandlerError("bad_request", "part index out of range")
            session.last_used = self.clock()
            start = index * session.manifest.part_bytes
            if index == session.manifest.parts - 1:
                self.stats.completed += 1
            return {"data": session.buffer[start : start + session.manifest.part_bytes]}
        if method == CLOSE:
            self.sessions.pop(session.manifest.sid, None)
            return {}
        raise RPCHandlerError("unknown_method", f"unknown state method {method[:40]!r}")

    async def _open(self, body: dict[str, Any]) -> dict[str, Any]:
        key, comp = body.get("key"), body.get("comp", Compression.NONE.value)
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS:
            raise RPCHandlerError("bad_request", "state.open needs a key")
        if comp not in _WIRE_COMPRESSIONS:
            raise RPCHandlerError("bad_request", "comp must be none or float16")
        if len(self.sessions) >= self.max_sessions:
            self.stats.refused_busy += 1
            raise RPCHandlerError("busy", f"{self.max_sessions} state downloads in progress")
        snapshot = await self.snapshot(key)
        if snapshot is None:
            raise RPCHandlerError("unknown_state", f"no state for {key[:60]!r} here")
        if len(self.sessions) >= self.max_sessions:  # others opened while the snapshot was taken
            self.stats.refused_busy += 1
            raise RPCHandlerError("busy", f"{self.max_sessions} state downloads in progress")
        half = comp == Compression.FLOAT16.value
        entries = snapshot_entries(snapshot, self.compress_name if half else lambda _name: False)
        sid = secrets.token_bytes(SESSION_ID_BYTES)
        manifest = Manifest(key, snapshot.step, sid, self.part_bytes, tuple(entries))
        buffer = await asyncio.to_thread(encode_snapshot, snapshot, entries)
        self.sessions[sid] = _Session(manifest, buffer, current_caller(), self.clock())
        self.stats.opened += 1
        return manifest.to_wire()

    def _session(self, sid: Any) -> _Session:
        session = self.sessions.get(sid) if isinstance(sid, bytes) else None
        if session is None or session.caller != current_caller():
            raise RPCHandlerError("unknown_session", "no such state download (expired?)")
        return session

    def _expire(self) -> None:
        now = self.clock()
        for sid, session in list(self.sessions.items()):
            if now - session.last_used > self.session_ttl:
                del self.sessions[sid]


# ---- the downloader's side -----------------------------------------------------------------------------

CallFn = Callable[[str, Any, float], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Donor:
    """A peer to download from: `call(method, body, timeout)` reaches it; `step` is what it advertised."""

    name: str
    step: int
    call: CallFn


@dataclass(frozen=True, slots=True)
class DownloadedState:
    key: str
    step: int
    donor: str
    tensors: dict[str, torch.Tensor]
    seconds: float
    bytes: int


@dataclass(slots=True)
class DownloadOptions:
    compression: str = Compression.FLOAT16.value
    max_bytes: int = DEFAULT_MAX_STATE_BYTES
    max_abs: float = DEFAULT_MAX_ABS
    window: int = 4
    #: Deadline for the manifest and for the first part, before any throughput is measured.
    first_timeout: float = 10.0
    #: Later parts may take this many times the mean part time measured so far (never under `min_timeout`).
    slack: float = 8.0
    min_timeout: float = 1.0
    #: A live donor keeps training between being ranked and the download: it may offer up to this many
    #: steps more than it advertised, never fewer.
    max_drift: int = 10_000
    #: A donor advertising more than this many steps above every other donor is tried last (a liar wants
    #: to be picked first; honest replicas stay close, since takeovers inherit the step). None: no check.
    max_lead: int | None = 100_000
    failures: list[str] = field(default_factory=list)


async def download_state(
    donor: Donor, key: str, schema: StateSchema, options: DownloadOptions | None = None
) -> DownloadedState:
    """Download `key` from one donor, checking everything; StateDownloadError on any refusal or failure."""
    options = options or DownloadOptions()
    started = time.monotonic()
    try:
        reply = await donor.call(OPEN, {"key": key, "comp": options.compression}, options.first_timeout)
    except StateDownloadError:
        raise
    except Exception as exc:
        raise StateDownloadError(f"{donor.name}: state.open failed: {exc}") from exc
    try:
        manifest = parse_manifest(reply, key=key, max_bytes=options.max_bytes)
    except StateDownloadError:
        sid = reply.get("sid") if isinstance(reply, dict) else None
        if isinstance(sid, bytes) and len(sid) == SESSION_ID_BYTES:
            await _close_quietly(donor, sid)  # free the donor's slot even though we refuse its offer
        raise
    try:
        if not donor.step <= manifest.step <= donor.step + options.max_drift:
            raise StateDownloadError(
                f"{donor.name} advertised step {donor.step} but offers step {manifest.step}"
            )
        schema.check(manifest.entries)
        buffer = await _fetch_parts(donor, manifest, options)
    finally:
        await _close_quietly(donor, manifest.sid)
    tensors = await asyncio.to_thread(decode_state, manifest, buffer, options.max_abs)
    seconds = time.monotonic() - started
    logger.info(
        "downloaded %s (step %d, %d bytes) from %s in %.2f s",
        key,
        manifest.step,
        manifest.total_bytes,
        donor.name,
        seconds,
    )
    return DownloadedState(key, manifest.step, donor.name, tensors, seconds, manifest.total_bytes)


async def _fetch_parts(donor: Donor, manifest: Manifest, options: DownloadOptions) -> bytearray:
    """All parts, `window` in flight; each part's deadline follows the part time measured so far."""
    buffer = bytearray(manifest.total_bytes)
    next_index = 0
    done = 0
    total_time = 0.0

    def deadline() -> float:
        if done == 0:
            return options.first_timeout
        return max(options.min_timeout, options.slack * total_time / done)

    async def worker() -> None:
        nonlocal next_index, done, total_time
        while next_index < manifest.parts:
            index = next_index
            next_index += 1
            started = time.monotonic()
            try:
                reply = await donor.call(PART, {"sid": manifest.sid, "index": index}, deadline())
            except Exception as exc:
                raise StateDownloadError(f"{donor.name}: part {index} failed: {exc}") from exc
            data = parse_part(reply, manifest, index)
            start = index * manifest.part_bytes
            buffer[start : start + len(data)] = data
            total_time += time.monotonic() - started
            done += 1

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(options.window, manifest.parts))):
                group.create_task(worker())
    except* StateDownloadError as errors:
        raise errors.exceptions[0] from None
    return buffer


async def _close_quietly(donor: Donor, sid: bytes) -> None:
    try:
        await donor.call(CLOSE, {"sid": sid}, 2.0)
    except Exception as exc:  # the session expires on its own
        logger.debug("closing a state download at %s failed: %s", donor.name, exc)


def rank_donors(donors: Sequence[Donor], max_lead: int | None) -> list[Donor]:
    """Newest step first (ties keep their order); donors far ahead of all others go last."""
    ranked = sorted(donors, key=lambda d: -d.step)
    if max_lead is None or len(ranked) < 2:
        return ranked
    suspicious = [
        d for i, d in enumerate(ranked) if d.step - max(o.step for o in ranked[i + 1 :] or [d]) > max_lead
    ]
    return [d for d in ranked if d not in suspicious] + suspicious


async def download_newest(
    donors: Sequence[Donor], key: str, schema: StateSchema, options: DownloadOptions | None = None
) -> DownloadedState | None:
    """Try donors newest step first (ties in the given order); None when every one failed or refused."""
    options = options or DownloadOptions()
    for donor in rank_donors(donors, options.max_lead):
        try:
            return await download_state(donor, key, schema, options)
        except StateDownloadError as exc:
            options.failures.append(f"{donor.name}: {exc}")
            logger.warning("state download of %s from %s refused or failed: %s", key, donor.name, exc)
    return None
