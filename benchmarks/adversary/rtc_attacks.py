"""Data channel and expert server attacks of issue 11, items 6-8, with the project's own client code.

The attacker is a real `ExpertCaller` (its own identity, WebRTC on loopback): malformed bodies go through
its `ChannelRPC`, unfinished messages are frames from `node_agent.rtc.framing` sent on its data channel,
and offers are signed `rtc.offer` DHT requests from fresh identities (`ProtocolCore`) carrying one real
SDP offer. Bounded in count and time; only 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from adversary.dht_attacks import RawPeer, address_of
from node_agent.identity import Identity
from node_agent.moe.api import ExpertHandle
from node_agent.moe.client import ExpertCaller
from node_agent.rtc.config import RTCOptions, new_peer_connection
from node_agent.rtc.framing import FrameKind, encode_frames
from node_agent.rtc.pool import OFFER_RPC
from node_agent.rtc.rpc import RPCError, RPCRemoteError
from node_agent.tensor_codec import Compression, encode_tensors

#: Answers that mean the decoder raised something other than its documented error (item 6).
WRONG_CODES = {"internal"}


async def attacker(identity: Identity | None = None, credential: str | None = None) -> ExpertCaller:
    """A client of its own (fresh identity unless given). It joins no swarm: signalling goes straight to the
    server's DHT endpoint, so a busy bootstrap node cannot keep the attack (or a newcomer) away."""
    return await asyncio.to_thread(
        ExpertCaller.start_caller,
        [],
        30.0,
        rtc_options=RTCOptions.for_loopback(),
        identity=identity,
        credential=credential,
    )


async def on_caller(caller: ExpertCaller, coro: Any) -> Any:
    """Run `coro` on the caller's own loop (its data channels live there) and await it here."""
    return await asyncio.wrap_future(caller.run(coro))


