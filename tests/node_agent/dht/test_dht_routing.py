from __future__ import annotations

import os

from node_agent.dht.routing import AddResult, RoutingTable, distance, id_to_int, ip_prefix

OWN = bytes(20)


def node_id(first_byte: int, rest: bytes | None = None) -> bytes:
    return bytes([first_byte]) + (rest if rest is not None else os.urandom(19))


def test_xor_distance_and_prefixes() -> None:
    a, b = os.urandom(20), os.urandom(20)
    assert distance(a, b) == distance(b, a) == id_to_int(a) ^ id_to_int(b)
    assert distance(a, a) == 0
    assert ip_prefix("10.1.2.3") == "10.1.2.0/24"
    assert ip_prefix("127.0.0.1") is None
    assert ip_prefix("2001:db8::1") == "2001:db8::/64"


def test_buckets_split_around_own_id_and_far_buckets_keep_old_contacts() -> None:
    table = RoutingTable(OWN, bucket_size=4)
    far = [node_id(0x80 + i) for i in range(4)]
    for i, contact in enumerate(far):
        assert (
            table.observe(contact, "127.0.0.1", 1000 + i, now=1.0, address_proven=True)[0] is AddResult.ADDED
        )
    near = [node_id(0x01 + i) for i in range(4)]
    for i, contact in enumerate(near):
        assert (
            table.observe(contact, "127.0.0.1", 2000 + i, now=2.0, address_proven=True)[0] is AddResult.ADDED
        )
    assert len(table.buckets) >= 2 and len(table) == 8
    # The far half does not contain our id: it is full and never splits; the oldest must be pinged first.
    newcomer = node_id(0xF0)
    result, oldest = table.observe(newcomer, "127.0.0.1", 3000, now=3.0, address_proven=True)
    assert result is AddResult.PING_OLDEST and oldest is not None and oldest.node_id == far[0]
    assert newcomer not in table
    # The oldest answered? It stays. It failed? The newcomer replaces it.
    assert table.mark_failed(far[0], max_failures=1)
    assert newcomer in table and far[0] not in table


def test_nearest_returns_sorted_by_xor_distance() -> None:
    table = RoutingTable(OWN, bucket_size=20)
    ids = [os.urandom(20) for _ in range(60)]
    for i, contact in enumerate(ids):
        table.observe(contact, "127.0.0.1", 1000 + i, now=1.0, address_proven=True)
    target = os.urandom(20)
    nearest = table.nearest(target, 5)
    present = [c for c in ids if c in table]
    assert [c.node_id for c in nearest] == sorted(present, key=lambda c: distance(c, target))[:5]


def test_known_id_is_not_moved_by_an_unproven_address() -> None:
    table = RoutingTable(OWN)
    contact = node_id(0x42)
    table.observe(contact, "127.0.0.1", 1000, now=1.0, address_proven=True)
    result, known = table.observe(contact, "127.0.0.1", 6666, now=2.0, address_proven=False)
    assert result is AddResult.CHALLENGE and known is not None
    assert table.get(contact).port == 1000
    result, _ = table.observe(contact, "127.0.0.1", 6666, now=3.0, address_proven=True)
    assert result is AddResult.UPDATED and table.get(contact).port == 6666


def test_ip_prefix_caps_per_bucket_and_table_with_loopback_exempt() -> None:
    table = RoutingTable(OWN, bucket_size=20, max_per_prefix_bucket=2, max_per_prefix_table=3)
    results = [
        table.observe(node_id(0x80 + i), f"10.0.0.{i + 1}", 1000, now=1.0, address_proven=True)[0]
        for i in range(3)
    ]
    assert results == [AddResult.ADDED, AddResult.ADDED, AddResult.REJECTED]
    assert table.observe(node_id(0x03), "10.0.1.1", 1000, 1.0, True)[0] is AddResult.ADDED  # other /24
    per_table = RoutingTable(OWN, bucket_size=20, max_per_prefix_bucket=10, max_per_prefix_table=3)
    added = [per_table.observe(node_id(0x80 + i), f"10.0.0.{i + 1}", 1, 1.0, True)[0] for i in range(4)]
    assert added == [AddResult.ADDED] * 3 + [AddResult.REJECTED]
    loopback = [table.observe(node_id(0x90 + i), "127.0.0.1", 2000 + i, 1.0, True)[0] for i in range(5)]
    assert set(loopback) == {AddResult.ADDED}
    strict = RoutingTable(OWN, max_per_prefix_bucket=1, exempt_loopback=False)
    assert strict.observe(node_id(0x80), "127.0.0.1", 1, 1.0, True)[0] is AddResult.ADDED
    assert strict.observe(node_id(0x81), "127.0.0.1", 2, 1.0, True)[0] is AddResult.REJECTED


def test_own_id_and_bad_ids_are_rejected_and_stale_buckets_reported() -> None:
    table = RoutingTable(OWN)
    assert table.observe(OWN, "127.0.0.1", 1, 1.0, True)[0] is AddResult.REJECTED
    assert table.observe(b"short", "127.0.0.1", 1, 1.0, True)[0] is AddResult.REJECTED
    assert table.stale_buckets(now=1000.0, interval=600.0) == table.buckets
    table.touch(os.urandom(20), now=1000.0)
    assert table.stale_buckets(now=1000.0, interval=600.0) == []


