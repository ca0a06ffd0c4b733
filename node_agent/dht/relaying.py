"""Relayed signalling, the relay's side: reservations with caps (pure: the caller passes ``now``).

An unreachable node U keeps a *reservation* at a few reachable peers (after libp2p's circuit relay v2,
learnt from, not copied). The relay R remembers U's address (where U's keep-alives come from, so U's NAT
mapping towards R stays open) and forwards to U only what a caller T sends it for U: one signed DHT request
T sealed for U (`rtc.offer`), and back U's signed answer. R cannot alter either without breaking a signature
and learns nothing it could replay (request ids are single-use at U and bound to T's pending request).

Caps bound what a relay spends: at most ``max_reservations`` peers; per reservation, per ``window`` seconds,
``max_messages`` forwarded messages and ``max_bytes`` bytes (requests and answers), each message at most
``max_message`` bytes; a reservation not renewed within ``ttl`` seconds lapses. Only signalling crosses a
relay: the forwarded request must be an `rpc` whose name is in :data:`RELAYABLE_RPCS` (never tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

from node_agent.dht.messages import Unverified, unseal
from node_agent.wire import WireError

Address = tuple[str, int]
RELAYABLE_RPCS = frozenset({"rtc.offer"})


@dataclass(frozen=True, slots=True)
class RelayCaps:
    max_reservations: int = 16
    ttl: float = 45.0  # a reservation lapses this long after its last renewal (keep-alives come every 15 s)
    window: float = 60.0
    max_messages: int = 64
    max_bytes: int = 256 * 1024
    max_message: int = 24 * 1024


@dataclass(slots=True)
class Reservation:
    peer_id: bytes
    address: Address
    expires: float
    window_start: float
    messages: int = 0
    bytes: int = 0


class RelayRefused(Exception):
    """Why a relay refuses a reservation or a message (the text goes back to the asker)."""


class RelayBook:
    """The reservations a relay holds."""

    def __init__(self, caps: RelayCaps) -> None:
        self.caps = caps
        self._reservations: dict[bytes, Reservation] = {}

    def __len__(self) -> int:
        return len(self._reservations)

    def __contains__(self, peer_id: bytes) -> bool:
        return peer_id in self._reservations

    def reserve(self, peer_id: bytes, address: Address, now: float) -> Reservation:
        """Grant or renew ``peer_id``'s reservation at ``address`` (where its request came from)."""
        self.expire(now)
        reservation = self._reservations.get(peer_id)
        if reservation is None:
            if len(self._reservations) >= self.caps.max_reservations:
                raise RelayRefused(f"relay full ({self.caps.max_reservations} reservations)")
            reservation = Reservation(peer_id, address, now + self.caps.ttl, now)
            self._reservations[peer_id] = reservation
        reservation.address = address
        reservation.expires = now + self.caps.ttl
        return reservation

    def admit(self, peer_id: bytes, size: int, now: float) -> Reservation:
        """Charge one message of ``size`` bytes towards ``peer_id``; raises RelayRefused past a cap."""
        reservation = self._live(peer_id, now)
        if size > self.caps.max_message:
            raise RelayRefused(f"message of {size} bytes exceeds the relay's {self.caps.max_message}")
        if now - reservation.window_start >= self.caps.window:
            reservation.window_start, reservation.messages, reservation.bytes = now, 0, 0
        if reservation.messages >= self.caps.max_messages:
            raise RelayRefused(f"{self.caps.max_messages} messages per {self.caps.window:.0f}s used up")
        if reservation.bytes + size > self.caps.max_bytes:
            raise RelayRefused(f"{self.caps.max_bytes} bytes per {self.caps.window:.0f}s used up")
        reservation.messages += 1
        reservation.bytes += size
        return reservation

    def charge_answer(self, peer_id: bytes, size: int, now: float) -> None:
        """Count an answer's bytes; raises RelayRefused (answer not passed on) if it is too large."""
        reservation = self._live(peer_id, now)
        if size > self.caps.max_message or reservation.bytes + size > self.caps.max_bytes:
            raise RelayRefused("answer exceeds the relay's byte caps")
        reservation.bytes += size

    def release(self, peer_id: bytes) -> None:
        self._reservations.pop(peer_id, None)

    def expire(self, now: float) -> None:
        for peer_id in [p for p, r in self._reservations.items() if r.expires <= now]:
            del self._reservations[peer_id]

    def _live(self, peer_id: bytes, now: float) -> Reservation:
        reservation = self._reservations.get(peer_id)
        if reservation is None or reservation.expires <= now:
            self._reservations.pop(peer_id, None)
            raise RelayRefused("no reservation for that peer")
        return reservation


def relayable(datagram: object, max_size: int) -> Unverified:
    """The forwarded datagram's parsed shape if it is signalling (an `rpc` in RELAYABLE_RPCS, within
    ``max_size``); raises RelayRefused otherwise. The signature is the recipient's to check."""
    if not isinstance(datagram, bytes) or not datagram:
        raise RelayRefused("relayed message must be a datagram")
    if len(datagram) > max_size:
        raise RelayRefused(f"relayed message of {len(datagram)} bytes exceeds {max_size}")
    try:
        sealed = unseal(datagram, max_size)
    except WireError as exc:
        raise RelayRefused(f"relayed message is malformed: {exc}") from None
    name = sealed.payload.get("n")
    if sealed.kind != "rpc" or not isinstance(name, str) or name not in RELAYABLE_RPCS:
        raise RelayRefused("a relay carries signalling only")
    return sealed
