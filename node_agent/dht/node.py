"""DHTNode: the asyncio adapter around :class:`ProtocolCore` plus lookups, store/get and maintenance.

Contract and examples: :mod:`node_agent.dht.api`. Section numbers refer to the Kademlia paper
(Maymounkov & Mazieres 2002).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from node_agent.dht.answers import MAX_FIND_PAGES, Cursor, cursor_from_wire, cursor_to_wire
from node_agent.dht.api import (
    ID_BYTES,
    DHTBootstrapError,
    DHTError,
    DHTNodeStoppedError,
    DHTRPCError,
    DHTTimeoutError,
    PeerInfo,
    RecordValidator,
    RecordView,
    RPCHandler,
    ValueWithExpiration,
)
from node_agent.dht.clock import SYSTEM_CLOCK, Clock
from node_agent.dht.config import DHTConfig
from node_agent.dht.endpoints import (
    Address,
    format_endpoint,
    numeric_address,
    outward_ip,
    parse_endpoint,
    resolve,
)
from node_agent.dht.lookup import LookupState
from node_agent.dht.nat import NatService, RelaysListener
from node_agent.dht.protocol import MAX_RECORDS_PER_STORE, ProtocolCore, Request, Response, RoutingAction
from node_agent.dht.reachability import Reachability
from node_agent.dht.records import SignedRecord, key_id, sign_record
from node_agent.dht.routing import AddResult, distance
from node_agent.dht.transport import MemoryNetwork, UDPTransport
from node_agent.dht.validation import ExpiredRecordError
from node_agent.identity import Identity
from node_agent.wire import WireError

logger = logging.getLogger(__name__)

_STORE_CHUNK_OVERHEAD = 600
MAX_CONCURRENT_RPC_HANDLERS = 256
_MAINTENANCE = "maintenance"  # the one long-lived task: if it ends by an exception the node stops
RPC_HANDLER_TIMEOUT = 30.0
Merged = dict[str | None, tuple[SignedRecord, RecordView]]
FindResult = tuple[list[tuple[bytes, Address]], list[tuple[SignedRecord, RecordView]]]


class _RetransmitTimer:
    """Adaptive request timeout from smoothed RTT (RFC 6298 section 2), clamped to the config bounds and
    doubled after each timeout until an answer comes (section 5.5), so a busy network is not read as dead."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.backoff = 1.0

    def timed_out(self) -> None:
        self.backoff = min(self.backoff * 2, max(1.0, self.maximum / self.minimum))

    def update(self, rtt: float) -> None:
        self.backoff = 1.0
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    @property
    def timeout(self) -> float:
        base = min(1.0, self.maximum) if self.srtt is None else self.srtt + 4 * self.rttvar
        return min(self.maximum, max(self.minimum, base) * self.backoff)


