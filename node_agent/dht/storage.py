"""Local record storage: ``key id -> subkey -> record`` with expiry, quotas and caps (pure).

Every record costs its owner one slot of ``max_records_per_owner``, and the *source* that stored it (a
:func:`~node_agent.dht.endpoints.source_key`: an address prefix, so rotating ports or ids does not help) one
record and its estimated memory footprint of the per-source caps; the whole store is capped as well. A record
over any cap is refused (:class:`StoreLimitError`), never stored by evicting someone else's.
"""

from __future__ import annotations

import heapq
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node_agent.dht.api import DHTValidationError, RecordView
from node_agent.dht.records import SignedRecord, key_id

Prefers = Callable[[RecordView, RecordView], bool]
Slot = tuple[bytes, str | None]
LOCAL_SOURCE = None  # the node's own records: no per-source cap, but the total caps apply
# Python objects around one record (record, view, dict slots, heap entry): about 560 bytes measured with
# tracemalloc, rounded up.
RECORD_OVERHEAD_BYTES = 1024


def decoded_size(value: object) -> int:
    """Bytes of the Python objects a decoded msgpack value holds (walked, so the cost is O(its objects)).

    The packed size is no bound: 16 KiB of empty msgpack arrays decode to about a megabyte of lists.
    """
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total


def footprint(record: SignedRecord, view: RecordView) -> int:
    """Estimated memory held by one stored record: packed value, decoded value, names and overhead."""
    names = len(record.key) + len(record.subkey or "")
    return len(record.value_bytes) + decoded_size(view.value) + 2 * names + RECORD_OVERHEAD_BYTES


def _decrement(counter: Counter[Any], key: object, amount: int) -> None:
    """Counters drop keys at zero, so sources and owners that left cost no memory."""
    counter[key] -= amount
    if counter[key] <= 0:
        del counter[key]


class StoreLimitError(DHTValidationError):
    """A record was refused because its owner, its source or the whole store is at a cap."""


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_records_per_owner: int = 4096
    max_records_per_source: int = 8192
    max_bytes_per_source: int = 16 * 1024 * 1024
    max_records: int = 65536
    max_bytes: int = 48 * 1024 * 1024


