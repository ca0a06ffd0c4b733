"""Frames of the expert RPC protocol over a WebRTC data channel (sans-IO: no channel, no clock).

An SCTP user message must stay under the peer's `max-message-size` (RFC 8841 section 6; aiortc announces
256 KiB), so a message is cut into chunks, each sent as one frame::

    version u8 | kind u8 | flags u8 | reserved u8 | call id u32 (big-endian) | chunk bytes

`kind` is REQUEST, RESPONSE, ERROR or CANCEL; flag FIN marks the last chunk of a message. The channel is
ordered and reliable, so chunks of one message arrive in order; chunks of different calls may interleave.
Call ids are chosen by the requester, so a REQUEST/CANCEL id and a RESPONSE/ERROR id live in different
spaces. The reassembled payload is msgpack (`node_agent.wire`), decoded by the caller.

Memory: unfinished messages are bounded in count (`max_partial`) and in bytes, per connection
(`max_partial_bytes`) and in shared budgets (`ByteBudget`: per peer, whole node). A peer that goes over a
byte bound gets a *fatal* FrameError: its connection must be dropped, since the only other choice, forgetting
some of its chunks, would corrupt the ordered stream it believes it sent.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

FRAME_VERSION = 1
_HEADER = struct.Struct("!BBBBI")
HEADER_SIZE = _HEADER.size
FLAG_FIN = 0x01
MAX_CALL_ID = 2**32 - 1
DEFAULT_CHUNK_SIZE = 64 * 1024
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
DEFAULT_MAX_PARTIAL = 64
DEFAULT_MAX_PARTIAL_BYTES = DEFAULT_MAX_PAYLOAD


class FrameKind(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3
    CANCEL = 4

    @property
    def from_requester(self) -> bool:
        return self in (FrameKind.REQUEST, FrameKind.CANCEL)


class FrameError(ValueError):
    """A malformed or oversized frame; `call_id` is set when the frame named one (to answer with ERROR)."""

    def __init__(
        self, reason: str, call_id: int | None = None, kind: FrameKind | None = None, *, fatal: bool = False
    ) -> None:
        super().__init__(reason)
        self.call_id = call_id
        self.kind = kind
        #: The connection must be dropped (a memory bound was exceeded; its partial messages are gone).
        self.fatal = fatal


class ByteBudget:
    """Bytes that several reassemblers may hold together (one peer's connections, or a whole node).

    `reclaim(size, holder)`, if given, is asked to free room when a take would not fit, e.g. by dropping
    the connection that holds the most (so that a few greedy peers cannot starve everyone else); it must
    never drop `holder`, the reassembler asking.
    """

    def __init__(
        self, limit: int, name: str = "shared", reclaim: Callable[[int, Reassembler], None] | None = None
    ) -> None:
        self.limit = limit
        self.name = name
        self.reclaim = reclaim
        self.used = 0

    def take(self, size: int, holder: Reassembler | None = None) -> bool:
        if self.used + size > self.limit and self.reclaim is not None and holder is not None:
            self.reclaim(size, holder)
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass(frozen=True, slots=True)
class Message:
    kind: FrameKind
    call_id: int
    payload: bytes


def encode_frames(
    kind: FrameKind, call_id: int, payload: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """Cut one message into frames of at most `chunk_size` bytes (header included)."""
    if not 0 <= call_id <= MAX_CALL_ID:
        raise ValueError(f"call id {call_id} out of range")
    body = chunk_size - HEADER_SIZE
    if body <= 0:
        raise ValueError(f"chunk size {chunk_size} too small")
    view = memoryview(payload)
    offset = 0
    while True:
        piece = view[offset : offset + body]
        offset += len(piece)
        last = offset >= len(view)
        yield _HEADER.pack(FRAME_VERSION, kind, FLAG_FIN if last else 0, 0, call_id) + piece
        if last:
            return


@dataclass(slots=True)
class _Partial:
    kind: FrameKind
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


class Reassembler:
    """Feed frames in arrival order; get whole messages back. Enforces frame, payload and partial limits.

    On a bad frame `feed` raises FrameError and forgets any partial message of that call, so one bad call
    never poisons the others or grows memory. Over a byte bound (`max_partial_bytes` or a shared budget) it
    forgets every partial message and raises a fatal FrameError.
    """

    def __init__(
        self,
        max_frame_size: int = 256 * 1024,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_partial: int = DEFAULT_MAX_PARTIAL,
        max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES,
        budgets: tuple[ByteBudget, ...] = (),
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_payload = max_payload
        self.max_partial = max_partial
        self.max_partial_bytes = max_partial_bytes
        self.budgets = budgets
        self._partial: dict[tuple[bool, int], _Partial] = {}
        self._held = 0

    @property
    def pending(self) -> int:
        return len(self._partial)

    @property
    def held_bytes(self) -> int:
        """Bytes of unfinished messages held now (charged to every budget too)."""
        return self._held

    def discard(self, from_requester: bool, call_id: int) -> None:
        self._drop(self._partial.pop((from_requester, call_id), None))

    def clear(self) -> None:
        """Forget every unfinished message and return its bytes to the budgets (connection closed)."""
        for partial in self._partial.values():
            self._drop(partial)
        self._partial.clear()

    def _drop(self, partial: _Partial | None) -> None:
        if partial is None:
            return
        self._held -= partial.size
        for budget in self.budgets:
            budget.give(partial.size)

    def _charge(self, size: int, call_id: int, kind: FrameKind) -> None:
        """Account `size` more held bytes, or forget everything and raise a fatal FrameError."""
        over = None
        if self._held + size > self.max_partial_bytes:
            over = f"unfinished messages exceed {self.max_partial_bytes} bytes on this connection"
        else:
            for index, budget in enumerate(self.budgets):
                if not budget.take(size, self):
                    for taken in self.budgets[:index]:
                        taken.give(size)
                    over = f"unfinished messages exceed the {budget.name} budget of {budget.limit} bytes"
                    break
        if over is not None:
            self.clear()
            raise FrameError(over, call_id, kind, fatal=True)
        self._held += size

    def feed(self, frame: bytes) -> Message | None:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise FrameError("text frame on a binary protocol")
        if len(frame) < HEADER_SIZE:
            raise FrameError(f"frame of {len(frame)} bytes is shorter than the header")
        version, raw_kind, flags, _reserved, call_id = _HEADER.unpack_from(frame)
        try:
            kind = FrameKind(raw_kind)
        except ValueError:
            raise FrameError(f"unknown frame kind {raw_kind}", call_id) from None
        key = (kind.from_requester, call_id)
        if version != FRAME_VERSION:
            self.discard(*key)
            raise FrameError(f"unsupported frame version {version}", call_id, kind)
        if len(frame) > self.max_frame_size:
            self.discard(*key)
            raise FrameError(f"frame of {len(frame)} bytes exceeds {self.max_frame_size}", call_id, kind)
        chunk = bytes(frame[HEADER_SIZE:])
        partial = self._partial.get(key)
        if partial is None:
            if flags & FLAG_FIN:
                if len(chunk) > self.max_payload:
                    raise FrameError("payload too large", call_id, kind)
                return Message(kind, call_id, chunk)
            if len(self._partial) >= self.max_partial:
                raise FrameError(f"more than {self.max_partial} messages in flight", call_id, kind)
            partial = self._partial[key] = _Partial(kind)
        elif partial.kind != kind:
            self.discard(*key)
            raise FrameError(f"frame kind changed mid-message ({partial.kind.name} -> {kind.name})", call_id)
        if partial.size + len(chunk) > self.max_payload:
            self.discard(*key)
            raise FrameError(f"payload exceeds {self.max_payload} bytes", call_id, kind)
        self._charge(len(chunk), call_id, kind)
        partial.size += len(chunk)
        partial.chunks.append(chunk)
        if not flags & FLAG_FIN:
            return None
        self.discard(*key)
        return Message(kind, call_id, b"".join(partial.chunks))
