"""Records, validation and storage: pure tests (no sockets)."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from node_agent.dht.api import DHTValidationError, RecordValidator, RecordView, owner_subkey, subkey_owner
from node_agent.dht.records import SignedRecord, key_id, sign_record
from node_agent.dht.storage import RecordStore
from node_agent.dht.validation import ExpiredRecordError, SchemaValidator, ValidatorRegistry
from node_agent.identity import Identity

NOW = 1_000_000.0
ALICE, MALLORY = Identity.generate(), Identity.generate()


def registry() -> ValidatorRegistry:
    return ValidatorRegistry(max_value_size=1024, max_expiration_ahead=3600.0)


def test_signed_record_round_trips_and_validates() -> None:
    record = sign_record(ALICE, "experts:ffn", "ffn.1@x", {"endpoint": "1.2.3.4:5"}, NOW + 60)
    parsed = SignedRecord.from_wire(record.to_wire())
    assert parsed == record and parsed.owner == ALICE.node_id
    view = registry().check(parsed, NOW)
    assert view.value == {"endpoint": "1.2.3.4:5"} and view.owner == ALICE.node_id


def test_owner_subkey_syntax() -> None:
    subkey = owner_subkey("ffn.3.14", ALICE.node_id)
    assert subkey == f"ffn.3.14@{ALICE.node_id.hex()}"
    assert subkey_owner(subkey) == ALICE.node_id
    assert subkey_owner("plain") is None and subkey_owner(None) is None
    assert subkey_owner("x@" + "AB" * 20) is None  # uppercase hex is not the protected form


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda r: dataclasses.replace(r, value_bytes=b"\x01"), "signature"),
        (lambda r: dataclasses.replace(r, expiration=r.expiration + 1), "signature"),
        (lambda r: dataclasses.replace(r, key="other"), "signature"),
        (lambda r: dataclasses.replace(r, public_key=MALLORY.public_key_bytes), "signature"),
    ],
)
def test_tampered_records_are_refused(mutate, reason: str) -> None:
    record = sign_record(ALICE, "k", None, [1, 2, 3], NOW + 60)
    with pytest.raises(DHTValidationError, match=reason):
        registry().check(mutate(record), NOW)
    checks = registry()
    checks.check(record, NOW)  # the genuine one is remembered as verified ...
    checks.check(record, NOW)
    with pytest.raises(DHTValidationError, match=reason):  # ... which vouches for nothing else
        checks.check(mutate(record), NOW)


def test_forged_owner_protected_subkey_is_refused() -> None:
    forged = sign_record(MALLORY, "experts:ffn", owner_subkey("ffn.1", ALICE.node_id), {"evil": 1}, NOW + 60)
    with pytest.raises(DHTValidationError, match="owner-protected"):
        registry().check(forged, NOW)
    genuine = sign_record(ALICE, "experts:ffn", owner_subkey("ffn.1", ALICE.node_id), {"ok": 1}, NOW + 60)
    registry().check(genuine, NOW)


def test_size_and_expiry_bounds() -> None:
    with pytest.raises(DHTValidationError, match="exceeds"):
        registry().check(sign_record(ALICE, "k", None, b"x" * 2000, NOW + 60), NOW)
    with pytest.raises(DHTValidationError, match="future"):
        registry().check(sign_record(ALICE, "k", None, 1, NOW + 10 * 3600), NOW)
    with pytest.raises(ExpiredRecordError):
        registry().check(sign_record(ALICE, "k", None, 1, NOW - 1), NOW)


class Announcement(msgspec.Struct):
    endpoint: str
    load: int


def test_namespace_validators_apply_by_longest_prefix() -> None:
    validators = registry()
    validators.register(
        "experts:", SchemaValidator(Announcement, max_value_size=100, max_expiration_ahead=60)
    )

    class NoBigLoad(RecordValidator):
        def validate(self, record: RecordView, now: float) -> None:
            if record.value["load"] > 5:
                raise DHTValidationError("load too high")

    validators.register("experts:hot", NoBigLoad())
    validators.check(sign_record(ALICE, "experts:ffn", None, {"endpoint": "e", "load": 1}, NOW + 30), NOW)
    with pytest.raises(DHTValidationError, match="schema"):
        validators.check(sign_record(ALICE, "experts:ffn", None, {"endpoint": 5}, NOW + 30), NOW)
    with pytest.raises(DHTValidationError, match="future"):
        validators.check(
            sign_record(ALICE, "experts:ffn", None, {"endpoint": "e", "load": 1}, NOW + 120), NOW
        )
    with pytest.raises(DHTValidationError, match="load too high"):
        validators.check(sign_record(ALICE, "experts:hot", None, {"endpoint": "e", "load": 9}, NOW + 9), NOW)
    validators.check(sign_record(ALICE, "other", None, {"anything": True}, NOW + 30), NOW)


def test_a_crashing_validator_is_a_validation_error() -> None:
    class Buggy(RecordValidator):
        def validate(self, record: RecordView, now: float) -> None:
            raise KeyError("bug")

    validators = registry()
    validators.register("", Buggy())
    with pytest.raises(DHTValidationError, match="validator error"):
        validators.check(sign_record(ALICE, "k", None, 1, NOW + 30), NOW)


def stored(store: RecordStore, record: SignedRecord) -> bool:
    validators = registry()
    return store.put(record, validators.check(record, NOW), NOW, validators.prefers)


def test_storage_keeps_later_expiration_and_many_subkeys() -> None:
    store = RecordStore(max_records_per_owner=10)
    assert stored(store, sign_record(ALICE, "k", "a", 1, NOW + 100))
    assert not stored(store, sign_record(MALLORY, "k", "a", 2, NOW + 50))  # earlier expiration loses
    assert stored(store, sign_record(MALLORY, "k", "b", 3, NOW + 50))
    assert stored(store, sign_record(ALICE, "k", "a", 4, NOW + 200))
    values = {r.subkey: v.value for r, v in store.get(key_id("k"), NOW)}
    assert values == {"a": 4, "b": 3}
    assert store.expire(NOW + 60) == 1
    assert {r.subkey for r, _ in store.get(key_id("k"), NOW + 60)} == {"a"}
    assert store.get(key_id("k"), NOW + 300) == [] and len(store) == 0


def test_storage_limits_records_per_owner() -> None:
    store = RecordStore(max_records_per_owner=2)
    assert stored(store, sign_record(MALLORY, "k1", None, 1, NOW + 100))
    assert stored(store, sign_record(MALLORY, "k2", None, 1, NOW + 100))
    with pytest.raises(DHTValidationError, match="exceeded"):
        stored(store, sign_record(MALLORY, "k3", None, 1, NOW + 100))
    assert stored(store, sign_record(MALLORY, "k1", None, 2, NOW + 200))  # replacing its own is fine
    assert stored(store, sign_record(ALICE, "k3", None, 1, NOW + 100))


def test_sign_record_rejects_bad_arguments() -> None:
    with pytest.raises(DHTValidationError):
        sign_record(ALICE, "", None, 1, NOW)
    with pytest.raises(DHTValidationError, match="serialisable"):
        sign_record(ALICE, "k", None, {1, 2}, NOW)
    with pytest.raises(DHTValidationError):
        sign_record(ALICE, "k", None, 1, float("inf"))
