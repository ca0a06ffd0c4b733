"""Which records a find answer carries: fair across owners, in pages a reader continues (pure, no I/O).

One key may hold many subkeys from many owners, and one answer is one datagram. Records are answered in
rounds: every owner's first record (by subkey), then every owner's second, and so on, so an owner with
thousands of records cannot push another owner's single record out of the first answer. Expiry plays no
part in the order (a long expiry buys nothing). When the datagram is full the answer says so and carries
a cursor, the position ``[round, owner]`` of its last record; the reader asks again with that cursor and
gets the records after it, for at most :data:`MAX_FIND_PAGES` pages per node and lookup.

The cursor names a position, not an index: records stored or expired between two pages move the order
only around them (a reader may miss a record that changed meanwhile; its next lookup sees it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from node_agent.dht.api import ID_BYTES
from node_agent.dht.records import SignedRecord
from node_agent.wire import WireError

#: Pages one reader fetches from one node for one key in one lookup (about 60 KiB each by default).
MAX_FIND_PAGES = 16
#: Records in one answer page (a reader checks at most this many per datagram).
MAX_RECORDS_PER_PAGE = 256
#: Rounds beyond any honest use (a round is one record per owner; quotas keep owners far below this).
_MAX_ROUND = 1 << 32

Cursor = tuple[int, bytes]  # (round, owner) of the last record sent


def wire_size(record: SignedRecord) -> int:
    """Upper bound of a record's packed size inside an answer (msgpack headers included)."""
    return len(record.value_bytes) + len(record.key.encode()) + len((record.subkey or "").encode()) + 120


def fair_order(records: Iterable[SignedRecord]) -> list[tuple[Cursor, SignedRecord]]:
    """Round-robin over owners: (round, owner) is unique per record and is its position in the answer."""
    by_owner: dict[bytes, list[SignedRecord]] = {}
    for record in records:
        by_owner.setdefault(record.owner, []).append(record)
    ordered: list[tuple[Cursor, SignedRecord]] = []
    for owner, owned in by_owner.items():
        owned.sort(key=lambda r: (r.subkey is not None, r.subkey or ""))
        ordered.extend(((index, owner), record) for index, record in enumerate(owned))
    ordered.sort(key=lambda item: item[0])
    return ordered


def answer_page(
    records: Iterable[SignedRecord],
    after: Cursor | None,
    budget: int,
    page_size: int,
    max_records: int = MAX_RECORDS_PER_PAGE,
) -> tuple[list[SignedRecord], Cursor | None, bool]:
    """The records after ``after`` that fit in ``budget`` bytes: (page, cursor to continue, truncated).

    A record larger than a whole page (``page_size``) is stepped over, so a reader always makes progress
    (an honest one never is: values are capped well below the datagram). When the remaining ``budget`` of
    a many-query answer fits nothing, the answer is truncated with no cursor when nothing was sent from the
    start (the reader asks that key alone).
    """
    page: list[SignedRecord] = []
    last: Cursor | None = after
    for position, record in fair_order(records):
        if after is not None and position <= after:
            continue
        size = wire_size(record)
        if size > page_size:
            last = position  # can never be sent; step over it
            continue
        if len(page) >= max_records or size > budget:
            return page, last, True
        budget -= size
        page.append(record)
        last = position
    return page, None, False


def cursor_to_wire(cursor: Cursor) -> list[Any]:
    return [cursor[0], cursor[1]]


def cursor_from_wire(obj: Any) -> Cursor:
    """Parse a cursor from the network; WireError if it is not ``[round, owner id]``."""
    if not isinstance(obj, list) or len(obj) != 2:
        raise WireError("cursor must be [round, owner id]")
    position, owner = obj
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < _MAX_ROUND:
        raise WireError("cursor round must be a small non-negative integer")
    if not isinstance(owner, bytes) or len(owner) != ID_BYTES:
        raise WireError(f"cursor owner must be {ID_BYTES} bytes")
    return position, owner
