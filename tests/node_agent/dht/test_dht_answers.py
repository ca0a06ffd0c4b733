"""Find answers: fair across owners, paged with a cursor, hostile cursors refused (pure and over real UDP)."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.dht import DHTNode, owner_subkey
from node_agent.dht.answers import (
    MAX_RECORDS_PER_PAGE,
    answer_page,
    cursor_from_wire,
    cursor_to_wire,
    fair_order,
    wire_size,
)
from node_agent.dht.config import DHTConfig
from node_agent.dht.protocol import ProtocolCore
from node_agent.dht.records import key_id, sign_record
from node_agent.identity import Identity
from node_agent.wire import WireError, pack, unpack

NOW = 1_700_000_000.0
ANY_MSGPACK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=10,
)
OWNERS = [Identity.generate() for _ in range(3)]


def records_of(owner: Identity, count: int, *, ttl: float = 60.0, pad: int = 0) -> list:
    return [
        sign_record(owner, "grid", owner_subkey(str(i), owner.node_id), {"pad": "x" * pad}, NOW + ttl)
        for i in range(count)
    ]


def test_fair_order_is_round_robin_over_owners_and_ignores_expiry() -> None:
    flood = records_of(OWNERS[0], 50, ttl=3600, pad=500)  # long expiry and padding buy nothing
    honest = records_of(OWNERS[1], 2) + records_of(OWNERS[2], 1)
    order = [record for _, record in fair_order(flood + honest)]
    first_round = {record.owner for record in order[:3]}
    assert first_round == {o.node_id for o in OWNERS}
    assert set(order[:6]) >= set(honest)


def test_pages_cover_every_record_exactly_once() -> None:
    stored = records_of(OWNERS[0], 300, pad=200) + records_of(OWNERS[1], 5) + records_of(OWNERS[2], 40)
    seen: list = []
    cursor = None
    pages = 0
    while True:
        page, cursor, truncated = answer_page(stored, cursor, budget=8 * 1024, page_size=8 * 1024)
        assert truncated == (cursor is not None)
        assert sum(wire_size(r) for r in page) <= 8 * 1024 and len(page) <= MAX_RECORDS_PER_PAGE
        seen.extend(page)
        pages += 1
        if cursor is None:
            break
        cursor = cursor_from_wire(unpack(pack(cursor_to_wire(cursor))))  # as it travels
    assert pages > 1 and sorted(seen, key=id) == sorted(stored, key=id) and len(set(seen)) == len(seen)


def test_a_record_larger_than_a_page_is_stepped_over() -> None:
    big = records_of(OWNERS[0], 1, pad=4000)
    small = records_of(OWNERS[1], 1)
    assert answer_page(big + small, None, budget=1000, page_size=1000) == (small, None, False)


def test_an_exhausted_budget_truncates_without_losing_records() -> None:
    stored = records_of(OWNERS[0], 3)
    assert answer_page(stored, None, budget=10, page_size=8 * 1024) == ([], None, True)
    page, cursor, truncated = answer_page(stored, None, budget=2 * wire_size(stored[0]), page_size=8 * 1024)
    assert len(page) == 2 and truncated and cursor is not None
    assert answer_page(stored, cursor, budget=8 * 1024, page_size=8 * 1024)[0] == [stored[2]]


@settings(max_examples=300, deadline=None)
@given(ANY_MSGPACK)
def test_any_msgpack_structure_as_cursor_parses_or_raises_wire_error(obj: object) -> None:
    try:
        position, owner = cursor_from_wire(obj)
    except WireError:
        return
    assert isinstance(position, int) and position >= 0 and len(owner) == 20


HOLDER = ProtocolCore(Identity.generate(), DHTConfig())
for _record in records_of(OWNERS[0], 3):
    HOLDER.store_locally(_record, HOLDER.validators.check(_record, NOW), NOW)


@settings(max_examples=300, deadline=None)
@given(st.one_of(ANY_MSGPACK, st.tuples(ANY_MSGPACK).map(lambda t: [[key_id("grid"), "grid", t[0]]])))
def test_any_find_payload_is_answered_never_raised(queries: object) -> None:
    reader = ProtocolCore(Identity.generate(), DHTConfig())
    _, data = reader.request("find", {"q": queries}, ("127.0.0.1", 2), None, NOW)
    request = HOLDER.receive(data, ("127.0.0.1", 1), NOW)
    kind, payload = HOLDER.handle_find(request, NOW)
    assert kind in ("ok", "err") and isinstance(payload, dict)


def test_find_with_a_hostile_cursor_is_answered_with_an_error() -> None:
    config = DHTConfig()
    reader, holder = ProtocolCore(Identity.generate(), config), ProtocolCore(Identity.generate(), config)
    for record in records_of(OWNERS[0], 3):
        holder.store_locally(record, holder.validators.check(record, NOW), NOW)
    for cursor in ([-1, b"x" * 20], [0, b"short"], [2**40, b"x" * 20], "abc", [0, b"x" * 20, 3]):
        _, data = reader.request(
            "find", {"q": [[key_id("grid"), "grid", cursor]]}, ("127.0.0.1", 2), None, NOW
        )
        request = holder.receive(data, ("127.0.0.1", 1), NOW)
        kind, payload = holder.handle_find(request, NOW)
        assert kind == "err" and "cursor" in payload["e"]


async def test_get_pages_through_answers_larger_than_a_datagram(dht_swarm) -> None:
    """Before paging, a reader saw only the first datagram's worth (~100 of these 600 records)."""
    writer, *others = await dht_swarm(4)
    reader = await DHTNode.create(initial_peers=[others[0].endpoint], listen="127.0.0.1:0", client_mode=True)
    try:
        expiration = time.time() + 120
        items = [
            ("grid", owner_subkey(str(i), writer.node_id), {"pad": "y" * 400}, expiration) for i in range(600)
        ]
        assert all(await writer.store_many(items))
        found = await reader.get("grid", latest=True)
        assert len(found) == 600
        first = await reader.get("grid")  # stops at the first node that has the key: still every page
        assert len(first) == 600
    finally:
        await reader.shutdown()
