"""Kademlia routing table: k-buckets with splitting, LRU eviction by ping, IP-prefix caps (pure, no I/O).

A contact that stops answering becomes *stale* (its ``failures`` count) but stays in its bucket until a live,
proven candidate can take its place: a node whose peers were busy for a few seconds must not forget them
all and be left with an empty table (the usual Kademlia rule, e.g. BitTorrent's BEP 5 "bad" nodes).

Only *verified* contacts enter the table: they answered, from that address, a request we sent there. A
signed request alone proves nothing about the address (it may be a capture replayed from elsewhere inside the
clock-skew window), so an unknown id is added, and a known id moved to a new address, only after it answers a
challenge there (see :meth:`RoutingTable.observe`). Section numbers refer to Maymounkov & Mazieres,
"Kademlia" (2002).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import Counter, OrderedDict
from dataclasses import dataclass

from node_agent.dht.api import ID_BYTES

ID_BITS = ID_BYTES * 8
_FAILED_STRANGERS = 256


def id_to_int(node_id: bytes) -> int:
    return int.from_bytes(node_id, "big")


def distance(a: bytes, b: bytes) -> int:
    """XOR metric (section 2.1)."""
    return id_to_int(a) ^ id_to_int(b)


def ip_prefix(host: str) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) network of ``host``; None for loopback or unparsable hosts."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a hostname: treat the name itself as its own prefix
    if address.is_loopback:
        return None
    bits = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{host}/{bits}", strict=False))


@dataclass(slots=True)
class Contact:
    node_id: bytes
    host: str
    port: int
    last_seen: float = 0.0
    failures: int = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


class AddResult(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"  # known contact, same address: moved to the tail (most recently seen)
    PING_OLDEST = "ping_oldest"  # bucket full: ping the returned oldest contact; candidate waits aside
    CHALLENGE = "challenge"  # known id claims a new address: prove it by answering a ping there
    VERIFY = "verify"  # unknown id seen in an unproven message: it enters once it answers a ping there
    REJECTED = "rejected"  # own id, IP-prefix cap, or an unproven stranger for a full bucket


class KBucket:
    """Contacts whose ids fall in [lo, hi), least recently seen first (section 2.2)."""

    __slots__ = ("contacts", "hi", "last_touched", "lo", "replacements")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.contacts: OrderedDict[bytes, Contact] = OrderedDict()
        self.replacements: OrderedDict[bytes, Contact] = OrderedDict()
        self.last_touched = 0.0

    def covers(self, node_id: bytes) -> bool:
        return self.lo <= id_to_int(node_id) < self.hi


class RoutingTable:
    def __init__(
        self,
        own_id: bytes,
        bucket_size: int = 20,
        max_per_prefix_bucket: int = 2,
        max_per_prefix_table: int = 10,
        exempt_loopback: bool = True,
        stale_after: int = 2,
    ) -> None:
        """``stale_after``: failed requests in a row after which a contact is stale (see the module doc)."""
        self.own_id = own_id
        self.stale_after = stale_after
        self.bucket_size = bucket_size
        self.max_per_prefix_bucket = max_per_prefix_bucket
        self.max_per_prefix_table = max_per_prefix_table
        self.exempt_loopback = exempt_loopback
        self.buckets: list[KBucket] = [KBucket(0, 2**ID_BITS)]
        self._prefix_counts: Counter[str] = Counter()
        # Timeouts of ids not in the table (lookup candidates others named), so a departed node that others
        # still name is not waited for on every lookup; the 256 most recent, cleared when the id answers.
        self._failed_strangers: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(b.contacts) for b in self.buckets)

    def __contains__(self, node_id: bytes) -> bool:
        return node_id in self.bucket_for(node_id).contacts

    def get(self, node_id: bytes) -> Contact | None:
        return self.bucket_for(node_id).contacts.get(node_id)

    def bucket_for(self, node_id: bytes) -> KBucket:
        value = id_to_int(node_id)
        lo, hi = 0, len(self.buckets)
        while lo < hi:  # buckets are sorted and contiguous: binary search by range
            mid = (lo + hi) // 2
            if value < self.buckets[mid].lo:
                hi = mid
            elif value >= self.buckets[mid].hi:
                lo = mid + 1
            else:
                return self.buckets[mid]
        raise AssertionError("buckets must cover the whole id space")

    def _prefix(self, host: str) -> str | None:
        prefix = ip_prefix(host)
        if prefix is None and not self.exempt_loopback:
            return host
        return prefix

    def _prefix_allowed(self, bucket: KBucket, host: str) -> bool:
        prefix = self._prefix(host)
        if prefix is None:
            return True
        in_bucket = sum(1 for c in bucket.contacts.values() if self._prefix(c.host) == prefix)
        return (
            in_bucket < self.max_per_prefix_bucket and self._prefix_counts[prefix] < self.max_per_prefix_table
        )

    def observe(
        self, node_id: bytes, host: str, port: int, now: float, address_proven: bool
    ) -> tuple[AddResult, Contact | None]:
        """Record that ``node_id`` spoke to us from (host, port) with a valid signature.

        ``address_proven`` is True for responses to our own requests (the node answered at the address we
        chose). An unproven message from a known id at a different address yields CHALLENGE, from an unknown
        id VERIFY with the would-be contact (ping it there and call again with ``address_proven=True`` if it
        answers) when its bucket has room or can split; a full bucket ignores it (no ping per stranger).
        PING_OLDEST (proven newcomers only) returns the contact to ping; the newcomer is kept as a
        replacement and enters when :meth:`mark_failed` evicts the old one. A proven newcomer for a full
        bucket that holds a contact with failed requests takes that contact's place at once (ADDED).
        """
        if node_id == self.own_id or len(node_id) != ID_BYTES:
            return AddResult.REJECTED, None
        if address_proven:
            self._failed_strangers.pop(node_id, None)
        bucket = self.bucket_for(node_id)
        bucket.last_touched = now
        known = bucket.contacts.get(node_id)
        if known is not None:
            if (known.host, known.port) != (host, port):
                if not address_proven:
                    return AddResult.CHALLENGE, known
                self._forget_prefix(known.host)
                known.host, known.port = host, port
                self._count_prefix(host)
            known.last_seen, known.failures = now, 0
            bucket.contacts.move_to_end(node_id)
            return AddResult.UPDATED, known
        if not self._prefix_allowed(bucket, host):
            return AddResult.REJECTED, None
        contact = Contact(node_id, host, port, last_seen=now)
        has_room = len(bucket.contacts) < self.bucket_size
        if not address_proven:
            if has_room or (bucket.covers(self.own_id) and bucket.hi - bucket.lo > 1):
                return AddResult.VERIFY, contact
            return AddResult.REJECTED, None  # a full bucket prefers its old contacts: no ping for a stranger
        if has_room:
            bucket.contacts[node_id] = contact
            self._count_prefix(host)
            return AddResult.ADDED, contact
        if bucket.covers(self.own_id) and bucket.hi - bucket.lo > 1:
            self._split(bucket)
            return self.observe(node_id, host, port, now, address_proven)
        failing = max(bucket.contacts.values(), key=lambda c: c.failures)
        if failing.failures > 0 and self._replace(bucket, failing, contact):
            return AddResult.ADDED, contact
        bucket.replacements[node_id] = contact
        bucket.replacements.move_to_end(node_id)
        while len(bucket.replacements) > self.bucket_size:
            bucket.replacements.popitem(last=False)
        oldest = next(iter(bucket.contacts.values()))
        return AddResult.PING_OLDEST, oldest

    def mark_failed(self, node_id: bytes, max_failures: int = 1) -> bool:
        """Count a timeout; True if the contact was replaced.

        After ``max_failures`` timeouts in a row the contact gives way to the most recently seen replacement,
        if one exists (and fits the prefix caps); without one it stays, so a slow moment never empties a
        bucket (from ``stale_after`` failures on it is only used when no live contact is left). Any answer
        resets the count (:meth:`observe`).
        """
        bucket = self.bucket_for(node_id)
        contact = bucket.contacts.get(node_id)
        if contact is None:
            bucket.replacements.pop(node_id, None)
            self._failed_strangers[node_id] = self._failed_strangers.pop(node_id, 0) + 1
            if len(self._failed_strangers) > _FAILED_STRANGERS:
                self._failed_strangers.popitem(last=False)
            return False
        contact.failures += 1
        if contact.failures < max_failures:
            return False
        while bucket.replacements:
            _, replacement = bucket.replacements.popitem(last=True)  # most recently seen first
            if self._replace(bucket, contact, replacement):
                return True
        return False

    def remove(self, node_id: bytes) -> bool:
        """Drop ``node_id`` (it said it is a client now: unreachable nodes hold no storage duty)."""
        bucket = self.bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        contact = bucket.contacts.pop(node_id, None)
        if contact is None:
            return False
        self._forget_prefix(contact.host)
        return True

    def _replace(self, bucket: KBucket, old: Contact, new: Contact) -> bool:
        """Put ``new`` in ``old``'s place if the prefix caps allow it without ``old``."""
        del bucket.contacts[old.node_id]
        self._forget_prefix(old.host)
        if self._prefix_allowed(bucket, new.host):
            bucket.replacements.pop(new.node_id, None)
            bucket.contacts[new.node_id] = new
            self._count_prefix(new.host)
            return True
        bucket.contacts[old.node_id] = old  # back where it was: the least recently seen end
        bucket.contacts.move_to_end(old.node_id, last=False)
        self._count_prefix(old.host)
        return False

    def is_stale(self, node_id: bytes) -> bool:
        """Whether ``node_id`` stopped answering us (a contact or a stranger; others may still name it)."""
        contact = self.get(node_id)
        failures = contact.failures if contact is not None else self._failed_strangers.get(node_id, 0)
        return failures >= self.stale_after

    def has_live(self) -> bool:
        """Whether any contact is not stale."""
        return any(c.failures < self.stale_after for b in self.buckets for c in b.contacts.values())

    def nearest(
        self, target: bytes, count: int, exclude: bytes | None = None, include_stale: bool = False
    ) -> list[Contact]:
        """The ``count`` contacts nearest ``target``; stale ones only if asked (nobody is sent to a node that
        stopped answering, unless nothing else is left)."""
        contacts = [
            c
            for b in self.buckets
            for c in b.contacts.values()
            if c.node_id != exclude and (include_stale or c.failures < self.stale_after)
        ]
        target_int = id_to_int(target)
        contacts.sort(key=lambda c: id_to_int(c.node_id) ^ target_int)
        return contacts[:count]

    def stale_buckets(self, now: float, interval: float) -> list[KBucket]:
        """Buckets with no lookup or contact in ``interval`` seconds: refresh them (section 2.3)."""
        return [b for b in self.buckets if now - b.last_touched >= interval]

    def touch(self, target: bytes, now: float) -> None:
        self.bucket_for(target).last_touched = now

    def _split(self, bucket: KBucket) -> None:
        index = self.buckets.index(bucket)
        middle = (bucket.lo + bucket.hi) // 2
        low, high = KBucket(bucket.lo, middle), KBucket(middle, bucket.hi)
        for source, attr in ((bucket.contacts, "contacts"), (bucket.replacements, "replacements")):
            for node_id, contact in source.items():
                half = low if low.covers(node_id) else high
                getattr(half, attr)[node_id] = contact
        low.last_touched = high.last_touched = bucket.last_touched
        self.buckets[index : index + 1] = [low, high]

    def _count_prefix(self, host: str) -> None:
        prefix = self._prefix(host)
        if prefix is not None:
            self._prefix_counts[prefix] += 1

    def _forget_prefix(self, host: str) -> None:
        prefix = self._prefix(host)
        if prefix is not None:
            self._prefix_counts[prefix] -= 1