def test_unknown_id_enters_only_after_answering_at_its_address() -> None:
    """A signed request may be a capture replayed from elsewhere: it names the id, not the address."""
    table = RoutingTable(OWN)
    contact = node_id(0x42)
    result, candidate = table.observe(contact, "127.0.0.1", 6666, now=1.0, address_proven=False)
    assert result is AddResult.VERIFY and candidate is not None and candidate.address == ("127.0.0.1", 6666)
    assert contact not in table and len(table) == 0
    assert table.observe(contact, "127.0.0.1", 6666, now=2.0, address_proven=True)[0] is AddResult.ADDED
    assert table.get(contact).port == 6666


def test_a_full_bucket_sends_no_verification_ping_to_strangers() -> None:
    table = RoutingTable(OWN, bucket_size=2)
    for i in range(2):
        table.observe(node_id(0x80 + i), "127.0.0.1", 1000 + i, now=1.0, address_proven=True)
    table.observe(node_id(0x01), "127.0.0.1", 999, now=1.0, address_proven=True)  # split: far half full
    assert table.observe(node_id(0xF0), "127.0.0.1", 3000, 2.0, False) == (AddResult.REJECTED, None)


def full_far_bucket(table: RoutingTable) -> list[bytes]:
    """Four contacts in the far half of a bucket_size=4 table (that half never splits)."""
    for i in range(4):  # fill the near half too, so the first split happens
        table.observe(node_id(0x01 + i), "127.0.0.1", 2000 + i, now=1.0, address_proven=True)
    far = [node_id(0x80 + i) for i in range(4)]
    for i, contact in enumerate(far):
        table.observe(contact, "127.0.0.1", 1000 + i, now=1.0, address_proven=True)
    assert all(contact in table for contact in far)
    return far


def test_a_contact_that_stops_answering_stays_until_a_live_one_can_replace_it() -> None:
    table = RoutingTable(OWN, bucket_size=4)
    far = full_far_bucket(table)
    for _ in range(10):  # a peer busy for a while: many timeouts, nobody to replace it
        assert not table.mark_failed(far[0], max_failures=2)
    assert far[0] in table and table.get(far[0]).failures == 10
    # It answers again: fresh as before.
    assert table.observe(far[0], "127.0.0.1", 1000, now=2.0, address_proven=True)[0] is AddResult.UPDATED
    assert table.get(far[0]).failures == 0


def test_the_last_contacts_of_a_table_are_never_dropped_for_timeouts() -> None:
    table = RoutingTable(OWN)
    peers = [node_id(0x10 + i) for i in range(2)]
    for i, peer in enumerate(peers):
        table.observe(peer, "127.0.0.1", 1000 + i, now=1.0, address_proven=True)
    for _ in range(5):
        for peer in peers:
            table.mark_failed(peer, max_failures=2)
    assert len(table) == 2 and not table.has_live() and table.is_stale(peers[0])
    assert table.nearest(OWN, 5) == [] and len(table.nearest(OWN, 5, include_stale=True)) == 2
    table.observe(peers[0], "127.0.0.1", 1000, now=2.0, address_proven=True)
    assert table.has_live() and [c.node_id for c in table.nearest(OWN, 5)] == [peers[0]]


def test_a_proven_newcomer_takes_the_place_of_a_failing_contact_at_once() -> None:
    table = RoutingTable(OWN, bucket_size=4)
    far = full_far_bucket(table)
    table.mark_failed(far[2], max_failures=2)
    newcomer = node_id(0xF0)
    result, contact = table.observe(newcomer, "127.0.0.1", 3000, now=3.0, address_proven=True)
    assert result is AddResult.ADDED and contact is not None and contact.node_id == newcomer
    assert newcomer in table and far[2] not in table and all(c in table for c in far[:2] + far[3:])


def test_a_stale_contact_gives_way_to_a_waiting_replacement() -> None:
    table = RoutingTable(OWN, bucket_size=4)
    far = full_far_bucket(table)
    newcomer = node_id(0xF0)
    assert (
        table.observe(newcomer, "127.0.0.1", 3000, now=3.0, address_proven=True)[0] is AddResult.PING_OLDEST
    )
    assert not table.mark_failed(far[1], max_failures=2)  # one timeout: not yet stale
    assert table.mark_failed(far[1], max_failures=2)
    assert newcomer in table and far[1] not in table and len(table) == 8


def test_a_stranger_that_timed_out_twice_is_stale_until_it_answers() -> None:
    table = RoutingTable(OWN)
    stranger = node_id(0x33)
    table.mark_failed(stranger)
    assert not table.is_stale(stranger) and stranger not in table
    table.mark_failed(stranger)
    assert table.is_stale(stranger)
    table.observe(stranger, "127.0.0.1", 1000, now=1.0, address_proven=True)
    assert not table.is_stale(stranger) and stranger in table
    for i in range(300):  # bounded memory: the oldest strangers are forgotten
        table.mark_failed(node_id(0x40, i.to_bytes(19, "big")))
    assert len(table._failed_strangers) == 256
