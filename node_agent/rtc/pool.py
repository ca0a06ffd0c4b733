"""One WebRTC peer connection per pair of peers, set up through signed DHT RPCs and reused for every call.

Signalling (docs/architecture.md, 3.3): the caller sends its SDP offer as the app-level DHT RPC `rtc.offer`
to the peer's DHT endpoint, pinned to the peer's node id; the answer comes back in the signed reply. There
is no trickle ICE in aiortc, so that one round trip carries all candidates. After the DTLS handshake both
sides check the remote certificate against the fingerprint in the SDP the other signed
(`node_agent.rtc.fingerprint`) and drop the connection on a mismatch. A peer that announced relays (it is
unreachable from outside, `node_agent.dht.nat`) gets the offer through one of them, still sealed end to end
by the DHT (`call_rpc_via_relay`): a relay can drop an offer or answer, never forge or alter one.

Concurrent callers share the connection being set up; a connection idle for `idle_timeout` is closed; a
dropped connection is forgotten so the next call sets up a fresh one.

Incoming offers pass `admission.Admission` first (rates, connection counts, tiers: a credential carried in
the offer as `cred`, or a key that already made calls, ranks above an unknown key); a refusal allocates
nothing and is answered `{"refused": reason}`, logged at most once per `REFUSAL_LOG_PERIOD`. Unfinished
incoming messages share byte budgets per peer and per node (`framing.ByteBudget`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from node_agent.dht.api import DHTError, DHTNodeAPI, PeerInfo
from node_agent.dht.endpoints import outward_ip, parse_endpoint
from node_agent.rtc.admission import Admission, Slot, Tier
from node_agent.rtc.config import IceServer, RTCOptions, apply_process_settings, new_peer_connection
from node_agent.rtc.fingerprint import FingerprintMismatchError, verify_peer_connection
from node_agent.rtc.framing import ByteBudget
from node_agent.rtc.large_records import large_record_reads_installed
from node_agent.rtc.paths import selected_path
from node_agent.rtc.record_probing import start_record_probing
from node_agent.rtc.rpc import ChannelRPC, Handler, RPCHandlerError
from node_agent.supervisor import TaskSupervisor

if TYPE_CHECKING:  # aiortc loads only when a connection is made
    from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)

OFFER_RPC = "rtc.offer"
MAX_SDP_BYTES = 16 * 1024
CHANNEL_LABEL = "colearn-rpc"
MAX_CREDENTIAL_CHARS = 4096
REFUSAL_LOG_PERIOD = 10.0


class ConnectError(Exception):
    """No verified data channel to the peer: unreachable, refused, timed out or wrong fingerprint."""


class ConnectRefusedError(ConnectError):
    """The peer answered but refused a connection now (its limits: load, rates), not a failure of ours."""


class CredentialChecker(Protocol):
    """`node_agent.portal.gate.CredentialPolicy`: raises a ValueError subclass if `token` is not valid."""

    def check(self, token: object, *, owner: bytes, now: float) -> Any: ...


@dataclass(slots=True)
class PeerLink:
    """A verified connection to one peer and the RPC endpoint on its data channel."""

    node_id: bytes
    peer_connection: Any
    rpc: ChannelRPC
    outbound: bool
    opened_at: float = field(default_factory=time.monotonic)
    #: Inbound links: the sender's address and what it ranked as when admitted.
    host: str = ""
    tier: Tier = Tier.UNKNOWN
    #: Searching the largest SCTP packet the path carries (`record_probing`); None: standard chunks.
    prober: Any = None
    prober_task: asyncio.Future[None] | None = None

    @property
    def alive(self) -> bool:
        return not self.rpc.closed and self.peer_connection.connectionState not in ("failed", "closed")


class ConnectionPool:
    """Owns this node's peer connections; `handler` serves calls that remote peers make to us."""

    def __init__(
        self,
        dht: DHTNodeAPI,
        handler: Handler | None,
        options: RTCOptions,
        credentials: CredentialChecker | None = None,
        credential: str | None = None,
    ) -> None:
        self.dht = dht
        self.handler = handler
        self.options = options
        #: Checks credentials that offers carry (gated projects); without it every offer is uncredentialed.
        self.credentials = credentials
        #: Our own credential, carried in our offers and answers (`set_credential` on renewal).
        self.credential = credential
        self.admission = Admission(options.admission, time.monotonic())
        self._outbound: dict[bytes, PeerLink] = {}
        self._inbound: dict[bytes, list[PeerLink]] = {}
        self._handshakes: dict[int, _Handshake] = {}
        self._connecting: dict[bytes, asyncio.Future[PeerLink]] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._loops = TaskSupervisor("connection pool")  # the idle reaper: restarted if it dies
        self._closed = False
        self.accepting = True
        self._total_budget = ByteBudget(options.max_node_partial_bytes, "node", self._reclaim)
        self._peer_budgets: dict[bytes, ByteBudget] = {}
        self._refusals: Counter[str] = Counter()
        self._refusals_logged = 0.0
        self.refused_offers = 0
        #: Why the last admitted inbound connection never opened ("" if none failed): the agent says so.
        self.last_inbound_failure = ""
        self._own_hosts: frozenset[str] | None = None
        #: Extra services on the same connections, by method prefix ("avg." -> the averager's handler).
        self._routes: dict[str, Handler] = {}

    @classmethod
    async def create(
        cls,
        dht: DHTNodeAPI,
        handler: Handler | None = None,
        options: RTCOptions | None = None,
        *,
        credentials: CredentialChecker | None = None,
        credential: str | None = None,
    ) -> ConnectionPool:
        """Register the `rtc.offer` RPC on `dht` (so peers can reach us) and start the idle reaper."""
        pool = cls(dht, handler, options or RTCOptions(), credentials, credential)
        apply_process_settings(pool.options)
        dht.register_rpc(OFFER_RPC, pool.handle_offer)
        pool._loops.start("rtc-idle-reaper", pool._reap_idle)
        return pool

    @property
    def links(self) -> list[PeerLink]:
        return [*self._outbound.values(), *(link for links in self._inbound.values() for link in links)]

    @property
    def handshakes(self) -> int:
        """Inbound connections still being set up."""
        return len(self._handshakes)

    def set_credential(self, credential: str | None) -> None:
        self.credential = credential

    def add_route(self, prefix: str, handler: Handler) -> None:
        """Serve methods starting with `prefix` (e.g. "avg.") with `handler`, on every link old and new."""
        self._routes[prefix] = handler

    def remove_route(self, prefix: str) -> None:
        self._routes.pop(prefix, None)

    async def _serve(self, method: str, body: Any) -> Any:
        for prefix, handler in self._routes.items():
            if method.startswith(prefix):
                return await handler(method, body)
        if self.handler is None:
            raise RPCHandlerError("unknown_method", "this peer serves no calls")
        return await self.handler(method, body)

    def live_link(self, node_id: bytes) -> PeerLink | None:
        """A live link with `node_id` in either direction (calls work both ways on one), or None."""
        link = self._outbound.get(node_id)
        if link is not None and link.alive:
            return link
        return next((link for link in self._inbound.get(node_id, ()) if link.alive), None)

    def set_ice_servers(self, servers: tuple[IceServer, ...]) -> None:
        """STUN/TURN servers for connections made from now on (a renewed TURN credential)."""
        self.options = replace(self.options, ice_servers=servers)

    # ---- outbound ------------------------------------------------------------------------------------

    async def connect(
        self, node_id: bytes, endpoint: str, timeout: float | None = None, relays: Sequence[str] = ()
    ) -> PeerLink:
        """The live link to `node_id`, opening one if needed; concurrent callers share one set-up.

        `relays` (from the peer's announcement): signal through them instead of `endpoint`."""
        if self._closed:
            raise ConnectError("connection pool is closed")
        link = self._outbound.get(node_id)
        if link is not None and link.alive:
            return link
        if link is not None:
            self._forget(link)
        pending = self._connecting.get(node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._open(node_id, endpoint, tuple(relays)))
            self._connecting[node_id] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(node_id, None))
            pending.add_done_callback(_consume_exception)
        timeout = self.options.connect_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout)
        except TimeoutError:
            raise ConnectError(f"connecting to {node_id.hex()[:8]} at {endpoint} timed out") from None

    async def _open(self, node_id: bytes, endpoint: str, relays: tuple[str, ...] = ()) -> PeerLink:
        from aiortc import RTCSessionDescription

        pc = new_peer_connection(self._options_towards(_host_of(endpoint)))
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                channel = pc.createDataChannel(CHANNEL_LABEL, ordered=True)
                opened = asyncio.Event()
                channel.on("open", opened.set)
                await pc.setLocalDescription(await pc.createOffer())
                reply = await self._signal(node_id, endpoint, relays, self._signalling_message(pc))
                if isinstance(reply, dict) and "refused" in reply:
                    reason = str(reply["refused"])[:200]
                    raise ConnectRefusedError(f"{node_id.hex()[:8]} refused the connection: {reason}")
                answer = _checked_sdp(reply)
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
                await _wait_open(pc, opened)
                verify_peer_connection(pc, answer)
        except FingerprintMismatchError as exc:
            await pc.close()
            logger.warning("dropping connection to %s: %s", node_id.hex()[:8], exc)
            raise ConnectError(f"peer {node_id.hex()[:8]} failed the fingerprint check: {exc}") from exc
        except TimeoutError:
            await pc.close()
            raise ConnectError(f"connecting to {node_id.hex()[:8]} at {endpoint} timed out") from None
        except BaseException:
            await pc.close()
            raise
        link = self._make_link(node_id, pc, channel, outbound=True)
        self._tune_path(link, reply)
        self._outbound[node_id] = link
        logger.info("connected to %s at %s (%s)", node_id.hex()[:8], endpoint, _path_text(pc))
        return link

    def disconnect(self, node_id: bytes) -> None:
        """Close our outbound connection to `node_id`, if any (a prober that must not keep one per node)."""
        link = self._outbound.get(node_id)
        if link is not None:
            self._forget(link)

    async def _signal(
        self, node_id: bytes, endpoint: str, relays: tuple[str, ...], offer: dict[str, Any]
    ) -> dict[str, Any]:
        """Send our offer directly, or through the peer's relays in turn (a relay that fails, drops or
        tampers with the exchange costs one attempt); the peer's answer."""
        timeout = self.options.connect_timeout
        if not relays:
            try:
                _peer, reply = await self.dht.call_rpc(
                    endpoint, OFFER_RPC, offer, timeout=timeout, expected_node_id=node_id
                )
            except DHTError as exc:
                raise ConnectError(f"signalling to {endpoint} failed: {exc}") from exc
            return reply
        failures = []
        for relay in relays:
            try:
                _peer, reply = await self.dht.call_rpc_via_relay(  # each leaves time for the rest
                    relay, node_id, OFFER_RPC, offer, 0.9 * timeout / len(relays)
                )
                return reply
            except DHTError as exc:
                failures.append(f"{relay}: {exc}")
        reasons = "; ".join(failures)
        raise ConnectError(f"signalling to {node_id.hex()[:8]} through its relays failed: {reasons}")

    # ---- inbound -------------------------------------------------------------------------------------

    async def handle_offer(self, peer: PeerInfo, payload: dict[str, Any]) -> dict[str, Any]:
        """DHT RPC handler for `rtc.offer`: admit, answer, verify the DTLS fingerprint in the background."""
        from aiortc import RTCSessionDescription

        if self._closed or not self.accepting:
            return {"refused": "not accepting connections"}
        try:
            offer = _checked_sdp(payload)
        except ConnectError as exc:
            self._note_refusal(str(exc))
            return {"refused": str(exc)}
        host = _host_of(peer.endpoint)
        tier = self._tier(peer.node_id, payload)
        decision = self.admission.decide(peer.node_id, host, tier, self._slots(), time.monotonic())
        if not decision.admitted:
            self._note_refusal(decision.reason)
            return {"refused": decision.reason}
        for handle in decision.evict:
            self._evict(handle)
        pc = new_peer_connection(self._options_towards(host))
        handshake = _Handshake(peer.node_id, host, tier, pc)
        self._handshakes[id(handshake)] = handshake
        channel_ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == CHANNEL_LABEL and not channel_ready.done():
                channel_ready.set_result(channel)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            self._handshakes.pop(id(handshake), None)
            await pc.close()
            raise
        if self._handshakes.get(id(handshake)) is not handshake:  # evicted meanwhile
            return {"refused": "replaced by another connection"}
        handshake.task = asyncio.ensure_future(self._accept(peer, handshake, payload, channel_ready))
        self._track(handshake.task)
        return self._signalling_message(pc)

    async def _accept(
        self,
        peer: PeerInfo,
        handshake: _Handshake,
        payload: dict[str, Any],
        channel_ready: asyncio.Future[Any],
    ) -> None:
        pc = handshake.pc
        offer = _checked_sdp(payload)
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                channel = await channel_ready
                if channel.readyState != "open":
                    opened = asyncio.Event()
                    channel.on("open", opened.set)
                    await opened.wait()
            verify_peer_connection(pc, offer)
        except (TimeoutError, FingerprintMismatchError) as exc:
            if isinstance(exc, FingerprintMismatchError):
                reason = f"DTLS certificate does not match the offer's fingerprint: {exc}"
            else:
                reason = inbound_stall_reason(pc, self.options.connect_timeout)
            self.last_inbound_failure = reason
            logger.warning("dropping inbound connection from %s: %s", peer.node_id.hex()[:8], reason)
            await pc.close()
            return
        except BaseException:
            await pc.close()
            raise
        finally:
            self._handshakes.pop(id(handshake), None)
        link = self._make_link(peer.node_id, pc, channel, outbound=False)
        self._tune_path(link, payload)
        link.host, link.tier = handshake.host, handshake.tier
        self._inbound.setdefault(peer.node_id, []).append(link)
        logger.info(
            "accepted connection from %s (%s; %s)", peer.node_id.hex()[:8], peer.endpoint, _path_text(pc)
        )

    # ---- admission -----------------------------------------------------------------------------------

    def _tier(self, node_id: bytes, payload: dict[str, Any]) -> Tier:
        token = payload.get("cred")
        if self.credentials is not None and isinstance(token, str) and len(token) <= MAX_CREDENTIAL_CHARS:
            try:
                self.credentials.check(token, owner=node_id, now=time.time())
                return Tier.CREDENTIALED
            except ValueError as exc:
                logger.debug("offer from %s carries a refused credential: %s", node_id.hex()[:8], exc)
        return Tier.KNOWN if self.admission.is_known(node_id) else Tier.UNKNOWN

    def _slots(self) -> list[Slot]:
        slots = [Slot(h.node_id, h.host, h.tier, True, h.started, h) for h in self._handshakes.values()]
        for links in self._inbound.values():
            for link in links:
                tier = max(link.tier, Tier.KNOWN) if link.rpc.served else link.tier
                idle = link.rpc.in_flight == 0
                slots.append(Slot(link.node_id, link.host, tier, idle, link.rpc.last_used, link))
        return slots

    def _evict(self, handle: Any) -> None:
        if isinstance(handle, PeerLink):
            logger.info("closing connection with %s to admit another peer", handle.node_id.hex()[:8])
            self._forget(handle)
        elif self._handshakes.pop(id(handle), None) is not None:
            logger.info(
                "dropping inbound connection from %s: still being set up, replaced to admit another peer",
                handle.node_id.hex()[:8],
            )
            if handle.task is not None:
                handle.task.cancel()
            self._track(asyncio.ensure_future(handle.pc.close()))

    def _reclaim(self, size: int, holder: Any) -> None:
        """The node's reassembly budget is full: drop the connections holding the most unfinished bytes,
        as long as each holds more than the asking one would; otherwise the asking one is dropped."""
        wanted = self._total_budget.used + size - self._total_budget.limit
        for link in sorted(self.links, key=lambda link: link.rpc.held_bytes, reverse=True):
            if wanted <= 0 or link.rpc.held_bytes <= holder.held_bytes + size:
                return
            if link.rpc.reassembler is holder:
                continue
            wanted -= link.rpc.held_bytes
            logger.warning(
                "dropping connection with %s: it holds %d bytes of unfinished messages and the node's budget "
                "is full",
                link.node_id.hex()[:8],
                link.rpc.held_bytes,
            )
            self._forget(link)

    def _note_refusal(self, reason: str) -> None:
        """Count refused offers; one log line per period at most (a flood must not flood the log)."""
        self.refused_offers += 1
        self._refusals[reason] += 1
        now = time.monotonic()
        if now - self._refusals_logged >= REFUSAL_LOG_PERIOD:
            summary = ", ".join(f"{count} x {why}" for why, count in self._refusals.most_common())
            logger.warning("refused rtc offers: %s", summary)
            self._refusals.clear()
            self._refusals_logged = now

    def _options_towards(self, host: str) -> RTCOptions:
        """Our options, plus a 127.0.0.1 host candidate when the peer is on this machine.

        aioice never offers 127.0.0.1, so two agents on a machine without another interface could not
        connect, whatever else they offer. A peer whose signalling comes from (or goes to) a loopback
        address or this machine's own address is on this machine, and only such a peer is told about
        our loopback candidate (`same_machine_loopback`)."""
        if not self.options.same_machine_loopback or self.options.loopback:
            return self.options
        if self.options.host_addresses is not None or not self._is_this_machine(host):
            return self.options
        return replace(self.options, loopback=True)

    def _is_this_machine(self, host: str) -> bool:
        try:
            if ipaddress.ip_address(host).is_loopback:
                return True
        except ValueError:
            return False
        if self._own_hosts is None:
            own = {outward_ip(), _host_of(self.dht.endpoint)}
            self._own_hosts = frozenset(own - {"0.0.0.0", "::"})
        return host in self._own_hosts

    # ---- signalling and path tuning ------------------------------------------------------------------

    def _signalling_message(self, pc: RTCPeerConnection) -> dict[str, Any]:
        """Our offer or answer: the SDP, whether we can receive large SCTP chunks (so the peer may probe them;
        not with `record_probing=None`), our credential if any."""
        reads = large_record_reads_installed() and self.options.record_probing is not None
        message = {"sdp": pc.localDescription.sdp, "large_records": reads}
        if self.credential is not None:
            message["cred"] = self.credential
        return message

    def _tune_path(self, link: PeerLink, remote_message: Any) -> None:
        """Probe the path's largest packet towards a peer that said it reads whole records (`large_records`);
        any other peer (a browser, a plain aiortc) gets aiortc's standard chunks."""
        settings = self.options.record_probing
        if not (
            settings is not None
            and isinstance(remote_message, dict)
            and remote_message.get("large_records") is True
        ):
            return
        prober = start_record_probing(link.peer_connection, settings)
        if prober is not None:
            link.prober = prober
            link.prober_task = asyncio.ensure_future(prober.run())
            self._track(link.prober_task)

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def _make_link(self, node_id: bytes, pc: RTCPeerConnection, channel: Any, outbound: bool) -> PeerLink:
        peer_budget = self._peer_budgets.get(node_id)
        if peer_budget is None:
            peer_budget = ByteBudget(self.options.max_peer_partial_bytes, "peer")
            self._peer_budgets[node_id] = peer_budget
        rpc = ChannelRPC(
            channel,
            self._serve,
            chunk_size=self.options.chunk_size,
            max_payload=self.options.max_payload,
            label=f"{'to' if outbound else 'from'} {node_id.hex()[:8]}",
            peer_id=node_id,
            max_partial_bytes=self.options.max_partial_bytes,
            budgets=(peer_budget, self._total_budget),
            max_serving=self.options.max_serving,
        )
        link = PeerLink(node_id, pc, rpc, outbound)
        rpc.on_abort = lambda _reason: self._forget(link)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                logger.info("connection with %s %s", node_id.hex()[:8], pc.connectionState)
                self._forget(link)

        channel.on("close", lambda: self._forget(link))
        return link

    def _forget(self, link: PeerLink) -> None:
        link.rpc.close()
        if link.prober_task is not None:
            link.prober_task.cancel()
        if link.rpc.served:
            self.admission.remember(link.node_id)
        if self._outbound.get(link.node_id) is link:
            del self._outbound[link.node_id]
        inbound = self._inbound.get(link.node_id)
        if inbound and link in inbound:
            inbound.remove(link)
            if not inbound:
                del self._inbound[link.node_id]
        if link.node_id not in self._outbound and link.node_id not in self._inbound:
            self._peer_budgets.pop(link.node_id, None)
        self._track(asyncio.ensure_future(link.peer_connection.close()))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_consume_exception)

    async def _reap_idle(self) -> None:
        interval = max(0.5, min(10.0, self.options.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for link in self.links:
                if link.rpc.in_flight == 0 and now - link.rpc.last_used > self.options.idle_timeout:
                    logger.info("closing idle connection with %s", link.node_id.hex()[:8])
                    self._forget(link)

    async def drain(self, timeout: float) -> None:
        """Stop accepting connections and wait for the calls we are serving to be answered."""
        self.accepting = False
        await asyncio.gather(*(link.rpc.drain(timeout) for link in self.links))

    async def close(self) -> None:
        self._closed = True
        await self._loops.close()
        for pending in list(self._connecting.values()):
            pending.cancel()
        for link in self.links:
            self._forget(link)
        for handshake in list(self._handshakes.values()):
            self._evict(handshake)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


@dataclass(slots=True, eq=False)
class _Handshake:
    """An admitted inbound connection whose data channel is not open yet (it holds sockets already)."""

    node_id: bytes
    host: str
    tier: Tier
    pc: RTCPeerConnection
    started: float = field(default_factory=time.monotonic)
    task: asyncio.Future[Any] | None = None


def inbound_stall_reason(pc: Any, timeout: float) -> str:
    """Why an answered offer's data channel did not open in time, from the states the connection reached.

    ICE still "new" or "checking" means no connectivity check of the caller reached one of the candidates we
    answered with: the caller could not reach those addresses, or never received our answer (e.g. its
    signalling reply was dropped), so the reason names what we offered."""
    ice = getattr(pc, "iceConnectionState", "?")
    state = getattr(pc, "connectionState", "?")
    hosts = answered_candidate_hosts(pc)
    offered = ", ".join(hosts) or "none"
    if ice in ("new", "checking") and not hosts:
        return (
            f"no ICE connectivity check from the caller succeeded within {timeout:.0f} s (ICE {ice}): we "
            "answered with no candidate at all (no usable interface; a same-machine caller needs "
            "127.0.0.1, see --rtc-loopback)"
        )
    if ice in ("new", "checking"):
        return (
            f"no ICE connectivity check from the caller succeeded within {timeout:.0f} s (ICE {ice}); "
            f"we answered with candidates {offered}: the caller cannot reach them, or never got our answer"
        )
    if ice in ("failed", "closed") or state in ("failed", "closed"):
        return f"ICE or DTLS failed (ICE {ice}, connection {state}; our candidates: {offered})"
    return f"the data channel did not open within {timeout:.0f} s (ICE {ice}, connection {state})"


def answered_candidate_hosts(pc: Any) -> list[str]:
    """The addresses of the ICE candidates in our local description (`a=candidate:` lines), deduplicated."""
    description = getattr(pc, "localDescription", None)
    sdp = getattr(description, "sdp", "") or ""
    hosts: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 5:
                address = f"{fields[4]}:{fields[5]}" if ":" not in fields[4] else f"[{fields[4]}]:{fields[5]}"
                if address not in hosts:
                    hosts.append(address)
    return hosts[:8]


def _host_of(endpoint: str) -> str:
    try:
        return parse_endpoint(endpoint)[0]
    except ValueError:
        return endpoint


def _path_text(pc: RTCPeerConnection) -> str:
    """The ICE path for the log: direct or relayed, which candidates (`node_agent.rtc.paths`)."""
    path = selected_path(pc)
    if path is None:
        return "path unknown"
    return f"{'relayed' if path.relayed else 'direct'}: {path.describe()}"


def _checked_sdp(payload: Any) -> str:
    sdp = payload.get("sdp") if isinstance(payload, dict) else None
    if not isinstance(sdp, str) or not 0 < len(sdp) <= MAX_SDP_BYTES or not sdp.startswith("v=0"):
        raise ConnectError("signalling message carries no valid SDP")
    return sdp


async def _wait_open(pc: RTCPeerConnection, opened: asyncio.Event) -> None:
    """Wait for the data channel to open, failing fast if ICE/DTLS fails (e.g. a fingerprint mismatch)."""
    failed = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            failed.set()

    waiters = [asyncio.ensure_future(opened.wait()), asyncio.ensure_future(failed.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    if not opened.is_set():
        raise ConnectError(
            f"connection {pc.connectionState} before the data channel opened (ICE or DTLS failed)"
        )


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("background connection task failed: %r", future.exception())