def malformed_bodies(uid: str, hidden_dim: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, method, body): valid encodings from `encode_tensors`, then tampered."""
    x = torch.randn(4, hidden_dim)

    def tensors(compression: Compression = Compression.BLOCKWISE_8BIT, **tamper: Any) -> list[dict[str, Any]]:
        (header,) = encode_tensors([x], compression)
        return [header | tamper]

    plain = Compression.NONE
    variants = {
        "dtype_list": tensors(dtype=["float32"]),
        "dtype_dict": tensors(dtype={"float32": 1}),
        "scales_str": tensors(scales="not bytes"),
        "scales_list": tensors(scales=[1.0, 2.0]),
        "data_int": tensors(data=7),
        "data_list": tensors(data=[1, 2, 3]),
        "data_map": tensors(data={"a": b"x"}),
        # a valid uncompressed tensor that also carries a stray non-bytes "scales" field
        "stray_scales_int": tensors(plain, scales=12345),
        "stray_scales_nil": tensors(plain, scales=None),
    }
    bodies = [(f"forward_{n}", "forward", {"uid": uid, "inputs": t}) for n, t in variants.items()]
    bodies += [
        (f"backward_{n}", "backward", {"uid": uid, "inputs": t, "grads": t}) for n, t in variants.items()
    ]
    empty = encode_tensors([torch.zeros(0, hidden_dim)], Compression.NONE)
    bodies.append(("forward_empty_batch", "forward", {"uid": uid, "inputs": empty}))
    bodies.append(("backward_empty_batch", "backward", {"uid": uid, "inputs": empty, "grads": empty}))
    return bodies


async def malformed_tensors(
    handle: ExpertHandle, hidden_dim: int, duration: float, max_calls: int
) -> dict[str, Any]:
    caller = await attacker()
    outcomes: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    bodies = malformed_bodies(handle.uid, hidden_dim)

    async def one(method: str, body: dict[str, Any]) -> str:
        assert caller.pool is not None
        try:
            link = await caller.pool.connect(handle.node_id, handle.endpoint, 10.0)
            await link.rpc.call(method, body, 5.0)
            return "accepted"
        except RPCRemoteError as exc:
            return exc.code
        except (RPCError, Exception) as exc:  # the connection itself failed: say how
            return type(exc).__name__

    sent = 0
    until = time.time() + duration
    try:
        while time.time() < until and sent < max_calls:
            name, method, body = bodies[sent % len(bodies)]
            outcome = await on_caller(caller, one(method, body))
            outcomes[outcome] += 1
            if outcome in WRONG_CODES or (outcome == "accepted" and "empty" in name):
                wrong[name] += 1
            sent += 1
    finally:
        await asyncio.to_thread(caller.stop)
    return {"sent": sent, "notes": {"answers": dict(outcomes), "wrong_answers": dict(wrong)}}


async def unfinished_messages(
    handle: ExpertHandle, duration: float, messages: int, message_bytes: int
) -> dict[str, Any]:
    """`messages` requests of `message_bytes` each, every frame but the last (FIN) sent, then held."""
    caller = await attacker()

    async def flood() -> dict[str, Any]:
        assert caller.pool is not None
        link = await caller.pool.connect(handle.node_id, handle.endpoint, 10.0)
        channel, rpc = link.rpc.channel, link.rpc
        payload = bytes(message_bytes)
        sent_bytes, started, dropped = 0, 0, False
        until = time.time() + duration
        for m in range(messages):
            frames = list(encode_frames(FrameKind.REQUEST, 1_000_000 + m, payload, rpc.chunk_size))[:-1]
            started += 1
            for frame in frames:
                while channel.bufferedAmount > 4 * 2**20 and not rpc.closed and time.time() < until:
                    await asyncio.sleep(0.005)
                if rpc.closed or time.time() >= until:
                    dropped = rpc.closed
                    break
                channel.send(frame)
                sent_bytes += len(frame)
            if dropped or time.time() >= until:
                break
        while time.time() < until and not rpc.closed:  # hold them unfinished for the rest of the phase
            await asyncio.sleep(0.1)
        return {"messages_started": started, "mb_sent": round(sent_bytes / 2**20, 1),
                "connection_dropped_by_server": rpc.closed}  # fmt: skip

    try:
        notes = await on_caller(caller, flood())
    finally:
        await asyncio.to_thread(caller.stop)
    return {"sent": notes["messages_started"], "notes": notes}


async def real_offer_sdp() -> str:
    """One genuine SDP offer (aiortc, loopback ICE) to put in every flooded `rtc.offer`."""
    pc = new_peer_connection(RTCOptions.for_loopback())
    pc.createDataChannel("rpc")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def offer_flood(server: str, duration: float, count: int, rate: float, sockets: int) -> dict[str, Any]:
    """Signed `rtc.offer` requests, each from a fresh identity, spread over `sockets` source ports."""
    sdp = await real_offer_sdp()
    peers = [await RawPeer.open() for _ in range(sockets)]
    to = address_of(server)
    server_id = bytes.fromhex(server.split("/")[1])
    began = time.monotonic()
    sent = 0
    until = time.time() + duration
    while sent < count and time.time() < until:
        peer = peers[sent % sockets]
        peer.core.identity = Identity.generate()  # a fresh key for every offer
        peer.send("rpc", {"n": OFFER_RPC, "p": {"sdp": sdp, "large_records": True}}, to, server_id)
        sent += 1
        await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))
    await asyncio.sleep(1.0)
    answers = sum(p.received for p in peers)
    for peer in peers:
        peer.close()
    return {"sent": sent, "notes": {"offers_per_s": rate, "answers_received": answers}}


async def newcomer_calls(
    handle: ExpertHandle, hidden_dim: int, until: float, issue: Callable[[Identity], str] | None = None
) -> list[bool]:
    """An honest trainer that connects afresh (new identity, new connection) every 2 s during a flood.

    `issue` gives each new identity the portal credential an honest trainer of a gated project holds (the
    server admits credentialed peers ahead of unknown keys); without it the newcomer is a stranger that
    competes with the flood for the unknown share."""
    results = []
    while time.time() < until:
        caller = None
        try:
            identity = Identity.generate()
            caller = await attacker(identity, issue(identity) if issue is not None else None)
            x = torch.randn(8, hidden_dim)
            (y,) = await asyncio.wrap_future(caller.forward(handle, [x], timeout=8.0))
            results.append(y.shape == x.shape)
        except Exception:
            results.append(False)
        finally:
            if caller is not None:
                await asyncio.to_thread(caller.stop)
        await asyncio.sleep(max(0.0, min(2.0, until - time.time())))
    return results