class RecordStore:
    """Validated records only (callers validate first); expired ones vanish on access or :meth:`expire`."""

    def __init__(self, max_records_per_owner: int, limits: StoreLimits | None = None) -> None:
        self.max_records_per_owner = max_records_per_owner
        self.limits = limits or StoreLimits(max_records_per_owner=max_records_per_owner)
        self._records: dict[bytes, dict[str | None, tuple[SignedRecord, RecordView]]] = {}
        self._accounts: dict[Slot, tuple[str | None, int]] = {}  # slot -> (source, footprint)
        self._per_owner: Counter[bytes] = Counter()
        self._source_records: Counter[str | None] = Counter()
        self._source_bytes: Counter[str | None] = Counter()
        self._count = 0
        self.total_bytes = 0
        # One entry per stored version; superseded ones are skipped when popped and the heap is rebuilt once
        # they outnumber the live records, so re-storing one record many times cannot grow it without bound.
        self._expiry_heap: list[tuple[float, bytes, str | None]] = []

    def __len__(self) -> int:
        return self._count

    def put(
        self,
        record: SignedRecord,
        view: RecordView,
        now: float,
        prefers: Prefers,
        source: str | None = LOCAL_SOURCE,
    ) -> bool:
        """Store if new or preferred over the current value; False if the current one wins.

        Raises StoreLimitError when the owner, the source or the store is at a cap.
        """
        if record.expiration <= now:
            return False
        kid = key_id(record.key)
        subkeys = self._records.get(kid)
        current = subkeys.get(record.subkey) if subkeys else None
        if current is not None:
            if current[0] == record:
                return True
            if current[1].expiration > now and not prefers(view, current[1]):
                return False
        elif self._per_owner[record.owner] >= self.max_records_per_owner:
            raise StoreLimitError(
                f"owner {record.owner.hex()[:12]} exceeded {self.max_records_per_owner} records"
            )
        slot = (kid, record.subkey)
        cost = footprint(record, view)
        self._check_caps(source, cost, self._accounts.get(slot) if current is not None else None)
        if current is not None:
            self._release(slot, current[0])
        if subkeys is None:
            subkeys = self._records[kid] = {}
        subkeys[record.subkey] = (record, view)
        self._charge(slot, record, source, cost)
        heapq.heappush(self._expiry_heap, (record.expiration, kid, record.subkey))
        if len(self._expiry_heap) > 2 * self._count + 64:
            self._compact_heap()
        return True

    def _check_caps(self, source: str | None, cost: int, replaced: tuple[str | None, int] | None) -> None:
        limits = self.limits
        old_source, old_cost = replaced if replaced is not None else (None, 0)
        if replaced is None and self._count >= limits.max_records:
            raise StoreLimitError(f"the store holds its limit of {limits.max_records} records")
        if self.total_bytes - old_cost + cost > limits.max_bytes:
            raise StoreLimitError(f"the store holds its limit of {limits.max_bytes} bytes")
        if source is LOCAL_SOURCE:
            return
        same = replaced is not None and old_source == source
        if not same and self._source_records[source] >= limits.max_records_per_source:
            raise StoreLimitError(
                f"source {source} holds its limit of {limits.max_records_per_source} records"
            )
        if self._source_bytes[source] - (old_cost if same else 0) + cost > limits.max_bytes_per_source:
            raise StoreLimitError(f"source {source} holds its limit of {limits.max_bytes_per_source} bytes")

    def _charge(self, slot: Slot, record: SignedRecord, source: str | None, cost: int) -> None:
        self._accounts[slot] = (source, cost)
        self._per_owner[record.owner] += 1
        self._source_records[source] += 1
        self._source_bytes[source] += cost
        self._count += 1
        self.total_bytes += cost

    def _release(self, slot: Slot, record: SignedRecord) -> None:
        source, cost = self._accounts.pop(slot, (LOCAL_SOURCE, 0))
        _decrement(self._per_owner, record.owner, 1)
        _decrement(self._source_records, source, 1)
        _decrement(self._source_bytes, source, cost)
        self._count -= 1
        self.total_bytes -= cost

    def _compact_heap(self) -> None:
        self._expiry_heap = [
            (record.expiration, kid, subkey)
            for kid, subkeys in self._records.items()
            for subkey, (record, _) in subkeys.items()
        ]
        heapq.heapify(self._expiry_heap)

    def same(self, record: SignedRecord, now: float) -> tuple[SignedRecord, RecordView] | None:
        """The stored entry if ``record`` is byte-for-byte the one stored and still live: a re-store of it
        needs no second signature check (Ed25519 signatures are deterministic, so honest re-stores match)."""
        subkeys = self._records.get(key_id(record.key))
        entry = subkeys.get(record.subkey) if subkeys else None
        if entry is None or entry[0] != record or entry[0].expiration <= now:
            return None
        return entry

    def source_usage(self, source: str | None) -> tuple[int, int]:
        """(records, estimated bytes) that ``source`` holds here."""
        return self._source_records[source], self._source_bytes[source]

    def get(self, kid: bytes, now: float) -> list[tuple[SignedRecord, RecordView]]:
        self.expire(now)
        return list(self._records.get(kid, {}).values())

    def items(self, now: float) -> list[tuple[SignedRecord, RecordView]]:
        self.expire(now)
        return [entry for subkeys in self._records.values() for entry in subkeys.values()]

    def expire(self, now: float) -> int:
        """Drop expired records (a heap keeps this O(expired log n))."""
        dropped = 0
        while self._expiry_heap and self._expiry_heap[0][0] <= now:
            expiration, kid, subkey = heapq.heappop(self._expiry_heap)
            subkeys = self._records.get(kid)
            entry = subkeys.get(subkey) if subkeys else None
            if subkeys is None or entry is None or entry[0].expiration != expiration:
                continue  # superseded by a later value; its own heap entry handles it
            del subkeys[subkey]
            self._release((kid, subkey), entry[0])
            if not subkeys:
                del self._records[kid]
            dropped += 1
        return dropped
