"""Signed datagrams: every request and response carries its sender's key and an Ed25519 signature.

Layout: ``pack([inner, signature])`` where ``inner`` is a versioned :mod:`node_agent.wire` message whose body
holds the request id, timestamp, sender key, intended recipient and payload. The signature covers the exact
``inner`` bytes, so nothing needs canonical re-encoding. Replays are refused by :class:`ReplayGuard`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from node_agent.dht.endpoints import Address, wire_address
from node_agent.identity import PUBLIC_KEY_BYTES, Identity, node_id_from_public_key, verify
from node_agent.wire import WireError, pack, pack_message, unpack, unpack_message

# dialback/probe: reachability checks; reserve/relay/relayed: relayed signalling (node_agent.dht.nat).
REQUEST_KINDS = frozenset(
    {"ping", "store", "find", "rpc", "dialback", "probe", "reserve", "relay", "relayed"}
)
RESPONSE_KINDS = frozenset({"ok", "err"})
RID_BYTES = 8


class BadSignature(WireError):
    """The datagram parsed but its signature does not match the key it carries."""


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    rid: bytes
    timestamp: float
    public_key: bytes
    node_id: bytes
    recipient: bytes  # the node id the sender meant this for; b"" when it did not know it yet
    client_mode: bool
    payload: dict[str, Any]
    #: In a response: the address the responder saw the request come from (signed by the responder).
    observed: Address | None = None


def seal(
    identity: Identity,
    kind: str,
    rid: bytes,
    now: float,
    recipient: bytes,
    client_mode: bool,
    payload: dict[str, Any],
    max_size: int,
    observed: Address | None = None,
) -> bytes:
    """Sign one datagram; a response names in ``observed`` where the request came from (section "o")."""
    body: dict[str, Any] = {
        "id": rid,
        "ts": now,
        "pk": identity.public_key_bytes,
        "to": recipient,
        "c": client_mode,
        "p": payload,
    }
    if observed is not None:
        body["o"] = [observed[0], observed[1]]
    inner = pack_message(kind, body, max_size)
    data = pack([inner, identity.sign(inner)])
    if len(data) > max_size:
        raise WireError(f"{kind} datagram of {len(data)} bytes exceeds the {max_size}-byte limit")
    return data


@dataclass(frozen=True, slots=True)
class Unverified:
    """A datagram parsed but not yet verified: enough to drop it cheaply (by kind, size or request id)."""

    kind: str
    rid: bytes
    payload: dict[str, Any]
    inner: bytes
    signature: bytes
    body: dict[str, Any]


def unseal(data: bytes, max_size: int) -> Unverified:
    """Parse a datagram's shape without the signature check; raises WireError if malformed."""
    outer = unpack(data, max_size)
    if not isinstance(outer, list) or len(outer) != 2:
        raise WireError("datagram is not [message, signature]")
    inner, signature = outer
    if not isinstance(inner, bytes) or not isinstance(signature, bytes):
        raise WireError("datagram parts must be bytes")
    message = unpack_message(inner, max_size)
    body = message.body
    rid, payload = body.get("id"), body.get("p")
    if message.kind not in REQUEST_KINDS and message.kind not in RESPONSE_KINDS:
        raise WireError(f"unknown message kind {message.kind!r}")
    if not isinstance(rid, bytes) or len(rid) != RID_BYTES:
        raise WireError("bad request id")
    if not isinstance(payload, dict):
        raise WireError("bad payload")
    return Unverified(message.kind, rid, payload, inner, signature, body)


def verify_sealed(sealed: Unverified) -> Envelope:
    """Check the rest of the header and the signature; raises WireError (malformed) or BadSignature."""
    body = sealed.body
    ts, public_key = body.get("ts"), body.get("pk")
    recipient, client_mode = body.get("to", b""), body.get("c", False)
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        raise WireError("bad timestamp")
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
        raise WireError("bad public key")
    if not isinstance(recipient, bytes) or not isinstance(client_mode, bool):
        raise WireError("bad recipient or client flag")
    observed = None
    if "o" in body:
        try:
            observed = wire_address(body["o"])
        except ValueError as exc:
            raise WireError(f"bad observed address: {exc}") from None
    if not verify(public_key, sealed.inner, sealed.signature):
        raise BadSignature("signature does not match the sender key")
    return Envelope(
        sealed.kind,
        sealed.rid,
        float(ts),
        public_key,
        node_id_from_public_key(public_key),
        recipient,
        client_mode,
        sealed.payload,
        observed,
    )


def open_sealed(data: bytes, max_size: int) -> Envelope:
    """Parse and verify a datagram; raises WireError (malformed) or BadSignature."""
    return verify_sealed(unseal(data, max_size))


class ReplayGuard:
    """Refuses requests outside the clock-skew window and any (sender, request id) seen inside it."""

    def __init__(self, max_clock_skew: float, capacity: int = 200_000) -> None:
        self.max_clock_skew = max_clock_skew
        self.capacity = capacity
        self._seen: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()

    def check(self, sender: bytes, rid: bytes, timestamp: float, now: float) -> str | None:
        """Return None if fresh (and remember it), else the reason to refuse."""
        if abs(timestamp - now) > self.max_clock_skew:
            return "timestamp outside the allowed clock skew"
        horizon = now - 2 * self.max_clock_skew
        while self._seen and (next(iter(self._seen.values())) < horizon or len(self._seen) >= self.capacity):
            self._seen.popitem(last=False)
        if (sender, rid) in self._seen:
            return "replayed request"
        self._seen[(sender, rid)] = now
        return None


class PeerPenalties:
    """Counts offences (invalid datagrams or records) per peer; repeat offenders are ignored a while.

    A peer is a node id or a source key (an address prefix, never a host:port, so a new port is no escape).
    At most ``capacity`` peers with offences and as many bans are remembered; the oldest go first.
    """

    def __init__(self, threshold: int, ban_seconds: float, capacity: int = 65_536) -> None:
        self.threshold = threshold
        self.ban_seconds = ban_seconds
        self.capacity = capacity
        self._offences: OrderedDict[object, int] = OrderedDict()
        self._banned_until: OrderedDict[object, float] = OrderedDict()

    def offend(self, peer: object, now: float) -> bool:
        """Record one offence; True if the peer is now banned."""
        count = self._offences.pop(peer, 0) + 1
        if count >= self.threshold:
            self._banned_until.pop(peer, None)
            self._banned_until[peer] = now + self.ban_seconds
            _trim(self._banned_until, self.capacity)
            return True
        self._offences[peer] = count
        _trim(self._offences, self.capacity)
        return False

    def is_banned(self, peer: object, now: float) -> bool:
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._banned_until[peer]
            return False
        return True


def _trim(entries: OrderedDict[Any, Any], capacity: int) -> None:
    while len(entries) > capacity:
        entries.popitem(last=False)
