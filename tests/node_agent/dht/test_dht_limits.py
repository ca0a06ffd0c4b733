"""Pure checks of the DHT's limits: address validation, source keys, storage caps, expiry heap, penalties,
and the contact decoder under arbitrary input (hypothesis)."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent.dht.api import PeerInfo
from node_agent.dht.config import DHTConfig
from node_agent.dht.endpoints import numeric_address, source_key
from node_agent.dht.messages import PeerPenalties, unseal, verify_sealed
from node_agent.dht.node import _RetransmitTimer
from node_agent.dht.protocol import ProtocolCore
from node_agent.dht.ratelimit import CostBuckets
from node_agent.dht.records import SignedRecord, key_id, sign_record
from node_agent.dht.storage import LOCAL_SOURCE, RecordStore, StoreLimitError, StoreLimits, footprint
from node_agent.dht.validation import ValidatorRegistry
from node_agent.identity import Identity
from node_agent.wire import WireError, pack, pack_message

NOW = 1_800_000_000.0
VALIDATORS = ValidatorRegistry(16 * 1024, 24 * 3600)
OWNER = Identity.generate()


@pytest.mark.parametrize(
    ("host", "port", "version", "expected"),
    [
        ("127.0.0.1", 4000, 4, ("127.0.0.1", 4000)),
        ("::1", 4000, 6, ("::1", 4000)),
        ("2001:db8:0::1", 1, 6, ("2001:db8::1", 1)),
    ],
)
def test_numeric_address_accepts_unicast_literals_of_the_family(host, port, version, expected) -> None:
    assert numeric_address(host, port, version) == expected


@pytest.mark.parametrize(
    ("host", "port", "version"),
    [
        ("a\x00b", 4000, 4),
        ("::1", 4000, 4),
        ("127.0.0.1", 4000, 6),
        ("example.com", 4000, 4),
        ("0.0.0.0", 4000, 4),
        ("255.255.255.255", 4000, 4),
        ("224.0.0.1", 4000, 4),
        ("fe80::1%eth0", 4000, 6),
        ("127.0.0.1", 0, 4),
        ("127.0.0.1", 65536, 4),
        ("127.0.0.1", True, 4),
        (b"\x7f\x00\x00\x01", 4000, 4),
        ("1" * 100, 4000, 4),
    ],
)
def test_numeric_address_refuses_what_a_socket_must_never_see(host, port, version) -> None:
    with pytest.raises(ValueError):
        numeric_address(host, port, version)


def test_scoped_addresses_only_where_the_kernel_gave_them() -> None:
    assert numeric_address("fe80::1%eth0", 4000, 6, allow_scope=True) == ("fe80::1%eth0", 4000)


def test_source_key_groups_by_prefix_and_loopback_by_address() -> None:
    assert source_key("10.1.2.3") == source_key("10.1.2.200") == "10.1.2.0/24"
    assert source_key("2001:db8:1:2::5") == source_key("2001:db8:1:ffff::9") == "2001:db8:1::/48"
    assert source_key("127.0.0.1") != source_key("127.0.0.2")
    assert source_key("::ffff:10.1.2.3") == "10.1.2.0/24" != source_key("::ffff:10.9.2.3")


def record(key: str = "k", subkey: str | None = None, value: object = 1, expiration: float = NOW + 60):
    signed = sign_record(OWNER, key, subkey, value, expiration)
    return signed, VALIDATORS.check(signed, NOW)


def put(store: RecordStore, entry, source: str | None) -> bool:
    return store.put(*entry, NOW, VALIDATORS.prefers, source)


def test_per_source_caps_count_records_and_bytes_and_replacements_once() -> None:
    store = RecordStore(10_000, StoreLimits(10_000, 3, 10**9, 100, 10**9))
    for i in range(3):
        assert put(store, record(subkey=f"s{i}"), "10.0.0.0/24")
    with pytest.raises(StoreLimitError, match="source"):
        put(store, record(subkey="s3"), "10.0.0.0/24")
    assert put(store, record(subkey="s0", expiration=NOW + 120), "10.0.0.0/24")  # a newer version
    assert put(store, record(subkey="s3"), "10.0.1.0/24")  # another source
    assert store.source_usage("10.0.0.0/24")[0] == 3 and len(store) == 4
    big = [record(subkey=f"s{i}", value=b"x" * 4000) for i in range(4)]
    bytes_store = RecordStore(
        10_000, StoreLimits(10_000, 100, sum(footprint(*e) for e in big[:3]), 100, 10**9)
    )
    for entry in big[:3]:
        assert put(bytes_store, entry, "10.0.0.0/24")
    with pytest.raises(StoreLimitError, match="bytes"):
        put(bytes_store, big[3], "10.0.0.0/24")


def test_total_caps_bind_every_source_and_expiry_refunds() -> None:
    store = RecordStore(10_000, StoreLimits(10_000, 100, 10**9, 4, 10**9))
    for i in range(4):
        assert put(store, record(subkey=f"s{i}", expiration=NOW + 10 + i), f"10.0.{i}.0/24")
    with pytest.raises(StoreLimitError, match="store"):
        put(store, record(subkey="own"), LOCAL_SOURCE)
    assert store.expire(NOW + 11) == 2
    assert put(store, record(subkey="own", expiration=NOW + 60), LOCAL_SOURCE)
    assert store.source_usage("10.0.0.0/24") == (0, 0) and len(store) == 3


def test_decoded_size_counts_what_a_small_value_expands_to() -> None:
    packed_size, entry = 16_000, record(value=[[] for _ in range(15_990)])
    assert len(entry[0].value_bytes) <= packed_size
    assert footprint(*entry) > 30 * packed_size  # ~1 MB of empty lists, not 16 KB


def test_re_storing_one_record_keeps_the_heap_bounded() -> None:
    store = RecordStore(10)
    for i in range(20_000):
        assert put(store, record(value=i, expiration=NOW + 60 + i * 0.001), "10.0.0.0/24")
    assert len(store) == 1 and len(store._expiry_heap) <= 2 * len(store) + 64
    assert store.expire(NOW + 10_000) == 1 and len(store) == 0 and store.total_bytes == 0


def test_penalties_remember_a_bounded_number_of_peers() -> None:
    penalties = PeerPenalties(threshold=2, ban_seconds=60, capacity=100)
    for i in range(10_000):
        penalties.offend(f"10.{i // 256}.{i % 256}.0/24", NOW)
    assert len(penalties._offences) <= 100
    for _ in range(2):
        penalties.offend("6.6.6.0/24", NOW)
    assert penalties.is_banned("6.6.6.0/24", NOW) and not penalties.is_banned("6.6.6.0/24", NOW + 61)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=20,
)
hosts = st.sampled_from(["127.0.0.1", "10.0.0.1", "::1", "a\x00b", "example.com", "0.0.0.0", ""]) | st.text(
    max_size=20
)
contacts = st.lists(
    st.one_of(
        st.tuples(st.binary(min_size=20, max_size=20), hosts, st.integers(-5, 70_000)).map(list),
        msgpack_values,
    ),
    max_size=50,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(contacts, msgpack_values))
def test_contact_decoder_returns_only_sendable_addresses_and_never_raises(raw) -> None:
    core = ProtocolCore(Identity.generate(), DHTConfig())
    sender = PeerInfo(b"\x01" * 20, b"\x02" * 32, "127.0.0.1:9")
    for node_id, (host, port) in core.parse_contacts(raw, sender, time.time()):
        assert len(node_id) == 20 and 0 < port < 65536
        address = ipaddress.ip_address(host)
        assert address.version == 4 and not address.is_unspecified and not address.is_multicast


def test_cost_buckets_charge_per_source_refill_and_forget_the_oldest() -> None:
    buckets = CostBuckets(rate=100.0, burst=300.0, size=2)
    assert buckets.take("10.0.0.0/24", 257, NOW)
    assert not buckets.take("10.0.0.0/24", 257, NOW)  # 43 left: refused, and nothing spent
    assert buckets.take("10.0.1.0/24", 257, NOW)  # another source has its own budget
    assert buckets.take("10.0.0.0/24", 257, NOW + 2.15)  # 43 + 215 tokens
    buckets.take("10.0.2.0/24", 1, NOW)
    buckets.take("10.0.3.0/24", 1, NOW)  # two newer sources: the first is forgotten, restarts full
    assert buckets.take("10.0.0.0/24", 300, NOW + 2.15)


def test_an_identical_re_store_reuses_the_stored_record_without_a_second_check() -> None:
    core = ProtocolCore(Identity.generate(), DHTConfig())
    now = time.time()
    record = sign_record(OWNER, "k", None, {"v": 1}, now + 60)
    [entry] = core.check_records([record.to_wire()], None, now)
    assert entry is not None and core.store_locally(*entry, now, "10.0.0.0/24")
    [again] = core.check_records([record.to_wire()], None, now)
    assert again is core.store.get(key_id("k"), now)[0]  # the stored tuple itself: no new check ran
    newer = sign_record(OWNER, "k", None, {"v": 1}, now + 61)
    [fresh] = core.check_records([newer.to_wire()], None, now)
    assert fresh is not None and fresh[0] == newer and fresh is not again
    forged = SignedRecord(*record.to_wire()[:5], bytes(64))  # same content, another signature: checked
    assert core.check_records([forged.to_wire()], None, now) == [None]


@pytest.mark.parametrize("timeouts", [0, 1, 3, 10])
def test_the_request_timeout_has_a_floor_and_doubles_after_timeouts(timeouts: int) -> None:
    timer = _RetransmitTimer(DHTConfig().min_rpc_timeout, DHTConfig().rpc_timeout)
    timer.update(0.001)  # a very fast network: the floor applies
    assert timer.timeout == DHTConfig().min_rpc_timeout == 0.2
    for _ in range(timeouts):
        timer.timed_out()
    assert timer.timeout == min(2.0, 0.2 * 2**timeouts)
    timer.update(0.001)
    assert timer.timeout == 0.2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=msgpack_values, kind=st.sampled_from(["ping", "store", "find", "ok", "err", "x"]), sig=st.binary()
)
def test_the_datagram_decoder_raises_only_wire_errors(body, kind, sig) -> None:
    """Both halves of ``open_sealed`` over arbitrary bodies: the cheap parse and the verification."""
    try:
        inner = pack_message(kind, body if isinstance(body, dict) else {"p": body}, 60_000)
    except WireError:
        return
    for data in (pack([inner, sig]), pack(body), pack([inner, body])):
        try:
            sealed = unseal(data, 60_000)
            verify_sealed(sealed)
        except WireError:
            continue
        raise AssertionError("an unsigned datagram passed verification")
