"""Local record storage: ``key id -> subkey -> record`` with expiry and per-owner quotas (pure)."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable

from node_agent.dht.api import DHTValidationError, RecordView
from node_agent.dht.records import SignedRecord, key_id

Prefers = Callable[[RecordView, RecordView], bool]


class RecordStore:
    """Validated records only (callers validate first); expired ones vanish on access or :meth:`expire`."""

    def __init__(self, max_records_per_owner: int) -> None:
        self.max_records_per_owner = max_records_per_owner
        self._records: dict[bytes, dict[str | None, tuple[SignedRecord, RecordView]]] = {}
        self._per_owner: Counter[bytes] = Counter()
        self._expiry_heap: list[tuple[float, bytes, str | None]] = []

    def __len__(self) -> int:
        return sum(len(v) for v in self._records.values())

    def put(self, record: SignedRecord, view: RecordView, now: float, prefers: Prefers) -> bool:
        """Store if new or preferred over the current value; False if the current one wins.

        Raises DHTValidationError when the owner already holds its quota of records here.
        """
        if record.expiration <= now:
            return False
        kid = key_id(record.key)
        subkeys = self._records.setdefault(kid, {})
        current = subkeys.get(record.subkey)
        if current is not None:
            if current[0] == record:
                return True
            if current[1].expiration > now and not prefers(view, current[1]):
                return False
        elif self._per_owner[record.owner] >= self.max_records_per_owner:
            raise DHTValidationError(
                f"owner {record.owner.hex()[:12]} exceeded {self.max_records_per_owner} records"
            )
        if current is not None:
            self._per_owner[current[0].owner] -= 1
        subkeys[record.subkey] = (record, view)
        self._per_owner[record.owner] += 1
        heapq.heappush(self._expiry_heap, (record.expiration, kid, record.subkey))
        return True

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
            if entry is None or entry[0].expiration != expiration:
                continue  # superseded by a later value; its own heap entry handles it
            del subkeys[subkey]
            self._per_owner[entry[0].owner] -= 1
            if not subkeys:
                del self._records[kid]
            dropped += 1
        return dropped
