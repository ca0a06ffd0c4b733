"""Request/response calls multiplexed over one WebRTC data channel (the adapter around `framing`).

Either side may call the other. Sending respects back-pressure: we stop writing while the channel's
`bufferedAmount` is above a high-water mark and resume on `bufferedamountlow` (W3C WebRTC section 6.2),
so a large payload never piles up unbounded in aiortc's SCTP queue. Every call has a timeout; a timed-out
or cancelled call sends CANCEL so the remote stops working on it. A malformed frame is logged and answered
with an ERROR (when it names a call), never raised into the event loop.

Bounds per connection: unfinished incoming messages (`framing.Reassembler`, bytes per connection and in
shared per-peer / per-node budgets; going over drops the connection) and requests served at once
(`max_serving`; more are answered `busy`). Every decoder here raises only `wire.WireError`.

A handler learns which peer is calling from `current_caller()` (the node id the connection was verified
against, set per served request), so servers can bind per-caller state such as kept forward graphs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from node_agent import wire
from node_agent.rtc.framing import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_PARTIAL_BYTES,
    DEFAULT_MAX_PAYLOAD,
    MAX_CALL_ID,
    ByteBudget,
    FrameError,
    FrameKind,
    Message,
    Reassembler,
    encode_frames,
)

logger = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[Any]]

DEFAULT_MAX_SERVING = 128
#: Error codes and messages from the peer are cut to these lengths before anyone logs or raises them.
MAX_ERROR_CODE = 64
MAX_ERROR_MESSAGE = 1024

_caller: ContextVar[bytes | None] = ContextVar("rpc_caller", default=None)


def current_caller() -> bytes | None:
    """Inside a handler: the node id of the peer whose request is being served (None if unknown)."""
    return _caller.get()


class RPCError(Exception):
    """Base class for failures of a call over a data channel."""


class RPCTimeoutError(RPCError):
    pass


class RPCClosedError(RPCError):
    """The channel closed (peer gone, connection dropped) before the reply arrived."""


class RPCRemoteError(RPCError):
    """The remote answered with an error; `code` is machine-readable ("bad_request", "internal", ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RPCHandlerError(Exception):
    """Raised by a handler to answer with a specific error code and message (no traceback logged)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ChannelRPC:
    """Calls in both directions over one open `RTCDataChannel`; build it once the channel exists."""

    def __init__(
        self,
        channel: Any,
        handler: Handler | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        high_water: int = 1024 * 1024,
        label: str = "",
        peer_id: bytes | None = None,
        max_partial_bytes: int = DEFAULT_MAX_PARTIAL_BYTES,
        budgets: tuple[ByteBudget, ...] = (),
        max_serving: int = DEFAULT_MAX_SERVING,
        on_abort: Callable[[str], None] | None = None,
    ) -> None:
        self.channel = channel
        self.peer_id = peer_id
        self.handler = handler
        self.chunk_size = chunk_size
        self.max_payload = max_payload
        self.high_water = high_water
        self.label = label or getattr(channel, "label", "rpc")
        self.max_serving = max_serving
        self.on_abort = on_abort
        self.last_used = time.monotonic()
        self.served = 0
        self.reassembler = Reassembler(
            max_frame_size=max(chunk_size, 256 * 1024),
            max_payload=max_payload,
            max_partial_bytes=max_partial_bytes,
            budgets=budgets,
        )
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._serving: dict[int, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self.bad_frames = 0
        channel.bufferedAmountLowThreshold = high_water // 2
        channel.on("message", self._on_message)
        channel.on("bufferedamountlow", self._writable.set)
        channel.on("close", self._on_close)

    @property
    def closed(self) -> bool:
        return self._closed or self.channel.readyState in ("closing", "closed")

    @property
    def held_bytes(self) -> int:
        """Bytes of unfinished incoming messages held for this connection."""
        return self.reassembler.held_bytes

    @property
    def in_flight(self) -> int:
        return len(self._pending) + len(self._serving)

    async def call(self, method: str, body: Any, timeout: float) -> Any:
        """Send a request, wait for the response body (RPCTimeoutError, RPCClosedError, RPCRemoteError)."""
        if self.closed:
            raise RPCClosedError(f"channel {self.label} is closed")
        call_id = self._next_id
        self._next_id = self._next_id % MAX_CALL_ID + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.last_used = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._send(FrameKind.REQUEST, call_id, wire.pack({"m": method, "b": body}))
                return await future
        except TimeoutError:
            self._cancel_remote(call_id)
            raise RPCTimeoutError(f"{method} over {self.label} timed out after {timeout:.1f} s") from None
        except asyncio.CancelledError:
            self._cancel_remote(call_id)
            raise
        finally:
            self._pending.pop(call_id, None)
            self.last_used = time.monotonic()

    def close(self) -> None:
        """Fail pending calls, stop serving, close the channel."""
        self._on_close()
        with contextlib.suppress(Exception):
            self.channel.close()

    async def drain(self, timeout: float) -> None:
        """Wait until the requests we are serving are answered (graceful shutdown)."""
        tasks = list(self._serving.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # ---- sending -------------------------------------------------------------------------------------

    async def _send(self, kind: FrameKind, call_id: int, payload: bytes) -> None:
        if len(payload) > self.max_payload:
            raise RPCError(f"payload of {len(payload)} bytes exceeds the {self.max_payload}-byte limit")
        for frame in encode_frames(kind, call_id, payload, self.chunk_size):
            while self.channel.bufferedAmount > self.high_water and not self.closed:
                self._writable.clear()
                await self._writable.wait()
            if self.closed:
                raise RPCClosedError(f"channel {self.label} closed while sending")
            self.channel.send(frame)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_task_error)

    def _cancel_remote(self, call_id: int) -> None:
        if not self.closed:
            self._spawn(self._send_quietly(FrameKind.CANCEL, call_id, b""))

    async def _send_quietly(self, kind: FrameKind, call_id: int, payload: bytes) -> None:
        with contextlib.suppress(RPCError):
            await self._send(kind, call_id, payload)

    def _send_error(self, call_id: int, code: str, message: str) -> None:
        self._spawn(
            self._send_quietly(FrameKind.ERROR, call_id, wire.pack({"code": code, "message": message}))
        )

    # ---- receiving -----------------------------------------------------------------------------------

    def _on_message(self, data: Any) -> None:
        try:
            message = self.reassembler.feed(data)
        except FrameError as exc:
            self.bad_frames += 1
            if exc.fatal:
                self._abort(str(exc))
                return
            logger.warning("bad frame on %s: %s", self.label, exc)
            if exc.call_id is not None and exc.kind is FrameKind.REQUEST:
                self._send_error(exc.call_id, "bad_frame", str(exc))
            elif exc.call_id is not None and exc.kind in (FrameKind.RESPONSE, FrameKind.ERROR):
                self._fail(exc.call_id, RPCRemoteError("bad_frame", str(exc)))
            return
        if message is not None:
            self.last_used = time.monotonic()
            self._dispatch(message)

    def _abort(self, reason: str) -> None:
        """Drop the connection: the peer broke a memory bound (its unfinished messages are already gone)."""
        logger.warning("dropping connection %s: %s", self.label, reason)
        self.close()
        if self.on_abort is not None:
            self.on_abort(reason)

    def _dispatch(self, message: Message) -> None:
        if message.kind is FrameKind.REQUEST:
            if message.call_id in self._serving:
                self._send_error(message.call_id, "bad_request", "duplicate call id")
                return
            if len(self._serving) >= self.max_serving:
                self._send_error(message.call_id, "busy", f"more than {self.max_serving} calls in progress")
                return
            task = asyncio.ensure_future(self._serve(message.call_id, message.payload))
            self._serving[message.call_id] = task
            call_id = message.call_id
            task.add_done_callback(lambda _t: self._serving.pop(call_id, None))
            task.add_done_callback(_log_task_error)
        elif message.kind is FrameKind.CANCEL:
            serving = self._serving.get(message.call_id)
            if serving is not None:
                serving.cancel()
        elif message.kind is FrameKind.RESPONSE:
            future = self._pending.get(message.call_id)
            if future is None or future.done():
                return  # a reply to a call that already timed out
            try:
                future.set_result(wire.unpack(message.payload, max_size=self.max_payload))
            except wire.WireError as exc:
                logger.warning("undecodable response on %s: %s", self.label, exc)
                future.set_exception(RPCRemoteError("bad_frame", f"undecodable response: {exc}"))
        else:
            try:
                error = parse_error_reply(message.payload, self.max_payload)
            except wire.WireError as exc:
                error = RPCRemoteError("bad_frame", f"undecodable error reply: {exc}")
            self._fail(message.call_id, error)

    def _fail(self, call_id: int, error: Exception) -> None:
        future = self._pending.get(call_id)
        if future is not None and not future.done():
            future.set_exception(error)

    async def _serve(self, call_id: int, payload: bytes) -> None:
        _caller.set(self.peer_id)  # this task's own context: visible to the handler only
        try:
            method, body = parse_request(payload, self.max_payload)
            del payload  # the decoded body is all the handler needs; free the raw bytes now
            if self.handler is None:
                raise RPCHandlerError("unknown_method", "this peer serves no calls")
            self.served += 1
            result = await self.handler(method, body)
            reply = wire.pack(result)
        except asyncio.CancelledError:
            return  # cancelled by the caller or by shutdown: nobody waits for an answer
        except wire.WireError as exc:
            logger.warning("bad request on %s: %s", self.label, exc)
            return self._send_error(call_id, "bad_request", str(exc))
        except RPCHandlerError as exc:
            logger.info("request on %s refused: %s: %s", self.label, exc.code, exc.message)
            return self._send_error(call_id, exc.code, exc.message)
        except Exception as exc:
            logger.exception("handler failed on %s", self.label)
            return self._send_error(call_id, "internal", f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(RPCError):
            await self._send(FrameKind.RESPONSE, call_id, reply)

    def _on_close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.reassembler.clear()
        self._writable.set()
        for call_id in list(self._pending):
            self._fail(call_id, RPCClosedError(f"channel {self.label} closed"))
        for task in list(self._serving.values()):
            task.cancel()


def parse_request(payload: bytes, max_size: int) -> tuple[str, Any]:
    """A REQUEST payload -> (method, body); WireError for anything but `{"m": str, "b": any}`."""
    request = wire.unpack(payload, max_size)
    if not isinstance(request, dict) or not isinstance(request.get("m"), str) or "b" not in request:
        raise wire.WireError("request must be a map with a method name 'm' and body 'b'")
    return request["m"], request["b"]


def parse_error_reply(payload: bytes, max_size: int) -> RPCRemoteError:
    """An ERROR payload -> the remote error it describes; WireError unless `{"code": str, "message": str}`."""
    body = wire.unpack(payload, max_size)
    if not isinstance(body, dict):
        raise wire.WireError("error reply is not a map")
    code, message = body.get("code"), body.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise wire.WireError("error reply lacks a string code and message")
    return RPCRemoteError(code[:MAX_ERROR_CODE], message[:MAX_ERROR_MESSAGE])


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("rpc background task failed", exc_info=task.exception())
