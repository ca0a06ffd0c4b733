"""The expert server: serves `forward`, `backward` and `info` calls arriving over WebRTC data channels.

Requests are validated against the expert's schema (dtype, shape, finite values) before they reach the
batching runtime, so one bad trainer cannot poison a batch. Experts are announced in the DHT with an
expiry and re-announced periodically; on shutdown the server stops accepting work, answers in-flight
calls, withdraws its announcements and saves checkpoints.

Wire bodies (msgpack):
* `forward`: `{"uid", "inputs": [tensor], "keep": bool, "reply_compression": "none"|"float16"|...}` ->
  `{"outputs": [tensor], "fid": 16 bytes}`. With `keep`, the server keeps the forward's graph
  (`forward_cache`) and returns its id `fid`; no `fid` in the reply means nothing was kept.
* `backward`: `{"uid", "fid": 16 bytes, "grads": [tensor], "reply_compression"}` runs backward on the kept
  graph (only for the peer that made it); if it is gone the error is `unknown_forward` and the client
  re-sends `{"uid", "inputs": [tensor], "grads": [tensor], "reply_compression"}`, which recomputes the
  forward (Learning@home, section 3.2). Both reply `{"grads": [tensor]}` (gradients w.r.t. the inputs).
* `info` replies with `ExpertBackend.info()`.
Errors use the RPC error codes `unknown_expert`, `unknown_forward`, `bad_request`, `bad_tensor`,
`shutting_down`, `internal`.

In a gated project (`node_agent.credentials`) the server carries its portal credential in every
announcement (`credential`, replaced on renewal by `set_credential`) and its DHT node refuses other
nodes' announcements without a valid one (`credentials` checker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from node_agent.dht.api import DHTValidationError
from node_agent.moe.announce import CredentialChecker, announce_experts, register_experts_validator
from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.checkpoints import load_checkpoint, save_checkpoint
from node_agent.moe.server.forward_cache import ForwardCache, ForwardCacheMiss
from node_agent.moe.server.runtime import BatchingRuntime
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.rtc.rpc import RPCHandlerError, current_caller
from node_agent.tensor_codec import Compression, TensorCodecError, decode_tensors, encode_tensors

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerOptions:
    max_batch_size: int = 4096
    max_wait: float = 0.005
    announce_ttl: float = 60.0
    announce_period: float = 20.0
    drain_timeout: float = 10.0
    checkpoint_dir: str | None = None
    checkpoint_period: float = 600.0
    stats_period: float = 30.0
    #: Kept forward graphs (see `forward_cache`); 0 entries disables keeping (every backward recomputes).
    forward_cache_entries: int = 256
    forward_cache_bytes: int = 512 * 2**20
    forward_cache_ttl: float = 30.0
    #: Kept backwards accumulate into one optimiser step until no kept forward of the expert awaits its
    #: backward, `max_batch_size` samples are in, or this many seconds passed; 0 steps on every backward.
    step_delay: float = 0.05


FORWARD_ID_BYTES = 16


class ExpertServer:
    def __init__(self, dht: Any, backends: dict[str, ExpertBackend], options: ServerOptions) -> None:
        self.dht = dht
        self.backends = backends
        self.options = options
        self.runtime = BatchingRuntime(options.max_batch_size, options.max_wait)
        self.pool: ConnectionPool | None = None
        self.accepting = True
        self.requests = 0
        self.failures = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.credential: str | None = None
        #: Touched from the compute thread only (the runtime's executor), never from the event loop.
        self.forward_cache = ForwardCache(
            options.forward_cache_entries, options.forward_cache_bytes, options.forward_cache_ttl
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._step_timers: dict[str, asyncio.TimerHandle] = {}
        self._step_jobs: set[asyncio.Future[Any]] = set()

    @classmethod
    async def create(
        cls,
        dht: Any,
        backends: dict[str, ExpertBackend],
        options: ServerOptions | None = None,
        rtc_options: RTCOptions | None = None,
        announce: bool = True,
        credential: str | None = None,
        credentials: CredentialChecker | None = None,
    ) -> ExpertServer:
        """Restore checkpoints, start batching, accept connections and announce the experts.

        `credential`: this node's portal credential, carried in announcements (gated projects);
        `credentials`: the checker that makes this node refuse uncredentialed announcements of others.
        """
        server = cls(dht, backends, options or ServerOptions())
        server.credential = credential
        if server.options.checkpoint_dir:
            for backend in backends.values():
                load_checkpoint(server.options.checkpoint_dir, backend)
        for uid, backend in backends.items():
            server.runtime.add_queue(f"{uid}/forward", backend.forward)
            server.runtime.add_queue(f"{uid}/backward", server._backward_fn(backend))
            backend.snapshot_in_use = server.forward_cache.holds_generation
        register_experts_validator(dht, credentials)
        server.pool = await ConnectionPool.create(dht, server.handle, rtc_options)
        if announce:
            await server.announce()
            server._tasks.append(asyncio.create_task(server._reannounce(), name="expert-reannounce"))
        server._tasks.append(asyncio.create_task(server._report(), name="expert-stats"))
        if server.forward_cache.enabled:
            server._tasks.append(asyncio.create_task(server._expire_loop(), name="forward-cache-expiry"))
        if server.options.checkpoint_dir:
            server._tasks.append(asyncio.create_task(server._checkpoint_loop(), name="expert-checkpoints"))
        return server

    @staticmethod
    def _backward_fn(backend: ExpertBackend):  # -> BatchFn
        split = len(backend.input_schema)
        return lambda tensors: backend.backward(tensors[:split], tensors[split:])

    # ---- compute-thread jobs (one at a time, in arrival order: no locks needed) -------------------------

    def _forward_kept(
        self, backend: ExpertBackend, inputs: list[torch.Tensor], fid: bytes, owner: bytes
    ) -> tuple[list[torch.Tensor], bool]:
        """Forward with its graph kept under `fid`; the outputs and whether the cache took the graph."""
        kept = backend.forward_kept(inputs)
        stored = self.forward_cache.put(
            (backend.uid, fid),
            owner,
            kept,
            nbytes=kept.nbytes,
            generation=kept.generation,
            generation_bytes=backend.snapshot_bytes,
            now=time.monotonic(),
            group=backend.uid,
        )
        return [o.detach() for o in kept.outputs], stored

    def _backward_kept(
        self, backend: ExpertBackend, grads: list[torch.Tensor], fid: bytes, owner: bytes
    ) -> tuple[list[torch.Tensor], bool]:
        """Backward on a kept graph; steps now if this was the last awaited one. (input grads, stepped?)"""
        kept = self.forward_cache.take((backend.uid, fid), owner, time.monotonic())
        input_grads = backend.backward_kept(kept, grads)
        due = (
            self.options.step_delay <= 0
            or self.forward_cache.pending(backend.uid) == 0
            or backend.accumulated_samples >= self.options.max_batch_size
        )
        if due:
            self._step(backend)
        return input_grads, due

    def _step(self, backend: ExpertBackend) -> None:
        try:
            backend.step_accumulated()
        except ValueError as exc:
            self.failures += 1
            logger.warning("%s: optimiser step skipped: %s", backend.uid, exc)

    def _step_later(self, backend: ExpertBackend) -> None:
        """Bound how long accumulated gradients wait for backwards that may never come."""
        if backend.uid in self._step_timers:
            return

        def fire() -> None:
            self._step_timers.pop(backend.uid, None)
            job = asyncio.ensure_future(self.runtime.call(self._step, backend))
            self._step_jobs.add(job)
            job.add_done_callback(self._step_jobs.discard)

        loop = asyncio.get_running_loop()
        self._step_timers[backend.uid] = loop.call_later(self.options.step_delay, fire)

    def set_credential(self, credential: str | None) -> None:
        """Use a renewed credential from the next announcement on (well before the old one expires)."""
        self.credential = credential

    async def announce(self, withdrawn: bool = False) -> None:
        results = await announce_experts(
            self.dht,
            list(self.backends),
            self.options.announce_ttl,
            withdrawn,
            credential=None if withdrawn else self.credential,
        )
        stored = sum(results)
        if stored < len(results):
            logger.warning("announcement stored %d of %d DHT items", stored, len(results))

    # ---- request handling ----------------------------------------------------------------------------

    async def handle(self, method: str, body: Any) -> Any:
        if not self.accepting:
            raise RPCHandlerError("shutting_down", "server is shutting down")
        if not isinstance(body, dict):
            raise RPCHandlerError("bad_request", "request body must be a map")
        uid = body.get("uid")
        backend = self.backends.get(uid) if isinstance(uid, str) else None
        if backend is None:
            raise RPCHandlerError("unknown_expert", f"expert {uid!r} is not served here")
        self.requests += 1
        try:
            if method == "info":
                return backend.info()
            compression = self._reply_compression(body)
            if method == "forward":
                return await self._forward(uid, backend, body, compression)
            if method == "backward":
                return await self._backward(uid, backend, body, compression)
        except RPCHandlerError:
            self.failures += 1
            raise
        except ForwardCacheMiss as exc:
            if exc.reason == "foreign":
                self.failures += 1
                logger.warning("refused a forward id from %s: %s", _short(current_caller()), exc)
            raise RPCHandlerError("unknown_forward", str(exc)) from exc
        except ValueError as exc:
            self.failures += 1
            raise RPCHandlerError("bad_tensor", str(exc)) from exc
        raise RPCHandlerError("unknown_method", f"unknown method {method!r}")

    async def _forward(
        self, uid: str, backend: ExpertBackend, body: dict[str, Any], compression: Compression
    ) -> dict[str, Any]:
        inputs = self._decode(body.get("inputs"), backend.input_schema, "inputs")
        self.bytes_in += _payload_bytes(body.get("inputs"))
        if body.get("keep") is True and self.forward_cache.enabled:
            fid = secrets.token_bytes(FORWARD_ID_BYTES)
            outputs, kept = await self.runtime.call(
                self._forward_kept, backend, inputs, fid, current_caller() or b"", samples=len(inputs[0])
            )
            reply = self._reply("outputs", encode_tensors(outputs, compression))
            if kept:
                reply["fid"] = fid
            return reply
        outputs = await self.runtime.submit(f"{uid}/forward", inputs)
        return self._reply("outputs", encode_tensors(outputs, compression))

    async def _backward(
        self, uid: str, backend: ExpertBackend, body: dict[str, Any], compression: Compression
    ) -> dict[str, Any]:
        grads = self._decode(body.get("grads"), backend.output_schema, "grads")
        fid = body.get("fid")
        if fid is not None:
            if not isinstance(fid, bytes) or len(fid) != FORWARD_ID_BYTES:
                raise RPCHandlerError("bad_request", f"fid must be {FORWARD_ID_BYTES} bytes")
            self.bytes_in += _payload_bytes(body.get("grads"))
            grad_inputs, stepped = await self.runtime.call(
                self._backward_kept, backend, grads, fid, current_caller() or b"", samples=len(grads[0])
            )
            if not stepped:
                self._step_later(backend)
            return self._reply("grads", encode_tensors(grad_inputs, compression))
        inputs = self._decode(body.get("inputs"), backend.input_schema, "inputs")
        if any(g.shape[0] != inputs[0].shape[0] for g in grads):
            raise RPCHandlerError("bad_tensor", "grads and inputs have different batch sizes")
        self.bytes_in += _payload_bytes(body.get("inputs")) + _payload_bytes(body.get("grads"))
        grad_inputs = await self.runtime.submit(f"{uid}/backward", [*inputs, *grads])
        return self._reply("grads", encode_tensors(grad_inputs, compression))

    def _reply(self, name: str, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        self.bytes_out += _payload_bytes(encoded)
        return {name: encoded}

    def _reply_compression(self, body: dict[str, Any]) -> Compression:
        try:
            return Compression(body.get("reply_compression", "none"))
        except ValueError:
            raise RPCHandlerError(
                "bad_request", f"unknown compression {body.get('reply_compression')!r}"
            ) from None

    def _decode(self, headers: Any, schemas: list, what: str) -> list[torch.Tensor]:
        try:
            tensors = decode_tensors(headers, schemas, allow_nonfinite=False, what=what)
        except TensorCodecError as exc:
            raise RPCHandlerError("bad_tensor", str(exc)) from exc
        sizes = {t.shape[0] for t in tensors if t.dim()}
        if len(sizes) != 1:
            raise RPCHandlerError("bad_tensor", f"{what}: tensors must share a non-empty batch axis")
        if next(iter(sizes)) > self.options.max_batch_size:
            raise RPCHandlerError("bad_tensor", f"{what}: batch exceeds {self.options.max_batch_size}")
        return tensors

    # ---- background ----------------------------------------------------------------------------------

    async def _reannounce(self) -> None:
        while True:
            await asyncio.sleep(self.options.announce_period)
            try:
                await self.announce()
            except DHTValidationError as exc:  # e.g. our credential expired or was revoked
                logger.error("our own announcement is refused: %s", exc)
            except Exception:
                logger.exception("re-announcing experts failed")

    async def _report(self) -> None:
        last_samples, last_time = 0, time.monotonic()
        while True:
            await asyncio.sleep(self.options.stats_period)
            now = time.monotonic()
            samples = self.runtime.samples
            links = len(self.pool.links) if self.pool else 0
            logger.info(
                "throughput: %.1f samples/s, %d batches, %d requests, %d failures, %d connections, "
                "kept forwards %s",
                (samples - last_samples) / (now - last_time),
                self.runtime.batches,
                self.requests,
                self.failures,
                links,
                self.forward_cache.stats(),
            )
            last_samples, last_time = samples, now

    async def _expire_loop(self) -> None:
        """Free expired graphs even when no request comes (on the compute thread, like every access)."""
        period = max(0.5, self.options.forward_cache_ttl / 4)
        while True:
            await asyncio.sleep(period)
            await self.runtime.call(lambda: self.forward_cache.expire(time.monotonic()))

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.checkpoint_period)
            await self.save_checkpoints()

    async def save_checkpoints(self) -> list[Path]:
        if not self.options.checkpoint_dir:
            return []
        directory = self.options.checkpoint_dir
        # Run on the compute thread so no optimiser step happens while we read the parameters.
        return await self.runtime.call(
            lambda: [save_checkpoint(directory, backend) for backend in self.backends.values()]
        )

    async def shutdown(self) -> None:
        """Stop taking work, answer in-flight calls, withdraw announcements, save, close connections."""
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.pool is not None:
            await self.pool.drain(self.options.drain_timeout)
        try:
            await asyncio.wait_for(self.announce(withdrawn=True), timeout=5.0)
        except Exception as exc:
            logger.warning("could not withdraw announcements: %s", exc)
        for timer in self._step_timers.values():
            timer.cancel()
        self._step_timers.clear()
        for backend in self.backends.values():  # apply what trainers already sent before saving
            await self.runtime.call(self._step, backend)
        await self.save_checkpoints()
        await self.runtime.shutdown()
        self.forward_cache.clear()  # the compute thread has stopped: safe from the loop now
        if self.pool is not None:
            await self.pool.close()


def _short(node_id: bytes | None) -> str:
    return node_id.hex()[:8] if node_id else "?"


def _payload_bytes(headers: Any) -> int:
    """Tensor bytes in encoded headers (telemetry's bandwidth counters; framing overhead not counted)."""
    if not isinstance(headers, list):
        return 0
    return sum(len(h.get("data", b"")) + len(h.get("scales", b"")) for h in headers if isinstance(h, dict))
