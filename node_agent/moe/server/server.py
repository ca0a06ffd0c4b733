"""The expert server: serves `forward`, `backward` and `info` calls arriving over WebRTC data channels.

Requests are validated against the expert's schema (dtype, shape, finite values) before they reach the
batching runtime, so one bad trainer cannot poison a batch. Experts are announced in the DHT with an
expiry and re-announced periodically; on shutdown the server stops accepting work, answers in-flight
calls, withdraws its announcements and saves checkpoints.

Wire bodies (msgpack): request `{"uid", "inputs": [tensor], "grads": [tensor] (backward only),
"reply_compression": "none"|"float16"|...}`; reply `{"outputs": [tensor]}` or `{"grads": [tensor]}`;
`info` replies with `ExpertBackend.info()`. Errors use the RPC error codes `unknown_expert`,
`bad_request`, `bad_tensor`, `shutting_down`, `internal`.

In a gated project (`node_agent.credentials`) the server carries its portal credential in every
announcement (`credential`, replaced on renewal by `set_credential`) and its DHT node refuses other
nodes' announcements without a valid one (`credentials` checker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from node_agent.dht.api import DHTValidationError
from node_agent.moe.announce import CredentialChecker, announce_experts, register_experts_validator
from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.checkpoints import load_checkpoint, save_checkpoint
from node_agent.moe.server.runtime import BatchingRuntime
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.rtc.rpc import RPCHandlerError
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
        self._tasks: list[asyncio.Task[None]] = []

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
        register_experts_validator(dht, credentials)
        server.pool = await ConnectionPool.create(dht, server.handle, rtc_options)
        if announce:
            await server.announce()
            server._tasks.append(asyncio.create_task(server._reannounce(), name="expert-reannounce"))
        server._tasks.append(asyncio.create_task(server._report(), name="expert-stats"))
        if server.options.checkpoint_dir:
            server._tasks.append(asyncio.create_task(server._checkpoint_loop(), name="expert-checkpoints"))
        return server

    @staticmethod
    def _backward_fn(backend: ExpertBackend):  # -> BatchFn
        split = len(backend.input_schema)
        return lambda tensors: backend.backward(tensors[:split], tensors[split:])

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
                inputs = self._decode(body.get("inputs"), backend.input_schema, "inputs")
                self.bytes_in += _payload_bytes(body.get("inputs"))
                outputs = await self.runtime.submit(f"{uid}/forward", inputs)
                return self._reply("outputs", encode_tensors(outputs, compression))
            if method == "backward":
                inputs = self._decode(body.get("inputs"), backend.input_schema, "inputs")
                grads = self._decode(body.get("grads"), backend.output_schema, "grads")
                if any(g.shape[0] != inputs[0].shape[0] for g in grads):
                    raise RPCHandlerError("bad_tensor", "grads and inputs have different batch sizes")
                self.bytes_in += _payload_bytes(body.get("inputs")) + _payload_bytes(body.get("grads"))
                grad_inputs = await self.runtime.submit(f"{uid}/backward", [*inputs, *grads])
                return self._reply("grads", encode_tensors(grad_inputs, compression))
        except RPCHandlerError:
            self.failures += 1
            raise
        except ValueError as exc:
            self.failures += 1
            raise RPCHandlerError("bad_tensor", str(exc)) from exc
        raise RPCHandlerError("unknown_method", f"unknown method {method!r}")

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
                "throughput: %.1f samples/s, %d batches, %d requests, %d failures, %d connections",
                (samples - last_samples) / (now - last_time),
                self.runtime.batches,
                self.requests,
                self.failures,
                links,
            )
            last_samples, last_time = samples, now

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.checkpoint_period)
            await self.save_checkpoints()

    async def save_checkpoints(self) -> list[Path]:
        if not self.options.checkpoint_dir:
            return []
        directory = self.options.checkpoint_dir
        # Run on the compute thread so no optimiser step happens while we read the parameters.
        return await asyncio.get_running_loop().run_in_executor(
            self.runtime.executor, lambda: [save_checkpoint(directory, b) for b in self.backends.values()]
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
        await self.save_checkpoints()
        await self.runtime.shutdown()
        if self.pool is not None:
            await self.pool.close()


def _payload_bytes(headers: Any) -> int:
    """Tensor bytes in encoded headers (telemetry's bandwidth counters; framing overhead not counted)."""
    if not isinstance(headers, list):
        return 0
    return sum(len(h.get("data", b"")) + len(h.get("scales", b"")) for h in headers if isinstance(h, dict))