class DHTNode:
    """A Kademlia node; build it with ``await DHTNode.create(...)`` (see :class:`api.DHTNodeAPI`)."""

    def __init__(
        self, identity: Identity, config: DHTConfig, client_mode: bool, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.identity = identity
        self.node_id: bytes = identity.node_id
        self.config = config
        self._clock = clock  # wall time and the maintenance schedule; network timeouts use the loop's
        self.core = ProtocolCore(identity, config, client_mode)
        self.nat = NatService(self)
        self._transport: UDPTransport | Any = None
        self._advertised_host = "127.0.0.1"
        self._bound_wildcard = False
        self._waiters: dict[bytes, asyncio.Future[Response]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rpc_handlers: dict[str, RPCHandler] = {}
        self._checking: set[bytes] = set()
        self._own_records: dict[tuple[str, str | None], SignedRecord] = {}
        self._timer = _RetransmitTimer(config.min_rpc_timeout, config.rpc_timeout)
        self._closed = False
        self.failure: str | None = None  # why the node stopped itself, if it did
        self._shutdown_task: asyncio.Task[None] | None = None
        self._last_republish = 0.0
        self._initial_peers: list[tuple[Address, bytes | None]] = []  # resolved once, pinged again to rejoin
        self._rejoin_task: asyncio.Task[bool] | None = None
        self._rejoin_interval = config.rejoin_min_interval
        self._next_rejoin = 0.0  # loop time before which no rejoin starts
        self._join_task: asyncio.Task[None] | None = None  # joining in the background (no peer answered yet)
        self.last_lookup: LookupState | None = None  # for diagnostics and the simulator's hop counts

    @classmethod
    async def create(
        cls,
        initial_peers: Sequence[str] = (),
        listen: str = "127.0.0.1:0",
        identity: Identity | None = None,
        client_mode: bool = False,
        *,
        network: MemoryNetwork | None = None,
        validators: Mapping[str, RecordValidator] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        behind_nat: bool = False,
        **options: Any,
    ) -> DHTNode:
        """Bind, bootstrap from ``initial_peers`` and start maintenance; ``network`` selects the simulator.

        ``identity=None`` makes a fresh ephemeral identity; pass ``Identity.load_or_create()`` to keep one.
        ``validators`` (namespace prefix -> validator) apply before the first datagram, joining included.
        ``clock`` (:mod:`node_agent.dht.clock`) is what tests move instead of sleeping.
        ``behind_nat`` (simulator only): the endpoint receives only from addresses it has sent to.
        """
        node = cls(identity or Identity.generate(), DHTConfig.from_options(**options), client_mode, clock)
        for prefix, validator in (validators or {}).items():
            node.register_validator(prefix, validator)
        host, port, _ = parse_endpoint(listen)
        if network is not None:
            node._transport = network.bind(node._on_datagram, host, port, filtered=behind_nat)
        else:
            node._transport = await UDPTransport.create(
                host, port, node._on_datagram, node._on_transport_lost
            )
        node.core.ip_version = node._transport.ip_version
        node._bound_wildcard = host in ("0.0.0.0", "", "::")
        node._advertised_host = outward_ip() if host in ("0.0.0.0", "") else host
        if network is None:  # a real socket: peers on this machine may answer from loopback
            node.core.own_hosts = frozenset({outward_ip(), node._advertised_host}) - {"127.0.0.1"}
        try:
            await node._bootstrap(initial_peers)
        except BaseException:
            await node.shutdown()
            raise
        node._spawn(node._maintain(), _MAINTENANCE)
        node.nat.start()
        return node

    @property
    def client_mode(self) -> bool:
        """True for a client by choice, and for a node that found itself unreachable (no storage duty)."""
        return self.core.client_mode

    @client_mode.setter
    def client_mode(self, value: bool) -> None:
        self.core.client_mode = value

    @property
    def reachability(self) -> Reachability:
        """What the last dial-back said (or the configured ``reachability``): :mod:`node_agent.dht.nat`."""
        return self.nat.reachability

    @property
    def relays(self) -> list[str]:
        """Our relays as ``host:port/<node id hex>`` while unreachable (empty otherwise)."""
        return self.nat.relay_endpoints

    def add_relay_listener(self, listener: RelaysListener) -> None:
        """Call ``listener(relays)`` whenever our set of relays changes (to refresh announcements)."""
        self.nat.add_listener(listener)

    @property
    def observed_endpoint(self) -> str | None:
        """``host:port`` that several distinct peers agree they see us at, if they do."""
        address = self.core.observed.winner(self._clock.time())
        return format_endpoint(address) if address is not None else None

    @property
    def endpoint(self) -> str:
        """Where peers reach us: for a node bound to every interface that a dial-back found reachable, the
        address its peers agree they see (a port forwarded by a router); else the bound or outward address."""
        if self._bound_wildcard and self.nat.reachability is Reachability.REACHABLE:
            observed = self.observed_endpoint
            if observed is not None:
                return observed
        return format_endpoint((self._advertised_host, self._transport.local_address[1]))

    def __repr__(self) -> str:
        return f"DHTNode({self.endpoint}, id={self.node_id.hex()[:12]}, peers={len(self.core.routing)})"

    # -- lifecycle ------------------------------------------------------------------------------------
    async def _bootstrap(self, initial_peers: Sequence[str]) -> None:
        if not initial_peers:
            return
        for peer in initial_peers:
            host, port, expected = parse_endpoint(peer)
            self._initial_peers.append((await resolve(host, port), expected))
        results = await self._ping_initial_peers(self.config.bootstrap_timeout)
        if not any(isinstance(r, Response) for r in results):
            reasons = "; ".join(f"{p}: {r}" for p, r in zip(initial_peers, results, strict=True))
            message = f"none of the {len(initial_peers)} initial peers answered ({reasons})"
            if self.config.require_initial_peer:
                raise DHTBootstrapError(message)
            logger.warning("%s; starting anyway and retrying them with backoff", message)
            self._next_rejoin = asyncio.get_running_loop().time() + self._rejoin_interval
            self._start_joining()
            return
        await self._lookup(self.node_id, self.config.bucket_size)  # section 2.3: join by looking up own id

    @property
    def joined(self) -> bool:
        """Whether the routing table holds a live contact (False while no initial peer has answered)."""
        return self.core.routing.has_live()

    async def set_initial_peers(self, initial_peers: Sequence[str]) -> None:
        """Replace the peers pinged to (re)join (e.g. a project's bootstrap peers re-read from its portal),
        reset the rejoin backoff and, if no contact is live, start joining through them now."""
        resolved = []
        for peer in initial_peers:
            host, port, expected = parse_endpoint(peer)
            resolved.append((await resolve(host, port), expected))
        self._initial_peers = resolved
        self._rejoin_interval = self.config.rejoin_min_interval
        self._next_rejoin = 0.0
        if not self.joined:
            self._start_joining()

    def _start_joining(self) -> None:
        if self._join_task is None or self._join_task.done():
            self._join_task = self._spawn(self._join_when_answered(), "join")

    async def _join_when_answered(self) -> None:
        """Ping the initial peers (spaced by the rejoin backoff) until one answers, then join by looking up
        our own id; what a node that started without any peer does in the background."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self.joined or await self._rejoin():
                break
            await asyncio.sleep(max(0.05, self._next_rejoin - loop.time()))
        try:
            await self._lookup(self.node_id, self.config.bucket_size)
        except DHTError as exc:
            logger.info("joining lookup failed: %s", exc)

    async def _ping_initial_peers(self, timeout: float) -> list[Response | BaseException]:
        results = await asyncio.gather(
            *(self._call(addr, "ping", {}, expected, timeout) for addr, expected in self._initial_peers),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, Response) and result.peer.node_id not in self.core.routing:
                self.core.routing.observe(result.peer.node_id, *result.address, self._clock.time(), True)
        return results

    async def _rejoin(self) -> bool:
        """Ping the initial peers again; True if any answered. Concurrent callers share one attempt, and
        attempts are spaced by an interval that doubles (rejoin_min_interval .. rejoin_max_interval) while
        nobody answers, so a node cut off for a while finds its way back without flooding anyone."""
        if not self._initial_peers or self._closed:
            return False
        loop = asyncio.get_running_loop()
        task = self._rejoin_task
        if task is None or task.done():
            if loop.time() < self._next_rejoin:
                return False
            task = self._spawn(self._rejoin_once(), "rejoin")
            if task is None:
                return False
            self._rejoin_task = task
        await asyncio.wait({task})  # never cancels the shared attempt on behalf of one caller
        return not task.cancelled() and task.exception() is None and task.result()

    async def _rejoin_once(self) -> bool:
        results = await self._ping_initial_peers(self.config.rpc_timeout)
        answered = sum(isinstance(r, Response) for r in results)
        if answered:
            self._rejoin_interval = self.config.rejoin_min_interval
            logger.info("rejoined the DHT: %d of %d initial peers answered", answered, len(results))
        else:
            logger.warning("no initial peer answered; not trying again for %.0fs", self._rejoin_interval)
        self._next_rejoin = asyncio.get_running_loop().time() + self._rejoin_interval
        if not answered:
            self._rejoin_interval = min(self.config.rejoin_max_interval, 2 * self._rejoin_interval)
        return answered > 0

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(DHTTimeoutError("the node shut down"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            self._transport.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any] | None:
        if self._closed:
            coro.close()
            return None
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("background task %s failed", task.get_name(), exc_info=exc)
            if task.get_name() == _MAINTENANCE:
                self._fail(f"the maintenance task died: {exc!r}")
        elif task.get_name() == _MAINTENANCE and not self._closed:
            self._fail("the maintenance task ended")

    def _fail(self, reason: str) -> None:
        """Stop loudly: a node that cannot receive or maintain itself must not look alive to its callers."""
        if self._closed or self.failure is not None:
            return
        self.failure = reason
        logger.critical("DHT node %s stops: %s", self.node_id.hex()[:12], reason)
        self._shutdown_task = asyncio.get_running_loop().create_task(self.shutdown())

    def _on_transport_lost(self, exc: Exception | None) -> None:
        self._fail(f"the UDP socket was lost: {exc!r}")

    def _ensure_running(self) -> None:
        if self.failure is not None:
            raise DHTNodeStoppedError(f"the DHT node stopped: {self.failure}")

    # -- datagrams in ---------------------------------------------------------------------------------
    def _on_datagram(self, data: bytes, address: Address) -> None:
        if self._closed:
            return
        now = self._clock.time()
        event = self.core.receive(data, address, now)
        if isinstance(event, Response):
            waiter = self._waiters.get(event.rid)
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        elif isinstance(event, Request):
            self._serve(event, now)
        while self.core.actions:
            self._check_contact(self.core.actions.pop())

    def _serve(self, request: Request, now: float) -> None:
        if request.kind in ("rpc", "dialback", "relay", "relayed"):
            if len(self._tasks) > MAX_CONCURRENT_RPC_HANDLERS:
                self._reply(request, "err", {"e": "busy"}, now)
            else:
                self._spawn(self._serve_async(request), f"{request.kind}-{request.peer.endpoint}")
            return
        handler = {
            "ping": self.core.handle_ping,
            "store": self.core.handle_store,
            "find": self.core.handle_find,
            "probe": self.nat.handle_probe,
            "reserve": self.nat.handle_reserve,
        }
        if request.kind == "ping" and "n" in request.payload:
            self.nat.on_ping(request)
        try:
            kind, payload = handler[request.kind](request, now)
        except Exception:  # a bug must cost one answer, never the node
            logger.exception("error handling %s from %s", request.kind, request.peer.endpoint)
            kind, payload = "err", {"e": "internal error"}
        self._reply(request, kind, payload, now)

    def _reply(self, request: Request, kind: str, payload: dict[str, Any], now: float) -> None:
        try:
            data = self.core.respond(request, kind, payload, now)
        except WireError as exc:
            logger.warning("answer to %s too large: %s", request.peer.endpoint, exc)
            data = self.core.respond(request, "err", {"e": "answer too large"}, now)
        self._transport.sendto(data, request.address)

    async def _serve_async(self, request: Request) -> None:
        handlers = {
            "rpc": self._run_rpc,
            "dialback": self.nat.handle_dialback,
            "relay": self.nat.handle_relay,
            "relayed": self.nat.handle_relayed,
        }
        try:
            kind, payload = await handlers[request.kind](request)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must cost one answer, never the node
            logger.exception("error handling %s from %s", request.kind, request.peer.endpoint)
            kind, payload = "err", {"e": "internal error"}
        self._reply(request, kind, payload, self._clock.time())

    async def _run_rpc(self, request: Request) -> tuple[str, dict[str, Any]]:
        """Run an app-level RPC handler (direct or relayed request); the answer's kind and payload."""
        name, args = request.payload.get("n"), request.payload.get("p")
        handler = self._rpc_handlers.get(name) if isinstance(name, str) else None
        if handler is None or not isinstance(args, dict):
            return "err", {"e": f"unknown rpc {name!r} or malformed payload"}
        try:
            async with asyncio.timeout(RPC_HANDLER_TIMEOUT):
                result = await handler(request.peer, args)
            if not isinstance(result, dict):
                raise TypeError(f"rpc handler {name!r} returned {type(result).__name__}, not dict")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("rpc %s from %s failed: %s", name, request.peer.endpoint, exc)
            return "err", {"e": f"{type(exc).__name__}: {exc}"}
        return "ok", {"p": result}

    def _check_contact(self, action: RoutingAction) -> None:
        """Ping the oldest contact of a full bucket, or a known id's new address (section 2.2)."""
        contact = action.contact
        if contact.node_id in self._checking or len(self._checking) >= self.config.max_routing_checks:
            return
        self._checking.add(contact.node_id)
        address = contact.address if action.reason is AddResult.PING_OLDEST else action.candidate_address
        self._spawn(self._ping_contact(contact.node_id, address, action.reason), "routing-check")

    async def _ping_contact(self, node_id: bytes, address: Address, reason: AddResult) -> None:
        try:
            await self._call(address, "ping", {}, node_id, self._timer.timeout)
        except DHTError:
            if reason is AddResult.PING_OLDEST:
                self.core.routing.mark_failed(node_id, max_failures=1)
        finally:
            self._checking.discard(node_id)

    # -- requests out ---------------------------------------------------------------------------------
    async def _call(
        self, address: Address, kind: str, payload: dict[str, Any], expected_id: bytes | None, timeout: float
    ) -> Response:
        if self._closed:
            raise DHTTimeoutError("the node is shut down")
        try:
            rid, data = self.core.request(kind, payload, address, expected_id, self._clock.time())
        except WireError as exc:
            raise DHTRPCError(f"request too large: {exc}") from exc
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = waiter
        started = time.monotonic()
        try:
            if not self._transport.sendto(data, address):
                raise DHTRPCError(f"cannot send {kind} to {address!r}")
            response = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self._timer.timed_out()
            if expected_id is not None:
                self.core.routing.mark_failed(expected_id, self.config.max_failures)
            raise DHTTimeoutError(
                f"{kind} to {format_endpoint(address)} timed out after {timeout:.2f}s"
            ) from None
        finally:
            self._waiters.pop(rid, None)
            self.core.forget(rid)
        self._timer.update(time.monotonic() - started)
        if response.kind == "err":
            raise DHTRPCError(str(response.payload.get("e", "remote error")))
        return response

    # -- app-level RPC --------------------------------------------------------------------------------
    def register_rpc(self, name: str, handler: RPCHandler) -> None:
        self._rpc_handlers[name] = handler

    async def call_rpc(
        self,
        endpoint: str,
        name: str,
        payload: dict[str, Any],
        timeout: float,
        expected_node_id: bytes | None = None,
    ) -> tuple[PeerInfo, dict[str, Any]]:
        self._ensure_running()
        try:
            host, port, pinned = parse_endpoint(endpoint)
            address = numeric_address(*await resolve(host, port), self.core.ip_version)
        except ValueError as exc:  # endpoints often come from records anyone may write
            raise DHTRPCError(f"cannot call {endpoint!r}: {exc}") from None
        response = await self._call(
            address, "rpc", {"n": name, "p": payload}, expected_node_id or pinned, timeout
        )
        result = response.payload.get("p")
        if not isinstance(result, dict):
            raise DHTRPCError("malformed rpc answer")
        return response.peer, result

    async def call_rpc_via_relay(
        self, relay: str, target_id: bytes, name: str, payload: dict[str, Any], timeout: float
    ) -> tuple[PeerInfo, dict[str, Any]]:
        self._ensure_running()
        return await self.nat.call_via_relay(relay, target_id, name, payload, timeout)

    def register_validator(self, namespace_prefix: str, validator: RecordValidator) -> None:
        self.core.validators.register(namespace_prefix, validator)

    # -- lookups (section 2.3) ------------------------------------------------------------------------
    async def _lookup(
        self, target: bytes, beam: int, key: str | None = None, stop_on_value: bool = False
    ) -> tuple[LookupState, Merged, set[bytes]]:
        """A lookup that rejoins through the initial peers first when no contact is live, and once more
        (then looks up again) when nobody answered: a node cut off for a while recovers by itself."""
        if not self.core.routing.has_live():
            await self._rejoin()
        result = await self._lookup_once(target, beam, key, stop_on_value)
        if not result[0].closest_responded(1) and await self._rejoin():
            result = await self._lookup_once(target, beam, key, stop_on_value)
        return result

    async def _lookup_once(
        self, target: bytes, beam: int, key: str | None = None, stop_on_value: bool = False
    ) -> tuple[LookupState, Merged, set[bytes]]:
        """Iterative parallel lookup; returns the state, records found (if ``key``) and who had them."""
        state = LookupState(target, beam, self.config.alpha, self.node_id)
        width = max(beam, self.config.bucket_size)
        routing = self.core.routing  # stale contacts are tried only when no live one is left
        for contact in routing.nearest(target, width) or routing.nearest(target, width, include_stale=True):
            state.add(contact.node_id, contact.address)
        self.core.routing.touch(target, self._clock.time())
        merged: Merged = {}
        had_value: set[bytes] = set()
        inflight: dict[asyncio.Task[FindResult], bytes] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.lookup_timeout
        try:
            while True:
                for node_id, address in state.next_queries():
                    inflight[loop.create_task(self._find(node_id, address, target, key))] = node_id
                if state.finished or not inflight or loop.time() >= deadline:
                    break
                done, _ = await asyncio.wait(
                    inflight, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    node_id = inflight.pop(task)
                    try:
                        nodes, records = task.result()
                    except DHTError:
                        state.on_failure(node_id)
                        continue
                    state.on_success(node_id, [n for n in nodes if not routing.is_stale(n[0])])
                    if records:
                        had_value.add(node_id)
                        self._merge(merged, records)
                        if stop_on_value:
                            state.stop()
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
        self.last_lookup = state
        return state, merged, had_value

    async def _find(self, node_id: bytes, address: Address, target: bytes, key: str | None) -> FindResult:
        """One node's answer to a find, following its cursor through truncated answers (bounded pages)."""
        query: list[Any] = [target, key]
        response = await self._call(address, "find", {"q": [query]}, node_id, self._timer.timeout)
        nodes, records, cursor = self._parse_find(response, key)
        for _ in range(MAX_FIND_PAGES - 1):
            if cursor is None:
                return nodes, records
            try:
                response = await self._call(
                    address, "find", {"q": [[*query, cursor_to_wire(cursor)]]}, node_id, self._timer.timeout
                )
                _, more, next_cursor = self._parse_find(response, key)
            except DHTError as exc:  # keep the pages we have: they are verified records
                logger.info("find %r at %s stopped after a page: %s", key, format_endpoint(address), exc)
                return nodes, records
            records.extend(more)
            cursor = next_cursor if next_cursor is not None and next_cursor > cursor else None
        if cursor is not None:
            logger.info(  # info, not warning: a flooded key would log on every read
                "%s holds more than %d pages under %r; reading the first %d",
                format_endpoint(address),
                MAX_FIND_PAGES,
                key,
                MAX_FIND_PAGES,
            )
        return nodes, records

    def _parse_find(
        self, response: Response, key: str | None
    ) -> tuple[list[tuple[bytes, Address]], list[tuple[SignedRecord, RecordView]], Cursor | None]:
        answers = response.payload.get("a")
        if not isinstance(answers, list) or len(answers) != 1 or not isinstance(answers[0], list):
            raise DHTRPCError("malformed find answer")
        answer = answers[0]
        nodes = self.core.parse_contacts(answer[0] if answer else None, response.peer, self._clock.time())
        records: list[tuple[SignedRecord, RecordView]] = []
        cursor: Cursor | None = None
        if key is not None and len(answer) > 1:
            for entry in self.core.check_records(answer[1], response.peer, self._clock.time()):
                if entry is not None and entry[0].key == key:
                    records.append(entry)
            if len(answer) > 3 and answer[2] is True and answer[3] is not None:
                try:
                    cursor = cursor_from_wire(answer[3])
                except WireError as exc:
                    logger.debug("ignoring a bad cursor from %s: %s", response.peer.endpoint, exc)
        return nodes, records, cursor

    def _merge(self, merged: Merged, records: Iterable[tuple[SignedRecord, RecordView]]) -> None:
        for record, view in records:
            current = merged.get(record.subkey)
            if current is None or self.core.validators.prefers(view, current[1]):
                merged[record.subkey] = (record, view)

    async def find_nearest(self, target: bytes, count: int | None = None) -> list[tuple[bytes, str]]:
        """The ``count`` (default k) live nodes nearest ``target``: (node id, endpoint), nearest first."""
        self._ensure_running()
        count = count or self.config.bucket_size
        state, _, _ = await self._lookup(target, count)
        return [(node_id, format_endpoint(address)) for node_id, address in state.closest_responded(count)]

    # -- store ----------------------------------------------------------------------------------------
    async def store(self, key: str, value: Any, expiration: float, subkey: str | None = None) -> bool:
        return (await self.store_many([(key, subkey, value, expiration)]))[0]

    async def store_many(self, items: Iterable[tuple[str, str | None, Any, float]]) -> list[bool]:
        self._ensure_running()
        now = self._clock.time()
        results: list[bool] = []
        by_key: dict[str, list[tuple[int, SignedRecord]]] = {}
        for index, (key, subkey, value, expiration) in enumerate(items):
            record = sign_record(self.identity, key, subkey, value, expiration)
            results.append(False)
            try:
                self.core.validators.check(record, now)
            except ExpiredRecordError:
                continue
            by_key.setdefault(key, []).append((index, record))
            self._own_records[(key, subkey)] = record
        outcomes = await asyncio.gather(
            *(self._store_records(key, [r for _, r in entries]) for key, entries in by_key.items())
        )
        for entries, stored in zip(by_key.values(), outcomes, strict=True):
            for (index, _), ok in zip(entries, stored, strict=True):
                results[index] = ok
        return results

    async def _store_records(self, key: str, records: list[SignedRecord]) -> list[bool]:
        """Replicate to the ``num_replicas`` nearest live nodes (and here, if we are among them)."""
        target = key_id(key)
        replicas = self.config.num_replicas
        state, _, _ = await self._lookup(target, replicas)
        nearest = state.closest_responded(replicas)
        stored = [False] * len(records)
        if not self.client_mode and (
            len(nearest) < replicas or distance(self.node_id, target) < distance(nearest[-1][0], target)
        ):
            now = self._clock.time()
            for i, record in enumerate(records):
                view = self.core.validators.check(record, now)
                stored[i] = self.core.store_locally(record, view, now)
        sends = [self._send_records(node_id, address, records) for node_id, address in nearest]
        for accepted in await asyncio.gather(*sends):
            stored = [a or b for a, b in zip(stored, accepted, strict=True)]
        return stored

    async def _send_records(
        self, node_id: bytes, address: Address, records: list[SignedRecord]
    ) -> list[bool]:
        accepted: list[bool] = []
        for chunk in self._chunks(records):
            try:
                response = await self._call(
                    address, "store", {"r": [r.to_wire() for r in chunk]}, node_id, self._timer.timeout
                )
                flags = response.payload.get("ok")
                if isinstance(flags, list) and len(flags) == len(chunk):
                    accepted.extend(bool(f) is True for f in flags)
                else:
                    accepted.extend([False] * len(chunk))
            except DHTError as exc:
                logger.debug("store to %s failed: %s", format_endpoint(address), exc)
                accepted.extend([False] * len(chunk))
        return accepted

    def _chunks(self, records: list[SignedRecord]) -> Iterable[list[SignedRecord]]:
        budget = self.config.max_datagram - _STORE_CHUNK_OVERHEAD
        chunk: list[SignedRecord] = []
        used = 0
        for record in records:
            size = len(record.value_bytes) + len(record.key) + len(record.subkey or "") + 120
            if chunk and (used + size > budget or len(chunk) >= MAX_RECORDS_PER_STORE):
                yield chunk
                chunk, used = [], 0
            chunk.append(record)
            used += size
        if chunk:
            yield chunk

    # -- get ------------------------------------------------------------------------------------------
    async def get(self, key: str, latest: bool = False) -> dict[str | None, ValueWithExpiration]:
        self._ensure_running()
        target = key_id(key)
        merged: Merged = {}
        if not self.client_mode:
            self._merge(
                merged, (e for e in self.core.store.get(target, self._clock.time()) if e[0].key == key)
            )
        if not merged or latest:
            state, found, had_value = await self._lookup(
                target, self.config.num_replicas, key=key, stop_on_value=not latest
            )
            self._merge(merged, found.values())
            if merged and self.config.cache_on_get:
                self._cache_along_path(state, had_value, [r for r, _ in merged.values()])
        now = self._clock.time()
        return {
            subkey: ValueWithExpiration(view.value, view.expiration, view.owner)
            for subkey, (_, view) in merged.items()
            if view.expiration > now
        }

    async def get_many(
        self, keys: Sequence[str], latest: bool = False
    ) -> dict[str, dict[str | None, ValueWithExpiration]]:
        results = await asyncio.gather(*(self.get(key, latest) for key in keys))
        return dict(zip(keys, results, strict=True))

    def _cache_along_path(
        self, state: LookupState, had_value: set[bytes], records: list[SignedRecord]
    ) -> None:
        """Section 2.3: store the found value at the nearest node that answered without it."""
        for node_id, address in state.closest_responded(self.config.num_replicas):
            if node_id not in had_value:
                self._spawn(self._send_records(node_id, address, records), "cache-on-get")
                return

    # -- maintenance (sections 2.3 and 2.5) -----------------------------------------------------------
    async def _maintain(self) -> None:
        """Refresh stale buckets and republish, forever; a round that fails unexpectedly is retried with
        backoff, and after ``max_task_failures`` such rounds in a row the node stops loudly."""
        period = max(1.0, min(self.config.refresh_interval, self.config.republish_interval) / 4)
        self._last_republish = self._clock.time()
        failures = 0
        while True:
            await self._clock.sleep(period if failures == 0 else min(period, 2.0 ** (failures - 1)))
            try:
                await self._maintenance_round()
                failures = 0
            except DHTError as exc:
                logger.info("maintenance round failed: %s", exc)
            except Exception:
                failures += 1
                logger.exception("maintenance round failed unexpectedly (%d in a row)", failures)
                if failures >= self.config.max_task_failures:
                    self._fail(f"maintenance failed {failures} times in a row")
                    return

    async def _maintenance_round(self) -> None:
        now = self._clock.time()
        self.core.store.expire(now)
        if not self.core.routing.has_live():
            await self._rejoin()
        for bucket in self.core.routing.stale_buckets(now, self.config.refresh_interval):
            offset = int.from_bytes(os.urandom(ID_BYTES), "big") % (bucket.hi - bucket.lo)
            await self._lookup((bucket.lo + offset).to_bytes(ID_BYTES, "big"), self.config.bucket_size)
        if now - self._last_republish >= self.config.republish_interval:
            self._last_republish = now
            await self.republish()

    async def republish(self) -> int:
        """Re-send our own live records to the current nearest nodes, so they outlive churn."""
        self._ensure_running()
        now = self._clock.time()
        by_key: dict[str, list[SignedRecord]] = {}
        for (key, subkey), record in list(self._own_records.items()):
            if record.expiration <= now:
                del self._own_records[(key, subkey)]
            else:
                by_key.setdefault(key, []).append(record)
        await asyncio.gather(*(self._store_records(key, records) for key, records in by_key.items()))
        return sum(len(v) for v in by_key.values())
