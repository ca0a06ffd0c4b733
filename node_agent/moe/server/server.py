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
* Credit (`node_agent.credit.receipts`): a forward or backward carrying a 16-byte request nonce `rn` gets
  its answer signed: the reply adds `sig` (over nonce, uid, kind, samples and the digest of the encoded
  tensors) and `pk` (our public key). `receipt` `{"receipt": bytes}` hands back the trainer's signed
  receipt for a closed minute; it is kept (`ReceiptStore`) and uploaded with the heartbeats.
* `state.open` / `state.part` / `state.close`: state downloads of a hosted expert
  (`node_agent.averaging.state_download`), used by replicas (`replicas`), takeovers and exports.
Errors use the RPC error codes `unknown_expert`, `unknown_method`, `unknown_forward`, `bad_request`,
`bad_tensor`, `shutting_down`, `busy`, `internal`; every malformed body gets one of the first five
(`requests.parse_request` checks the whole schema, an empty batch included, before any compute).

In a gated project (`node_agent.portal.gate`) the server carries its portal credential in every
announcement (`credential`, replaced on renewal by `set_credential`) and its DHT node refuses other
nodes' announcements without a valid one (`credentials` checker).

Kept forwards that arrive together run as one batch (`kept_groups.KeptForwards` gathers their backwards);
the background loops run under a `TaskSupervisor` (restarted when they die, `on_fatal` when they keep dying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node_agent.averaging.state_download import METHODS as STATE_METHODS
from node_agent.credit.receipts import ReceiptError, ReceiptStore, answer_digest, sign_answer
from node_agent.dht.api import DHTNodeAPI, DHTValidationError
from node_agent.moe.announce import CredentialChecker, announce_experts, register_experts_validator
from node_agent.moe.server.backend import ExpertBackend
from node_agent.moe.server.checkpoints import load_checkpoint, save_checkpoint
from node_agent.moe.server.forward_cache import ForwardCache, ForwardCacheMiss
from node_agent.moe.server.kept_groups import KeepTicket, KeptForwards
from node_agent.moe.server.replicas import Fallback, ReplicaSync
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
from node_agent.supervisor import TaskSupervisor
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
    #: Seconds between averaging rounds with other replicas of the same uids (0: never average).
    replica_period: float = 5.0
    #: Before announcing, load each expert's newest state from a live replica (or the fallback checkpoint).
    take_over: bool = True
    #: State downloads this server serves at once (more are answered `busy`; the downloader tries another).
    max_donor_sessions: int = 2


class ExpertServer:
    def __init__(
        self,
        dht: DHTNodeAPI,
        backends: dict[str, ExpertBackend],
        options: ServerOptions,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
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
        self.kept = KeptForwards(
            self.forward_cache,
            self.runtime,
            step_delay=options.step_delay,
            max_batch_size=options.max_batch_size,
            on_step_failed=self._count_failure,
        )
        self.supervisor = TaskSupervisor("expert server", on_fatal=on_fatal)
        self.replicas = ReplicaSync(
            dht,
            backends,
            self.runtime,
            period=options.replica_period,
            max_donor_sessions=options.max_donor_sessions,
        )
        self._relays_changed = asyncio.Event()  # set by the DHT when our relays change
        #: Trainers' signed receipts for our answers, until a heartbeat carried them to the portal.
        self.receipts = ReceiptStore(dht.identity.node_id)

    @classmethod
    async def create(
        cls,
        dht: DHTNodeAPI,
        backends: dict[str, ExpertBackend],
        options: ServerOptions | None = None,
        rtc_options: RTCOptions | None = None,
        announce: bool = True,
        credential: str | None = None,
        credentials: CredentialChecker | None = None,
        on_fatal: Callable[[str], None] | None = None,
        fallback: Fallback | None = None,
    ) -> ExpertServer:
        """Restore checkpoints, start batching, accept connections and announce the experts.

        `credential`: this node's portal credential, carried in announcements (gated projects);
        `credentials`: the checker that makes this node refuse uncredentialed announcements of others, and
        rank peers whose connection offers carry a valid credential above unknown ones;
        `on_fatal(reason)`: told when a background loop (re-announcing, expiry, checkpoints) keeps dying;
        `fallback(uid)`: the state to start from when no live replica has one (the project's last export).
        """
        server = cls(dht, backends, options or ServerOptions(), on_fatal)
        server.credential = credential
        server.replicas.fallback = fallback
        if server.options.checkpoint_dir:
            for backend in backends.values():
                load_checkpoint(server.options.checkpoint_dir, backend)
        for uid, backend in backends.items():
            server.runtime.add_queue(f"{uid}/forward", backend.forward)
            server.runtime.add_queue(f"{uid}/backward", server._backward_fn(backend))
            server.runtime.add_queue(f"{uid}/forward_keep", server.kept.batch_fn(backend), tagged=True)
            backend.snapshot_in_use = server.kept.snapshot_in_use
        register_experts_validator(dht, credentials)
        server.pool = await ConnectionPool.create(
            dht, server.handle, rtc_options, credentials=credentials, credential=credential
        )
        server.replicas.finder.pool = server.pool
        if announce and server.options.take_over:
            await server.replicas.take_over()
        if announce:
            await server.announce()
            dht.add_relay_listener(lambda _relays: server._relays_changed.set())
            server.supervisor.start("expert-reannounce", server._reannounce)
        server.supervisor.start("expert-stats", server._report)
        if server.forward_cache.enabled:
            server.supervisor.start("forward-cache-expiry", server._expire_loop)
        if server.options.checkpoint_dir:
            server.supervisor.start("expert-checkpoints", server._checkpoint_loop)
        if server.options.replica_period > 0:
            server.supervisor.start("expert-replicas", server.replicas.run)
        return server

    @staticmethod
    def _backward_fn(backend: ExpertBackend):  # -> BatchFn
        split = len(backend.input_schema)
        return lambda tensors: backend.backward(tensors[:split], tensors[split:])

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
        if method in STATE_METHODS:
            return await self.replicas.donor.handle(method, body)
        if method == "receipt":
            return self._keep_receipt(body)
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
                reply = await self._forward(backend, request)
                return self._signed(reply, request.nonce, request.uid, "forward", len(request.inputs[0]))
            reply = await self._backward(backend, request)
            return self._signed(reply, request.nonce, request.uid, "backward", len(request.grads[0]))
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
            ticket = KeepTicket(fid, current_caller() or b"", len(inputs[0]))
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
            grad_inputs = await self.kept.backward(backend, grads, request.fid, current_caller() or b"")
            self.runtime.samples += len(grads[0])
            return self._reply("grads", encode_tensors(grad_inputs, compression))
        assert request.inputs is not None  # parse_request gives inputs whenever there is no fid
        grad_inputs = await self.runtime.submit(f"{uid}/backward", [*request.inputs, *grads])
        return self._reply("grads", encode_tensors(grad_inputs, compression))

    def _signed(
        self, reply: dict[str, Any], nonce: bytes | None, uid: str, kind: str, samples: int
    ) -> dict[str, Any]:
        """Sign the answer for the trainer's receipt (only when it sent a nonce: older trainers send none)."""
        if nonce is not None:
            digest = answer_digest(reply["outputs" if kind == "forward" else "grads"])
            identity = self.dht.identity
            reply["sig"] = sign_answer(identity, nonce, uid, kind, samples, digest)
            reply["pk"] = identity.public_key_bytes
        return reply

    def _keep_receipt(self, body: Any) -> dict[str, Any]:
        data = body.get("receipt") if isinstance(body, dict) else None
        try:
            self.receipts.add(data, current_caller(), time.time())
        except ReceiptError as exc:
            logger.info("refused a receipt from %s: %s", _short(current_caller()), exc)
            raise RPCHandlerError("bad_request", str(exc)) from None
        return {"ok": True}

    def _count_failure(self) -> None:
        self.failures += 1

    def _reply(self, name: str, encoded: list[dict[str, Any]]) -> dict[str, Any]:
        self.bytes_out += payload_bytes(encoded)
        return {name: encoded}

    # ---- background ----------------------------------------------------------------------------------

    async def _reannounce(self) -> None:
        """Every `announce_period`, and at once when our relays change (offers must find the new ones)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._relays_changed.wait(), self.options.announce_period)
            self._relays_changed.clear()
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
        await self.supervisor.close()
        if self.pool is not None:
            await self.pool.drain(self.options.drain_timeout)
        try:
            await asyncio.wait_for(self.announce(withdrawn=True), timeout=5.0)
        except Exception as exc:
            logger.warning("could not withdraw announcements: %s", exc)
        await self.kept.finish(self.backends)  # answer waiting members, apply what trainers already sent
        await self.save_checkpoints()
        await self.runtime.shutdown()
        self.forward_cache.clear()  # the compute thread has stopped: safe from the loop now
        if self.pool is not None:
            await self.pool.close()


def _short(node_id: bytes | None) -> str:
    return node_id.hex()[:8] if node_id else "?"
