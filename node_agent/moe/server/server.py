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
Errors use the RPC error codes `unknown_expert`, `unknown_method`, `unknown_forward`, `bad_request`,
`bad_tensor`, `shutting_down`, `busy`, `internal`; every malformed body gets one of the first five
(`requests.parse_request` checks the whole schema, an empty batch included, before any compute).

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
from node_agent.moe.server.kept_groups import KeptGroup
from node_agent.moe.server.requests import (
    FORWARD_ID_BYTES,
    BackwardRequest,
    ForwardRequest,
    InfoRequest,
    RequestError,
    parse_request,
    payload_bytes,
)
from node_agent.moe.server.runtime import BatchingRuntime
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.rtc.rpc import RPCHandlerError, current_caller
from node_agent.tensor_codec import encode_tensors

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
    #: Kept backwards accumulate into one optimiser step until no kept forward made with the same parameters
    #: awaits its backward or `max_batch_size` samples are in, for at most this many seconds; members of a
    #: concatenated kept forward wait as long for each other. 0: no waiting, a step on every backward.
    step_delay: float = 0.05


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
        self._timers: dict[Any, asyncio.TimerHandle] = {}
        self._jobs: set[asyncio.Future[Any]] = set()
        #: Kept groups with a member still awaited (compute thread only).
        self._waiting_groups: set[KeptGroup] = set()
        self._loop = asyncio.get_running_loop()

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
        `credentials`: the checker that makes this node refuse uncredentialed announcements of others, and
        rank peers whose connection offers carry a valid credential above unknown ones.
        """
        server = cls(dht, backends, options or ServerOptions())
        server.credential = credential
        if server.options.checkpoint_dir:
            for backend in backends.values():
                load_checkpoint(server.options.checkpoint_dir, backend)
        for uid, backend in backends.items():
            server.runtime.add_queue(f"{uid}/forward", backend.forward)
            server.runtime.add_queue(f"{uid}/backward", server._backward_fn(backend))
            server.runtime.add_queue(f"{uid}/forward_keep", server._forward_kept_fn(backend), tagged=True)
            backend.snapshot_in_use = server._snapshot_in_use
        register_experts_validator(dht, credentials)
        server.pool = await ConnectionPool.create(
            dht, server.handle, rtc_options, credentials=credentials, credential=credential
        )
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

    # ---- kept forwards: compute-thread jobs run one at a time in arrival order, so no locks ---------

    def _forward_kept_fn(self, backend: ExpertBackend):  # -> TaggedBatchFn
        """A concatenated batch of kept forwards: one graph, one cache entry per member request."""

        def run(columns: list[torch.Tensor], tickets: list[_KeepTicket]) -> list[torch.Tensor]:
            kept = backend.forward_kept(columns)
            group = KeptGroup(backend.uid, kept, [t.fid for t in tickets], [t.rows for t in tickets])
            share = kept.nbytes // len(tickets)
            now = time.monotonic()
            for index, ticket in enumerate(tickets):
                ticket.stored = self.forward_cache.put(
                    (backend.uid, ticket.fid),
                    ticket.owner,
                    (group, index),
                    nbytes=share,
                    generation=kept.generation,
                    generation_bytes=backend.snapshot_bytes,
                    now=now,
                    group=backend.uid,
                )
            return [o.detach() for o in kept.outputs]

        return run

    def _backward_arrived(
        self, backend: ExpertBackend, grads: list[torch.Tensor], fid: bytes, owner: bytes, waiter: Any
    ) -> KeptGroup | None:
        """One member's gradients; runs its group's backward if nobody else is awaited, else returns it."""
        group, index = self.forward_cache.take((backend.uid, fid), owner, time.monotonic())
        group.arrive(index, grads, waiter)
        if self.options.step_delay > 0 and not group.ready(
            lambda other: (backend.uid, other) in self.forward_cache
        ):
            self._waiting_groups.add(group)
            return group
        self._run_group(backend, group)
        return None

    def _run_group(self, backend: ExpertBackend, group: KeptGroup) -> None:
        """One backward for the group's whole batch; answers its members; steps if nothing else is awaited."""
        if group.done:
            return
        group.done = True
        self._waiting_groups.discard(group)
        for fid in group.absent_fids():  # too late now: their backward will re-send the inputs
            self.forward_cache.discard((backend.uid, fid))
        answers: dict[int, Any]
        try:
            input_grads = backend.backward_kept(group.kept, group.full_grads(), group.arrived_samples)
            answers = dict(group.split(input_grads))
        except Exception as exc:
            logger.warning("%s: backward of %d kept requests failed: %s", backend.uid, len(group.grads), exc)
            answers = dict.fromkeys(group.grads, exc)
        group.kept.outputs.clear()  # free the graph's activations now
        # Step once no other forward made with these parameters awaits its backward: older forwards (whose
        # backward may never come, e.g. answers that arrived too late) must not hold every later step.
        due = (
            self.options.step_delay <= 0
            or not self.forward_cache.holds_generation(group.kept.generation)
            or backend.accumulated_samples >= self.options.max_batch_size
        )
        if due:  # before answering: a step is memory-bound and runs worst beside the network work of replies
            self._step(backend)
        else:
            self._loop.call_soon_threadsafe(self._step_later, backend)
        for index, answer in answers.items():
            self._loop.call_soon_threadsafe(_settle, group.waiters[index], answer)

    def _step(self, backend: ExpertBackend) -> None:
        try:
            backend.step_accumulated()
        except ValueError as exc:
            self.failures += 1
            logger.warning("%s: optimiser step skipped: %s", backend.uid, exc)

    def _snapshot_in_use(self, generation: Any) -> bool:
        return self.forward_cache.holds_generation(generation) or any(
            group.kept.generation == generation for group in self._waiting_groups
        )

    # ---- kept forwards: waiting on the event loop (bounded by step_delay) ----------------------------

    def _later(self, key: Any, job: Any) -> None:
        """Run `job` on the compute thread after `step_delay`, once per key until it ran."""
        if key in self._timers:
            return

        def fire() -> None:
            self._timers.pop(key, None)
            task = asyncio.ensure_future(self.runtime.call(job))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

        self._timers[key] = self._loop.call_later(self.options.step_delay, fire)

    def _step_later(self, backend: ExpertBackend) -> None:
        """Bound how long accumulated gradients wait for backwards that may never come."""
        self._later(("step", backend.uid), lambda: self._step(backend))

    async def settle(self) -> None:
        """Wait until every job already queued on the compute thread ran (e.g. a delayed optimiser step).

        A caller's next request is queued behind such jobs anyway, so only code inspecting the parameters
        directly (tests, tools) needs this.
        """
        await self.runtime.call(lambda: None)

    def set_credential(self, credential: str | None) -> None:
        """Use a renewed credential from the next announcement on (well before the old one expires)."""
        self.credential = credential
        if self.pool is not None:
            self.pool.set_credential(credential)

    async def announce(self, withdrawn: bool = False) -> None:
        results = await announce_experts(
            self.dht,
            list(self.backends),
            self.options.announce_ttl,
            withdrawn,
            credential=self.credential,  # a gated project's peers want it on withdrawals too
        )
        stored = sum(results)
        if stored < len(results):
            logger.warning("announcement stored %d of %d DHT items", stored, len(results))

    # ---- request handling ----------------------------------------------------------------------------

    async def handle(self, method: str, body: Any) -> Any:
        if not self.accepting:
            raise RPCHandlerError("shutting_down", "server is shutting down")
        try:
            request = parse_request(method, body, self.backends, self.options.max_batch_size)
        except RequestError as exc:
            if exc.code != "unknown_expert":
                self.requests += 1
                self.failures += 1
            logger.debug("refused a request from %s: %s", _short(current_caller()), exc)
            raise RPCHandlerError(exc.code, exc.message) from None
        self.requests += 1
        backend = self.backends[request.uid]
        try:
            if isinstance(request, InfoRequest):
                return backend.info()
            self.bytes_in += request.payload_bytes
            if isinstance(request, ForwardRequest):
                return await self._forward(backend, request)
            return await self._backward(backend, request)
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

    async def _forward(self, backend: ExpertBackend, request: ForwardRequest) -> dict[str, Any]:
        uid, inputs, compression = request.uid, request.inputs, request.compression
        if request.keep and self.forward_cache.enabled:
            fid = secrets.token_bytes(FORWARD_ID_BYTES)
            ticket = _KeepTicket(fid, current_caller() or b"", len(inputs[0]))
            outputs = await self.runtime.submit(f"{uid}/forward_keep", inputs, ticket)
            reply = self._reply("outputs", encode_tensors(outputs, compression))
            if ticket.stored:
                reply["fid"] = ticket.fid
            return reply
        outputs = await self.runtime.submit(f"{uid}/forward", inputs)
        return self._reply("outputs", encode_tensors(outputs, compression))

    async def _backward(self, backend: ExpertBackend, request: BackwardRequest) -> dict[str, Any]:
        uid, grads, compression = request.uid, request.grads, request.compression
        if request.fid is not None:
            waiter = self._loop.create_future()
            group = await self.runtime.call(
                self._backward_arrived, backend, grads, request.fid, current_caller() or b"", waiter
            )
            if group is not None:  # other members are awaited: their backward, or the timer, runs it
                self._later(group, lambda: self._run_group(backend, group))
            grad_inputs = await waiter
            self.runtime.samples += len(grads[0])
            return self._reply("grads", encode_tensors(grad_inputs, compression))
        assert request.inputs is not None  # parse_request gives inputs whenever there is no fid
        grad_inputs = await self.runtime.submit(f"{uid}/backward", [*request.inputs, *grads])
        return self._reply("grads", encode_tensors(grad_inputs, compression))

    def _reply(self, name: str, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        self.bytes_out += payload_bytes(encoded)
        return {name: encoded}

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
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for group in list(self._waiting_groups):  # answer the members that sent their gradients
            await self.runtime.call(self._run_group, self.backends[group.uid], group)
        for backend in self.backends.values():  # apply what trainers already sent before saving
            await self.runtime.call(self._step, backend)
        await self.save_checkpoints()
        await self.runtime.shutdown()
        self.forward_cache.clear()  # the compute thread has stopped: safe from the loop now
        if self.pool is not None:
            await self.pool.close()


@dataclass(slots=True)
class _KeepTicket:
    """A kept-forward request in a batch: its id, who may take it back, its rows; `stored` once kept."""

    fid: bytes
    owner: bytes
    rows: int
    stored: bool = False


def _settle(waiter: asyncio.Future[Any], answer: Any) -> None:
    if waiter.done():  # the caller gave up meanwhile
        return
    if isinstance(answer, BaseException):
        waiter.set_exception(answer)
    else:
        waiter.set_result(answer)


def _short(node_id: bytes | None) -> str:
    return node_id.hex()[:8] if node_id else "?"
