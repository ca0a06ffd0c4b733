"""One WebRTC peer connection per pair of peers, set up through signed DHT RPCs and reused for every call.

Signalling (design brief section 3): the caller sends its SDP offer as the app-level DHT RPC `rtc.offer`
to the peer's DHT endpoint, pinned to the peer's node id; the answer comes back in the signed reply. There
is no trickle ICE in aiortc, so that one round trip carries all candidates. After the DTLS handshake both
sides check the remote certificate against the fingerprint in the SDP the other signed
(`node_agent.rtc.fingerprint`) and drop the connection on a mismatch.

Concurrent callers share the connection being set up; a connection idle for `idle_timeout` is closed; a
dropped connection is forgotten so the next call sets up a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from node_agent.dht.api import DHTError, PeerInfo
from node_agent.rtc.config import RTCOptions, apply_process_settings, rtc_configuration
from node_agent.rtc.fingerprint import FingerprintMismatchError, verify_peer_connection
from node_agent.rtc.large_records import (
    enable_large_chunks,
    large_record_reads_installed,
    selected_path_is_loopback,
)
from node_agent.rtc.rpc import ChannelRPC, Handler

logger = logging.getLogger(__name__)

OFFER_RPC = "rtc.offer"
MAX_SDP_BYTES = 16 * 1024
CHANNEL_LABEL = "colearn-rpc"


class ConnectError(Exception):
    """No verified data channel to the peer: unreachable, refused, timed out or wrong fingerprint."""


@dataclass(slots=True)
class PeerLink:
    """A verified connection to one peer and the RPC endpoint on its data channel."""

    node_id: bytes
    peer_connection: Any
    rpc: ChannelRPC
    outbound: bool
    opened_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return not self.rpc.closed and self.peer_connection.connectionState not in ("failed", "closed")


class ConnectionPool:
    """Owns this node's peer connections; `handler` serves calls that remote peers make to us."""

    def __init__(self, dht: Any, handler: Handler | None, options: RTCOptions) -> None:
        self.dht = dht
        self.handler = handler
        self.options = options
        self._outbound: dict[bytes, PeerLink] = {}
        self._inbound: dict[bytes, list[PeerLink]] = {}
        self._connecting: dict[bytes, asyncio.Future[PeerLink]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.accepting = True

    @classmethod
    async def create(
        cls, dht: Any, handler: Handler | None = None, options: RTCOptions | None = None
    ) -> ConnectionPool:
        """Register the `rtc.offer` RPC on `dht` (so peers can reach us) and start the idle reaper."""
        pool = cls(dht, handler, options or RTCOptions())
        apply_process_settings(pool.options)
        dht.register_rpc(OFFER_RPC, pool.handle_offer)
        pool._reaper = asyncio.create_task(pool._reap_idle(), name="rtc-idle-reaper")
        return pool

    @property
    def links(self) -> list[PeerLink]:
        return [*self._outbound.values(), *(link for links in self._inbound.values() for link in links)]

    # ---- outbound ------------------------------------------------------------------------------------

    async def connect(self, node_id: bytes, endpoint: str, timeout: float | None = None) -> PeerLink:
        """The live link to `node_id`, opening one if needed; concurrent callers share one set-up."""
        if self._closed:
            raise ConnectError("connection pool is closed")
        link = self._outbound.get(node_id)
        if link is not None and link.alive:
            return link
        if link is not None:
            self._forget(link)
        pending = self._connecting.get(node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._open(node_id, endpoint))
            self._connecting[node_id] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(node_id, None))
            pending.add_done_callback(_consume_exception)
        timeout = self.options.connect_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(pending), timeout)
        except TimeoutError:
            raise ConnectError(f"connecting to {node_id.hex()[:8]} at {endpoint} timed out") from None

    async def _open(self, node_id: bytes, endpoint: str) -> PeerLink:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(rtc_configuration(self.options))
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                channel = pc.createDataChannel(CHANNEL_LABEL, ordered=True)
                opened = asyncio.Event()
                channel.on("open", opened.set)
                await pc.setLocalDescription(await pc.createOffer())
                try:
                    _peer, reply = await self.dht.call_rpc(
                        endpoint,
                        OFFER_RPC,
                        self._signalling_message(pc),
                        timeout=self.options.connect_timeout,
                        expected_node_id=node_id,
                    )
                except DHTError as exc:
                    raise ConnectError(f"signalling to {endpoint} failed: {exc}") from exc
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
        self._tune_path(pc, reply, node_id)
        link = self._make_link(node_id, pc, channel, outbound=True)
        self._outbound[node_id] = link
        logger.info("connected to %s at %s", node_id.hex()[:8], endpoint)
        return link

    # ---- inbound -------------------------------------------------------------------------------------

    async def handle_offer(self, peer: PeerInfo, payload: dict) -> dict:
        """DHT RPC handler for `rtc.offer`: answer, then verify the DTLS fingerprint in the background."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        if self._closed or not self.accepting:
            raise ConnectError("not accepting connections")
        offer = _checked_sdp(payload)
        pc = RTCPeerConnection(rtc_configuration(self.options))
        channel_ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label == CHANNEL_LABEL and not channel_ready.done():
                channel_ready.set_result(channel)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            await pc.close()
            raise
        self._track(asyncio.ensure_future(self._accept(peer, pc, payload, channel_ready)))
        return self._signalling_message(pc)

    async def _accept(
        self, peer: PeerInfo, pc: Any, payload: dict, channel_ready: asyncio.Future[Any]
    ) -> None:
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
            logger.warning(
                "dropping inbound connection from %s: %s", peer.node_id.hex()[:8], exc or "timeout"
            )
            await pc.close()
            return
        self._tune_path(pc, payload, peer.node_id)
        link = self._make_link(peer.node_id, pc, channel, outbound=False)
        self._inbound.setdefault(peer.node_id, []).append(link)
        logger.info("accepted connection from %s (%s)", peer.node_id.hex()[:8], peer.endpoint)

    # ---- signalling and path tuning ------------------------------------------------------------------

    def _signalling_message(self, pc: Any) -> dict:
        """Our offer or answer: the SDP and whether we can receive large SCTP chunks."""
        return {"sdp": pc.localDescription.sdp, "large_records": large_record_reads_installed()}

    def _tune_path(self, pc: Any, remote_message: Any, node_id: bytes) -> None:
        """Large chunks towards a peer on this machine that said it reads them (`large_records`)."""
        if not (
            self.options.large_chunks_on_loopback
            and isinstance(remote_message, dict)
            and remote_message.get("large_records") is True
            and selected_path_is_loopback(pc)
        ):
            return
        if enable_large_chunks(pc):
            logger.debug("large SCTP chunks towards %s (loopback path)", node_id.hex()[:8])

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def _make_link(self, node_id: bytes, pc: Any, channel: Any, outbound: bool) -> PeerLink:
        rpc = ChannelRPC(
            channel,
            self.handler,
            chunk_size=self.options.chunk_size,
            max_payload=self.options.max_payload,
            label=f"{'to' if outbound else 'from'} {node_id.hex()[:8]}",
            peer_id=node_id,
        )
        link = PeerLink(node_id, pc, rpc, outbound)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                logger.info("connection with %s %s", node_id.hex()[:8], pc.connectionState)
                self._forget(link)

        channel.on("close", lambda: self._forget(link))
        return link

    def _forget(self, link: PeerLink) -> None:
        link.rpc.close()
        if self._outbound.get(link.node_id) is link:
            del self._outbound[link.node_id]
        inbound = self._inbound.get(link.node_id)
        if inbound and link in inbound:
            inbound.remove(link)
            if not inbound:
                del self._inbound[link.node_id]
        self._track(asyncio.ensure_future(link.peer_connection.close()))

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)  # type: ignore[arg-type]
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
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for pending in list(self._connecting.values()):
            pending.cancel()
        for link in self.links:
            self._forget(link)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)


def _checked_sdp(payload: Any) -> str:
    sdp = payload.get("sdp") if isinstance(payload, dict) else None
    if not isinstance(sdp, str) or not 0 < len(sdp) <= MAX_SDP_BYTES or not sdp.startswith("v=0"):
        raise ConnectError("signalling message carries no valid SDP")
    return sdp


async def _wait_open(pc: Any, opened: asyncio.Event) -> None:
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
