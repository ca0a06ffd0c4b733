"""Trainer side of remote experts: `ExpertCaller` (thread-safe futures), `RemoteExpert`, `get_experts`.

PyTorch training code is synchronous; the network side is asyncio. `ExpertCaller` runs one event loop in a
background thread (`node_agent.loop_thread`, uvloop when installed) that owns a client-mode DHT node and
the WebRTC connection pool, and exposes thread-safe methods that return `concurrent.futures.Future`s.
Every failure surfaces as an `ExpertError` subclass (`node_agent.moe.api`), within the call's timeout.

Forward-activation reuse (server side: `node_agent.moe.server.forward_cache`): a forward asks the server to
keep its graph and gets an id back; the caller files the id with the inputs it was computed on
(`_ForwardLedger`). A later `backward` with equal inputs to the same expert sends the id and the output
gradients only (no inputs, no recomputation on the server). If the server no longer holds the graph it
answers `unknown_forward` and the caller re-sends the inputs, so callers (the MoE layer, `RemoteExpert`)
keep passing the inputs to `backward` exactly as before and never see the difference.

Credit (`node_agent.credit.receipts`): with a portal credential, every forward and backward carries a
fresh request nonce; the server signs its answer over it and the caller checks that signature (the key must
hash to the node id it dialled) and files it in a `ReceiptBook`. Every `receipt_period` seconds the closed
minutes' receipts are signed and handed back to their servers (`receipt` call); `stop()` hands back the
rest. Answers without a valid signature are used (training does not suffer) but earn no receipt
(`unsigned_answers`).

Tensors travel `blockwise8`-compressed by default (8-bit per value with a scale per block; 4x fewer bytes):
`benchmarks/bench_training.py` trains to the same accuracy with it; pass `compression="none"` for exact
calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from node_agent.credit.receipts import (
    NONCE_BYTES,
    Receipt,
    ReceiptBook,
    answer_digest,
    encode_receipt,
    verify_answer,
)
from node_agent.dht.api import DHTNodeAPI
from node_agent.identity import node_id_from_public_key
from node_agent.loop_thread import LoopThread
from node_agent.moe.announce import live_replicas, uid_key
from node_agent.moe.api import (
    ExpertError,
    ExpertHandle,
    ExpertProtocolError,
    ExpertTimeoutError,
    ExpertUnavailableError,
)
from node_agent.moe.probe import check_info_reply
from node_agent.portal.project_dht import project_validators
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectError, ConnectionPool
from node_agent.rtc.rpc import RPCClosedError, RPCError, RPCRemoteError, RPCTimeoutError
from node_agent.tensor_codec import (
    Compression,
    TensorCodecError,
    TensorSchema,
    decode_tensors,
    encode_tensors,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Codes of remote errors meaning "this replica cannot serve you" rather than "your request was bad".
_UNAVAILABLE_CODES = {"unknown_expert", "shutting_down", "busy"}
DEFAULT_COMPRESSION = Compression.BLOCKWISE_8BIT


class _ForwardGone(ExpertProtocolError):
    """The server no longer holds the kept forward (evicted, expired, restarted): re-send the inputs."""


class _ForwardLedger:
    """Forward ids the servers returned, with the inputs each was computed on, until the backward.

    Lives on the caller's loop thread. Matching is by expert and by equal inputs (`torch.equal`, a memory
    comparison far cheaper than the forward it saves); ties go to the oldest forward. Bounded per expert and
    by age: a forward nobody backpropagates (evaluation) just ages out, on both sides.
    """

    def __init__(self, ttl: float, per_expert: int = 64) -> None:
        self.ttl = ttl
        self.per_expert = per_expert
        self._entries: dict[ExpertHandle, deque[tuple[bytes, list[torch.Tensor], float]]] = {}

    def add(self, handle: ExpertHandle, fid: bytes, inputs: Sequence[torch.Tensor], now: float) -> None:
        self.prune(now)
        entries = self._entries.setdefault(handle, deque(maxlen=self.per_expert))
        entries.append((fid, [t.detach() for t in inputs], now + self.ttl))

    def pop(self, handle: ExpertHandle, inputs: Sequence[torch.Tensor], now: float) -> bytes | None:
        self.prune(now)
        entries = self._entries.get(handle)
        if not entries:
            return None
        for index, (fid, kept, _expires) in enumerate(entries):
            if len(kept) == len(inputs) and all(
                k.shape == t.shape and k.dtype == t.dtype and torch.equal(k, t.detach())
                for k, t in zip(kept, inputs, strict=True)
            ):
                del entries[index]
                return fid
        return None

    def prune(self, now: float) -> None:
        for handle in list(self._entries):
            entries = self._entries[handle]
            while entries and entries[0][2] <= now:
                entries.popleft()
            if not entries:
                del self._entries[handle]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())


async def get_experts(dht: DHTNodeAPI, uids: Sequence[str]) -> list[ExpertHandle | None]:
    """Resolve uids to one live replica each (the freshest announcement), None where nobody serves it."""
    found = await dht.get_many([uid_key(uid) for uid in uids], latest=True)
    result: list[ExpertHandle | None] = []
    for uid in uids:
        replicas = live_replicas(uid, found.get(uid_key(uid), {}))
        result.append(replicas[0] if replicas else None)
    return result


class ExpertCaller:
    """One per trainer process: background loop + client-mode DHT node + connection pool."""

    def __init__(
        self,
        initial_peers: Sequence[str] = (),
        *,
        rtc_options: RTCOptions | None = None,
        compression: Compression | str = DEFAULT_COMPRESSION,
        listen: str = "0.0.0.0:0",
        identity: Any = None,
        use_uvloop: bool = True,
        reuse_forward: bool = True,
        forward_ttl: float = 30.0,
        credential: str | None = None,
        require_initial_peer: bool = True,
        receipt_period: float = 10.0,
    ) -> None:
        """`reuse_forward`: ask servers to keep forward graphs for the backward (see the module docstring);
        `forward_ttl`: how long we remember a forward id (match the servers' `forward_cache_ttl`);
        `credential`: our portal credential, carried in connection offers so that servers of a gated
        project admit us ahead of unknown peers when they are busy.
        `require_initial_peer=False`: start even if no initial peer answers and keep retrying them (the
        DHT node's backoff); see `wait_joined`. `listen`: the client-mode DHT node's address; every interface
        by default, so a trainer reaches peers outside its own machine (a node bound to 127.0.0.1 reaches
        nothing else). `receipt_period`: how often closed minutes' receipts go back to their servers."""
        self.credential = credential
        self.require_initial_peer = require_initial_peer
        self.initial_peers = list(initial_peers)
        self.rtc_options = rtc_options or RTCOptions()
        self.compression = Compression(compression)
        self.listen = listen
        self.identity = identity
        self.use_uvloop = use_uvloop
        self.dht: DHTNodeAPI | None = None
        self.pool: ConnectionPool | None = None
        self._thread = LoopThread("expert-caller", use_uvloop=use_uvloop)
        self._schemas: dict[ExpertHandle, list[TensorSchema]] = {}
        self.reuse_forward = reuse_forward
        self._ledger = _ForwardLedger(forward_ttl)
        #: Backwards served from a kept forward / that had to re-send the inputs after a miss.
        self.kept_backwards = 0
        self.recomputed_backwards = 0
        # Calls per expert server since the last `take_peer_requests()`: telemetry reports them as the
        # trainer-to-expert traffic the portal draws. Written on the loop thread, read from others.
        self._peer_requests: Counter[bytes] = Counter()
        self._peer_requests_lock = threading.Lock()
        #: Signed answers filed for receipts (credentialed callers only); see the module docstring.
        self.receipt_period = receipt_period
        self.receipts: ReceiptBook | None = None
        self._receipt_handles: dict[bytes, ExpertHandle] = {}
        self._receipt_task: asyncio.Task[None] | None = None
        self.unsigned_answers = 0
        self.receipts_sent = 0
        self.receipts_failed = 0

    @classmethod
    def start_caller(
        cls, initial_peers: Sequence[str] = (), timeout: float = 30.0, **kwargs: Any
    ) -> ExpertCaller:
        caller = cls(initial_peers, **kwargs)
        caller.start(timeout)
        return caller

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Start the loop thread, join the DHT (client mode) and open the pool; raises on failure."""
        if self._thread.started:
            raise RuntimeError("ExpertCaller already started")
        self._thread.start()
        try:
            self.run(self._setup()).result(timeout)
        except BaseException:
            self.stop()
            raise

    async def _setup(self) -> None:
        from node_agent.dht import DHTNode

        self.dht = await DHTNode.create(  # a portal project's trainer re-installs validators with its scope
            initial_peers=self.initial_peers,
            listen=self.listen,
            identity=self.identity,
            client_mode=True,
            validators=project_validators(),
            require_initial_peer=self.require_initial_peer,
        )
        self.pool = await ConnectionPool.create(self.dht, None, self.rtc_options, credential=self.credential)
        cid = _credential_id(self.credential)
        if cid is not None:
            self.receipts = ReceiptBook(self.dht.identity, cid)
            self._receipt_task = asyncio.create_task(self._return_receipts_loop())

    def wait_joined(self, timeout: float) -> bool:
        """Block up to `timeout` seconds until the DHT node has a live peer; True if it has."""

        async def joined() -> bool:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while self.dht is not None and not self.dht.joined and loop.time() < deadline:
                await asyncio.sleep(0.2)
            return self.dht is not None and self.dht.joined

        return bool(self.run(joined()).result(timeout + 5.0))

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.started:
            self._thread.stop(self._teardown(), timeout)

    async def _teardown(self) -> None:
        if self._receipt_task is not None:
            self._receipt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receipt_task
        if self.receipts is not None and self.pool is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):  # a stop never waits long for the last receipts
                    await self._return_receipts(self.receipts.take_all())
        if self.pool is not None:
            await self.pool.close()
        if self.dht is not None:
            await self.dht.shutdown()

    def __enter__(self) -> ExpertCaller:
        if not self._thread.started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run any coroutine (e.g. a DHT lookup) on the caller's loop; RuntimeError if it is not running."""
        return self._thread.run(coro)

    # ---- calls ---------------------------------------------------------------------------------------

    def forward(
        self, handle: ExpertHandle, inputs: Sequence[torch.Tensor], timeout: float, keep_graph: bool = True
    ) -> concurrent.futures.Future[list[torch.Tensor]]:
        """`keep_graph=False` when no backward will follow (evaluation): the server keeps nothing."""
        return self.run(self.forward_async(handle, inputs, timeout, keep_graph))

    def backward(
        self,
        handle: ExpertHandle,
        inputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        timeout: float,
    ) -> concurrent.futures.Future[list[torch.Tensor]]:
        return self.run(self.backward_async(handle, inputs, grad_outputs, timeout))

    def info(self, handle: ExpertHandle, timeout: float) -> concurrent.futures.Future[dict[str, Any]]:
        return self.run(self.info_async(handle, timeout))

    async def info_async(self, handle: ExpertHandle, timeout: float) -> dict[str, Any]:
        reply = await self._call(handle, "info", {"uid": handle.uid}, timeout)
        self._schemas[handle] = check_info_reply(handle.uid, reply)
        return dict(reply)

    async def forward_async(
        self, handle: ExpertHandle, inputs: Sequence[torch.Tensor], timeout: float, keep_graph: bool = True
    ) -> list[torch.Tensor]:
        keep = keep_graph and self.reuse_forward
        async with _deadline(handle, timeout):
            if handle not in self._schemas:
                await self.info_async(handle, timeout)
            body = {
                "uid": handle.uid,
                "inputs": self._encode(inputs),
                "keep": keep,
                "reply_compression": self.compression.value,
            }
            nonce = self._nonce(body)
            reply = await self._call(handle, "forward", body, timeout)
            outputs = self._decode(handle, reply, "outputs", self._schemas[handle])
            self._file_answer(handle, nonce, "forward", inputs[0].shape[0], reply, "outputs")
        batch = inputs[0].shape[0]
        if any(o.dim() == 0 or o.shape[0] != batch for o in outputs):
            raise ExpertProtocolError(f"{handle.uid}: outputs do not match the batch size {batch}")
        fid = reply.get("fid")
        if keep and isinstance(fid, bytes):
            self._ledger.add(handle, fid, inputs, time.monotonic())
        return outputs

    async def backward_async(
        self,
        handle: ExpertHandle,
        inputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        timeout: float,
    ) -> list[torch.Tensor]:
        """Gradients w.r.t. `inputs`: from the kept forward when the server still has it, else recomputed."""
        grads = self._encode(grad_outputs)
        compression = self.compression.value
        async with _deadline(handle, timeout):
            fid = self._ledger.pop(handle, inputs, time.monotonic())
            reply, nonce = None, None
            if fid is not None:
                body = {"uid": handle.uid, "fid": fid, "grads": grads, "reply_compression": compression}
                nonce = self._nonce(body)
                try:
                    reply = await self._call(handle, "backward", body, timeout)
                    self.kept_backwards += 1
                except _ForwardGone as exc:
                    logger.debug("%s: kept forward gone (%s); re-sending the inputs", handle.uid, exc)
                except ExpertError:
                    # e.g. gradients refused before the server touched the graph: a retry may still use it
                    self._ledger.add(handle, fid, inputs, time.monotonic())
                    raise
            if reply is None:
                self.recomputed_backwards += 1
                body = {
                    "uid": handle.uid,
                    "inputs": self._encode(inputs),
                    "grads": grads,
                    "reply_compression": compression,
                }
                nonce = self._nonce(body)
                reply = await self._call(handle, "backward", body, timeout)
        schemas = [TensorSchema(dtype=_dtype_name(t), shape=tuple(t.shape)) for t in inputs]
        decoded = self._decode(handle, reply, "grads", schemas)
        self._file_answer(handle, nonce, "backward", grad_outputs[0].shape[0], reply, "grads")
        return decoded

    # ---- receipts ------------------------------------------------------------------------------------

    def _nonce(self, body: dict[str, Any]) -> bytes | None:
        if self.receipts is None:
            return None
        nonce = body["rn"] = secrets.token_bytes(NONCE_BYTES)
        return nonce

    def _file_answer(
        self, handle: ExpertHandle, nonce: bytes | None, kind: str, samples: int, reply: Any, field: str
    ) -> None:
        """Check the server's signature on a (decoded, valid) answer and file it for the minute's receipt."""
        if self.receipts is None or nonce is None:
            return
        public_key, signature = reply.get("pk"), reply.get("sig")
        if (
            not isinstance(public_key, bytes)
            or not isinstance(signature, bytes)
            or node_id_from_public_key(public_key) != handle.node_id
            or not verify_answer(
                public_key, nonce, handle.uid, kind, samples, answer_digest(reply[field]), signature
            )
        ):
            self.unsigned_answers += 1
            logger.debug("%s: %s answer without a valid signature; no receipt", handle.uid, kind)
            return
        self._receipt_handles[handle.node_id] = handle
        self.receipts.record(handle.node_id, handle.uid, kind, samples, nonce, signature, time.time())

    async def _return_receipts_loop(self) -> None:
        while True:
            await asyncio.sleep(self.receipt_period)
            if self.receipts is not None:
                self.receipts.cid = _credential_id(self.credential) or self.receipts.cid  # after renewals
                try:
                    await self._return_receipts(self.receipts.take_closed(time.time()))
                except Exception:
                    logger.exception("returning receipts failed")

    async def _return_receipts(self, receipts: list[Receipt]) -> None:
        """Hand each receipt to its server (best effort: a server that is gone loses that minute)."""
        for receipt in receipts:
            handle = self._receipt_handles.get(receipt.server)
            if handle is None:
                continue
            try:
                await self._call(handle, "receipt", {"receipt": encode_receipt(receipt)}, 5.0)
                self.receipts_sent += 1
            except ExpertError as exc:
                self.receipts_failed += 1
                logger.info("could not return a receipt to %s: %s", receipt.server.hex()[:8], exc)

    def _encode(self, tensors: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        return encode_tensors([t.detach() for t in tensors], self.compression)

    @staticmethod
    def _decode(
        handle: ExpertHandle, reply: Any, field: str, schemas: list[TensorSchema]
    ) -> list[torch.Tensor]:
        if not isinstance(reply, dict) or field not in reply:
            raise ExpertProtocolError(f"{handle.uid}: reply has no {field!r}")
        try:
            return decode_tensors(reply[field], schemas, allow_nonfinite=False, what=f"{handle.uid} {field}")
        except TensorCodecError as exc:
            raise ExpertProtocolError(str(exc)) from exc

    def take_peer_requests(self) -> dict[bytes, int]:
        """Calls made to each server (by node id) since the previous call; thread-safe."""
        with self._peer_requests_lock:
            taken = dict(self._peer_requests)
            self._peer_requests.clear()
        return taken

    async def _call(self, handle: ExpertHandle, method: str, body: dict[str, Any], timeout: float) -> Any:
        assert self.pool is not None
        with self._peer_requests_lock:
            self._peer_requests[handle.node_id] += 1
        try:
            async with asyncio.timeout(timeout):
                link = await self.pool.connect(handle.node_id, handle.endpoint, timeout, handle.relays)
                return await link.rpc.call(method, body, timeout)
        except TimeoutError:
            raise ExpertTimeoutError(f"{handle.uid} {method} timed out after {timeout:.1f} s") from None
        except RPCTimeoutError as exc:
            raise ExpertTimeoutError(f"{handle.uid} {method}: {exc}") from exc
        except ConnectError as exc:
            raise ExpertUnavailableError(f"{handle.uid}: {exc}") from exc
        except RPCClosedError as exc:
            raise ExpertUnavailableError(f"{handle.uid} {method}: connection lost: {exc}") from exc
        except RPCRemoteError as exc:
            if exc.code == "unknown_forward":
                raise _ForwardGone(f"{handle.uid} {method}: {exc}") from exc
            error = ExpertUnavailableError if exc.code in _UNAVAILABLE_CODES else ExpertProtocolError
            raise error(f"{handle.uid} {method}: {exc}") from exc
        except RPCError as exc:
            raise ExpertProtocolError(f"{handle.uid} {method}: {exc}") from exc


def _credential_id(token: str | None) -> str | None:
    """The credential id a receipt names (our own token: its signature is the portal's concern)."""
    if not token:
        return None
    from node_agent.portal.errors import CredentialError
    from node_agent.portal.tokens import peek_credential

    try:
        return peek_credential(token).cid
    except CredentialError:
        return None


def _dtype_name(tensor: torch.Tensor) -> str:
    from node_agent.tensor_codec import dtype_name

    return dtype_name(tensor.dtype)


@contextlib.asynccontextmanager
async def _deadline(handle: ExpertHandle, timeout: float):
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise ExpertTimeoutError(f"{handle.uid}: call timed out after {timeout:.1f} s") from None


class _RemoteCall(torch.autograd.Function):
    """Forward and backward of one remote expert over the data channel."""

    @staticmethod
    def forward(
        ctx: Any, dummy: torch.Tensor, expert: RemoteExpert, keep_graph: bool, *inputs: torch.Tensor
    ) -> Any:
        ctx.expert = expert
        ctx.save_for_backward(*inputs)
        outputs = expert.caller.forward(expert.peer, inputs, expert.timeout, keep_graph).result()
        return tuple(outputs)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> Any:
        inputs = ctx.saved_tensors
        expert: RemoteExpert = ctx.expert
        grads = expert.caller.backward(
            expert.peer, inputs, [g.contiguous() for g in grad_outputs], expert.backward_timeout
        ).result()
        return (None, None, None, *grads)


class RemoteExpert(nn.Module):
    """A remote expert used like a local module; raises `ExpertError` subclasses on failure."""

    def __init__(
        self,
        uid: str,
        peer: ExpertHandle,
        caller: ExpertCaller,
        timeout: float = 10.0,
        backward_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.uid = uid
        self.peer = peer
        self.caller = caller
        self.timeout = timeout
        self.backward_timeout = timeout if backward_timeout is None else backward_timeout
        self._dummy = torch.empty(0, requires_grad=True)  # keeps the graph alive when inputs need no grad

    def forward(self, *inputs: torch.Tensor) -> Any:
        # Autograd's mode is off inside Function.forward: decide here whether a backward can follow.
        outputs = _RemoteCall.apply(self._dummy, self, torch.is_grad_enabled(), *inputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def info(self) -> dict[str, Any]:
        return self.caller.info(self.peer, self.timeout).result()


__all__ = ["ExpertCaller", "ExpertError", "ExpertHandle", "RemoteExpert", "get_experts"]
