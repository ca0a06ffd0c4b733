"""Reachability checks and relayed signalling for a :class:`~node_agent.dht.node.DHTNode` (the asyncio side).

Wire (request kinds of :mod:`node_agent.dht.messages`; every datagram signed as usual):

* ``dialback {"n": nonce}``: "have someone else ping me". The asked peer B picks a helper C from its
  routing table (not the asker) and sends it ``probe {"a": <asker's address as B saw it>, "n": nonce}``;
  it answers ``{"sent": bool}``. C sends one ``ping {"n": nonce}`` to that address and forgets it. Cost is
  bounded: B and C take at most ``dial_backs_per_second`` per source key, B only ever names the address the
  request came from (so nobody can aim probes at a third party through B), and one request makes exactly one
  small datagram at the target (no amplification).
* ``reserve {}``: an unreachable node asks a reachable one to relay for it; the answer carries the caps.
  Renewed every ``relay_keepalive`` seconds, which also keeps the NAT mapping towards the relay open.
* ``relay {"to": node id, "d": datagram}``: a caller asks a relay to pass ``d`` (an ``rpc`` request the
  caller sealed for ``to``; signalling only) to a node holding a reservation; answered ``{"d": <the node's
  sealed answer>}``. The relay sends ``relayed {"d": datagram, "src": [host, port]}`` to the node, which
  accepts it only from its own relays, verifies ``d`` end to end and answers with its own sealed response.

Reachability drives storage duty: an unreachable node switches to client mode (the ``c`` flag in its
messages), so it stores nothing for others and others drop it from their routing tables; it still stores
its own records, serves experts (offers come through its relays) and trains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from node_agent.dht.api import ID_BYTES, DHTError, DHTRPCError, PeerInfo
from node_agent.dht.endpoints import format_endpoint, parse_endpoint, wire_address
from node_agent.dht.messages import RID_BYTES, seal
from node_agent.dht.protocol import Request
from node_agent.dht.ratelimit import CostBuckets
from node_agent.dht.reachability import Reachability, dial_back_outcome
from node_agent.dht.relaying import RelayBook, RelayCaps, RelayRefused, relayable
from node_agent.wire import WireError

if TYPE_CHECKING:
    from node_agent.dht.node import DHTNode

logger = logging.getLogger(__name__)

NONCE_BYTES = 16
DIAL_BACK_ASKS = 3  # peers asked per check (each arranges one probe)
HELPER_CANDIDATES = 3  # helpers an asked peer tries before it gives up
UNREACHABLE_CONFIRMATIONS = 2  # unreachable verdicts in a row before a node gives up storage duty
UNREACHABLE_RECHECK = 3.0  # seconds before the confirming check
FIRST_CHECK_SPREAD = 5.0  # seconds over which the first dial-backs of nodes started together spread
EARLY_CHECKS = 5  # a node with no verdict yet (too few peers) asks again after EARLY_RETRY, this many times
EARLY_RETRY = 5.0
_RATE_KEYS = 65_536
Address = tuple[str, int]
RelaysListener = Callable[[list[str]], None]


class NatService:
    """Owns a node's reachability state, its relays (when unreachable) and its relay duty (when not)."""

    def __init__(self, node: DHTNode) -> None:
        self.node = node
        config = node.config
        self.config = config
        self.explicit_client = node.core.client_mode  # a client by choice never serves or relays
        self.reachability = {
            "public": Reachability.REACHABLE,
            "private": Reachability.UNREACHABLE,
        }.get(config.reachability, Reachability.UNKNOWN)
        self.checked_at: float | None = None
        self.book = RelayBook(
            RelayCaps(
                config.relay_max_reservations,
                config.relay_ttl,
                config.relay_window,
                config.relay_max_messages,
                config.relay_max_bytes,
                config.relay_max_message,
            )
        )
        self._asks = CostBuckets(config.dial_backs_per_second, config.dial_back_burst, _RATE_KEYS)
        self._probes = CostBuckets(config.dial_backs_per_second, config.dial_back_burst, _RATE_KEYS)
        self._nonces: dict[bytes, tuple[bytes, asyncio.Event]] = {}  # nonce -> (asked peer, arrived)
        self.relays: dict[bytes, Address] = {}  # our relays (node id -> address), when unreachable
        self._relay_failed: dict[bytes, float] = {}  # relay id -> monotonic time it failed us
        self._listeners: list[RelaysListener] = []
        self._wake = asyncio.Event()
        self._unreachable_streak = 0
        self._checks = 0
        if self.reachability is Reachability.UNREACHABLE and not self.explicit_client:
            node.core.client_mode = True  # before the first datagram: never enter others' tables

    # -- state --------------------------------------------------------------------------------------
    @property
    def relay_endpoints(self) -> list[str]:
        """Our relays as ``host:port/<node id hex>`` (what announcements carry), sorted for stability."""
        return sorted(f"{format_endpoint(addr)}/{node_id.hex()}" for node_id, addr in self.relays.items())

    def add_listener(self, listener: RelaysListener) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        """Apply a forced reachability now and start the loop (not for a client by choice)."""
        if self.explicit_client:
            return
        self._apply(self.reachability)
        self.node._spawn(self._run(), "nat")

    def _apply(self, outcome: Reachability) -> None:
        if outcome is Reachability.UNKNOWN:
            return
        changed = outcome is not self.reachability
        self.reachability = outcome
        unreachable = outcome is Reachability.UNREACHABLE
        self.node.core.client_mode = unreachable
        if changed:
            logger.info(
                "this node is %s from outside%s",
                outcome.value,
                ": acting as a client and keeping relays" if unreachable else "",
            )
        if not unreachable and self.relays:
            self.relays.clear()
            self._notify()
        if unreachable:
            self.book = RelayBook(self.book.caps)  # an unreachable node relays for nobody
        self._wake.set()

    def _notify(self) -> None:
        endpoints = self.relay_endpoints
        for listener in self._listeners:
            try:
                listener(endpoints)
            except Exception:
                logger.exception("relay listener failed")

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        """Check reachability and keep relays, forever; an unexpected error costs one round, not the loop."""
        next_check: float | None = None  # first check: soon after joining, spread over FIRST_CHECK_SPREAD
        while not self.node._closed:
            try:
                next_check = await self._round(next_check)
            except Exception:
                logger.exception("reachability round failed")
                next_check = time.monotonic() + self.config.dial_back_retry
            self._wake.clear()
            timeout = self.config.relay_keepalive
            if self.config.reachability == "auto":
                until = 1.0 if next_check is None else next_check - time.monotonic()
                timeout = min(timeout, max(0.1, until))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _round(self, next_check: float | None) -> float | None:
        """A dial-back if one is due, then relay keep-alives; returns when the next check is due."""
        now = time.monotonic()
        if next_check is None and self.node.joined:
            next_check = now + random.uniform(0.5, 0.5 + FIRST_CHECK_SPREAD)
        if self.config.reachability == "auto" and next_check is not None and now >= next_check:
            outcome = await self.check()
            self._checks += 1
            if outcome is Reachability.UNREACHABLE:
                self._unreachable_streak += 1
            elif outcome is Reachability.REACHABLE:
                self._unreachable_streak = 0  # "unknown" is no evidence either way
            wait = self.config.dial_back_interval
            if 0 < self._unreachable_streak < UNREACHABLE_CONFIRMATIONS:
                wait = UNREACHABLE_RECHECK  # one verdict may come from a loaded moment: ask again soon
            else:
                self._apply(outcome)
                if self.reachability is Reachability.UNKNOWN:  # e.g. too few peers yet: soon at first
                    early = self._checks <= EARLY_CHECKS
                    wait = (
                        min(EARLY_RETRY, self.config.dial_back_retry)
                        if early
                        else self.config.dial_back_retry
                    )
            next_check = time.monotonic() + wait
        if self.reachability is Reachability.UNREACHABLE:
            await self._keep_relays()
        return next_check

    # -- dial-back: the asker -----------------------------------------------------------------------
    async def check(self) -> Reachability:
        """Ask up to DIAL_BACK_ASKS peers for a dial-back; reachable if any stranger's probe arrives."""
        peers = self.node.core.routing.nearest(os.urandom(ID_BYTES), 2 * DIAL_BACK_ASKS)
        random.shuffle(peers)
        peers = peers[:DIAL_BACK_ASKS]
        if not peers:
            return Reachability.UNKNOWN
        arrived = asyncio.Event()
        nonces = {os.urandom(NONCE_BYTES): peer for peer in peers}  # one per asked peer: its probe must
        for nonce, peer in nonces.items():  # come from someone else
            self._nonces[nonce] = (peer.node_id, arrived)
        try:
            answers = await asyncio.gather(
                *(self._ask_dial_back(p.node_id, p.address, n) for n, p in nonces.items()),
                return_exceptions=True,
            )
            sent = [answer is True for answer in answers]
            if any(sent) and not arrived.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), self.config.dial_back_wait)
        finally:
            for nonce in nonces:
                del self._nonces[nonce]
        self.checked_at = time.time()
        outcome = dial_back_outcome(sent, arrived.is_set(), min_confirmed=min(2, len(peers)))
        logger.info("dial-back: %s (%d of %d helpers sent a probe)", outcome.value, sum(sent), len(peers))
        return outcome

    async def _ask_dial_back(self, node_id: bytes, address: Address, nonce: bytes) -> bool:
        timeout = self.config.rpc_timeout * 2  # the asked peer waits for its helper first
        response = await self.node._call(address, "dialback", {"n": nonce}, node_id, timeout)
        return response.payload.get("sent") is True

    def on_ping(self, request: Request) -> None:
        """A ping carrying a nonce of ours from another peer than the one we gave it to: a stranger's packet
        reached us."""
        nonce = request.payload.get("n")
        entry = self._nonces.get(nonce) if isinstance(nonce, bytes) else None
        if entry is not None and request.peer.node_id != entry[0]:
            entry[1].set()

    # -- dial-back: the asked peer and the helper ---------------------------------------------------
    async def handle_dialback(self, request: Request) -> tuple[str, dict[str, Any]]:
        nonce = request.payload.get("n")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            return "err", {"e": "dialback needs a 16-byte nonce"}
        if not self._asks.take(self._rate_key(request), 1.0, time.monotonic()):
            return "err", {"e": "too many dial-back requests"}
        helpers = [
            c
            for c in self.node.core.routing.nearest(os.urandom(ID_BYTES), 4 * HELPER_CANDIDATES)
            if c.node_id != request.peer.node_id and c.address != request.address
        ][:HELPER_CANDIDATES]
        target = [request.address[0], request.address[1]]  # only ever the asker's own address
        timeout = self.config.rpc_timeout
        for helper in helpers:
            try:
                response = await self.node._call(
                    helper.address, "probe", {"a": target, "n": nonce}, helper.node_id, timeout
                )
            except DHTError:
                continue
            if response.payload.get("sent") is True:
                return "ok", {"sent": True}
        return "ok", {"sent": False}

    def _rate_key(self, request: Request) -> object:
        """Whose budget a dial-back or probe is charged to (`ProtocolCore.accountable_key`)."""
        return self.node.core.accountable_key(request.peer.node_id, request.address)

    def handle_probe(self, request: Request, now: float) -> tuple[str, dict[str, Any]]:
        nonce = request.payload.get("n")
        try:
            target = wire_address(request.payload.get("a"))
        except ValueError as exc:
            return "err", {"e": f"bad probe address: {exc}"}
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            return "err", {"e": "probe needs a 16-byte nonce"}
        if request.client_mode or not self._probes.take(self._rate_key(request), 1.0, time.monotonic()):
            return "err", {"e": "probe refused"}
        node = self.node
        data = seal(
            node.identity,
            "ping",
            os.urandom(RID_BYTES),
            now,
            b"",
            True,
            {"n": nonce},
            self.config.max_datagram,
        )
        return "ok", {"sent": bool(node._transport.send_once(data, target))}

    # -- relays: the unreachable node ---------------------------------------------------------------
    async def _keep_relays(self) -> None:
        """Renew our reservations, drop relays that fail, reserve new ones up to ``relay_count``."""
        before = set(self.relays)
        renewals = await asyncio.gather(
            *(self._reserve(node_id, address) for node_id, address in self.relays.items())
        )
        now = time.monotonic()
        for (node_id, _), ok in zip(list(self.relays.items()), renewals, strict=True):
            if not ok:
                logger.info("relay %s stopped answering; replacing it", node_id.hex()[:8])
                self._relay_failed[node_id] = now
                del self.relays[node_id]
        if len(self.relays) < self.config.relay_count:
            avoid_for = 4 * self.config.relay_keepalive
            candidates = [
                c
                for c in self.node.core.routing.nearest(self.node.node_id, self.config.bucket_size)
                if c.node_id not in self.relays and now - self._relay_failed.get(c.node_id, -1e9) > avoid_for
            ]
            for contact in candidates:
                if len(self.relays) >= self.config.relay_count:
                    break
                if await self._reserve(contact.node_id, contact.address):
                    self.relays[contact.node_id] = contact.address
                else:
                    self._relay_failed[contact.node_id] = now
        if set(self.relays) != before:
            logger.info("relays now: %s", ", ".join(self.relay_endpoints) or "none")
            self._notify()

    async def _reserve(self, node_id: bytes, address: Address) -> bool:
        try:
            await self.node._call(address, "reserve", {}, node_id, self.config.rpc_timeout)
        except DHTError as exc:
            logger.debug("reservation at %s failed: %s", format_endpoint(address), exc)
            return False
        return True

    async def handle_relayed(self, request: Request) -> tuple[str, dict[str, Any]]:
        """A relay passes on a request sealed for us: serve it as if it came directly, answer sealed."""
        if request.peer.node_id not in self.relays:
            return "err", {"e": "not one of our relays"}
        try:
            source = wire_address(request.payload.get("src"))
        except ValueError:
            source = request.address
        data = request.payload.get("d")
        try:
            relayable(data, self.config.relay_max_message)
        except RelayRefused as exc:
            return "err", {"e": str(exc)}
        assert isinstance(data, bytes)
        core = self.node.core
        inner = core.receive_relayed(data, source, self.node._clock.time())
        if inner is None:
            return "err", {"e": "relayed request refused"}
        kind, payload = await self.node._run_rpc(inner)
        try:
            answer = core.respond(inner, kind, payload, self.node._clock.time())
        except WireError:
            answer = core.respond(inner, "err", {"e": "answer too large"}, self.node._clock.time())
        return "ok", {"d": answer}

    # -- relays: the relay --------------------------------------------------------------------------
    def handle_reserve(self, request: Request, now: float) -> tuple[str, dict[str, Any]]:
        if self.node.core.client_mode:
            return "err", {"e": "this node is not reachable itself"}
        try:
            reservation = self.book.reserve(request.peer.node_id, request.address, time.monotonic())
        except RelayRefused as exc:
            return "err", {"e": str(exc)}
        caps = self.book.caps
        return "ok", {
            "ttl": reservation.expires - time.monotonic(),
            "caps": [caps.max_messages, caps.max_bytes, caps.max_message, caps.window],
        }

    async def handle_relay(self, request: Request) -> tuple[str, dict[str, Any]]:
        target, data = request.payload.get("to"), request.payload.get("d")
        if not isinstance(target, bytes) or len(target) != ID_BYTES:
            return "err", {"e": "relay needs a 20-byte target id"}
        try:
            answer = await self._forward(target, data, request.address)
        except RelayRefused as exc:
            return "err", {"e": str(exc)}
        return "ok", {"d": answer}

    async def _forward(self, target: bytes, data: object, source: Address) -> bytes:
        """Pass ``data`` to ``target`` (which holds a reservation here) and return its sealed answer; raises
        RelayRefused for what this relay will not pass (caps, not signalling) or when the target is silent."""
        relayable(data, self.book.caps.max_message)
        assert isinstance(data, bytes)
        reservation = self.book.admit(target, len(data), time.monotonic())
        try:
            response = await self.node._call(
                reservation.address,
                "relayed",
                {"d": data, "src": [source[0], source[1]]},
                target,
                self.config.relay_forward_timeout,
            )
        except DHTError as exc:
            raise RelayRefused(f"relayed node did not answer: {exc}") from exc
        answer = response.payload.get("d")
        if not isinstance(answer, bytes):
            raise RelayRefused("relayed node sent no answer")
        self.book.charge_answer(target, len(answer), time.monotonic())
        return answer

    # -- relays: the caller -------------------------------------------------------------------------
    async def call_via_relay(
        self, relay: str, target_id: bytes, name: str, payload: dict[str, Any], timeout: float
    ) -> tuple[PeerInfo, dict[str, Any]]:
        """Send rpc ``name`` to ``target_id`` through ``relay`` (``host:port/<id hex>``), sealed end to
        end."""
        try:
            host, port, relay_id = parse_endpoint(relay)
            address = wire_address([host, port])
        except ValueError as exc:
            raise DHTRPCError(f"bad relay {relay!r}: {exc}") from None
        if relay_id is None:
            raise DHTRPCError(f"relay {relay!r} names no node id")
        core = self.node.core
        rid = os.urandom(RID_BYTES)
        try:
            inner = seal(
                self.node.identity,
                "rpc",
                rid,
                self.node._clock.time(),
                target_id,
                core.client_mode,
                {"n": name, "p": payload},
                self.config.relay_max_message,
            )
        except WireError as exc:
            raise DHTRPCError(f"message too large for a relay: {exc}") from exc
        if relay_id == self.node.node_id:  # we are its relay ourselves: pass it on from here
            try:
                async with asyncio.timeout(timeout):
                    answer: object = await self._forward(target_id, inner, address)
            except (RelayRefused, TimeoutError) as exc:
                raise DHTRPCError(f"relaying to {target_id.hex()[:8]} ourselves failed: {exc}") from exc
        else:
            response = await self.node._call(
                address, "relay", {"to": target_id, "d": inner}, relay_id, timeout
            )
            answer = response.payload.get("d")
        try:
            envelope = core.open_relayed_response(answer, rid, target_id, self.node._clock.time())
        except WireError as exc:
            logger.warning("relay %s passed on a bad answer: %s", relay, exc)
            raise DHTRPCError(f"relay {relay} passed on an answer that fails verification: {exc}") from exc
        if envelope.kind == "err":
            raise DHTRPCError(str(envelope.payload.get("e", "remote error")))
        result = envelope.payload.get("p")
        if not isinstance(result, dict):
            raise DHTRPCError("malformed rpc answer")
        return PeerInfo(envelope.node_id, envelope.public_key, relay), result
