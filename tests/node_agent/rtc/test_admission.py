"""Offer admission (pure): rates, counts and tiers decide who gets a peer connection."""

from __future__ import annotations

from node_agent.rtc.admission import Admission, AdmissionLimits, Slot, Tier, TokenBucket

UNLIMITED_RATES = {
    "key_offer_rate": 1e9,
    "key_offer_burst": 1e9,
    "address_offer_rate": 1e9,
    "address_offer_burst": 1e9,
    "unknown_offer_rate": 1e9,
    "unknown_offer_burst": 1e9,
}


def _key(n: int) -> bytes:
    return n.to_bytes(20, "big")


def _admit_all(admission: Admission, slots: list[Slot], offers, now: float = 0.0) -> list[str]:
    """Offer each (key, host, tier); admitted ones become slots, evicted ones leave. Returns the reasons."""
    reasons = []
    for key, host, tier in offers:
        decision = admission.decide(key, host, tier, slots, now)
        reasons.append(decision.reason)
        if decision.admitted:
            for handle in decision.evict:
                slots[:] = [s for s in slots if s.handle != handle]
            slots.append(Slot(key, host, tier, True, now, (key, len(slots), now)))
    return reasons


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.take(100.0) and bucket.tokens == 2.0  # never above the burst


def test_unknown_flood_is_rate_limited_per_address_and_in_all():
    limits = AdmissionLimits(
        address_offer_rate=1.0, address_offer_burst=5, unknown_offer_rate=1, unknown_offer_burst=8
    )
    admission = Admission(limits, now=0.0)
    slots: list[Slot] = []
    reasons = _admit_all(admission, slots, [(_key(i), "10.0.0.1", Tier.UNKNOWN) for i in range(10)])
    assert reasons.count("") == 5 and "offer rate of unknown keys from this address" in reasons
    reasons = _admit_all(admission, slots, [(_key(100 + i), f"10.0.1.{i}", Tier.UNKNOWN) for i in range(10)])
    assert reasons.count("") == 3 and reasons[-1] == "offer rate of unknown keys"
    # a credentialed or known key is not held by the unknown keys' buckets
    assert _admit_all(admission, slots, [(_key(500), "10.0.0.1", Tier.CREDENTIALED)]) == [""]
    admission.remember(_key(501))
    assert admission.is_known(_key(501))
    assert _admit_all(admission, slots, [(_key(501), "10.0.0.1", Tier.KNOWN)]) == [""]


def test_one_key_is_rate_limited_and_only_replaces_itself():
    limits = AdmissionLimits(key_offer_rate=0.0, key_offer_burst=3, max_per_key=2)
    admission = Admission(limits, now=0.0)
    slots: list[Slot] = []
    reasons = _admit_all(admission, slots, [(_key(1), "10.0.0.1", Tier.UNKNOWN)] * 4)
    assert reasons == ["", "", "", "offer rate of this key"]
    assert len(slots) == 2 and all(s.key == _key(1) for s in slots)


def test_counts_filled_by_unknown_keys_yield_to_known_and_credentialed_peers():
    limits = AdmissionLimits(max_connections=6, max_unknown=4, max_per_address=5, **UNLIMITED_RATES)
    admission = Admission(limits, now=0.0)
    slots: list[Slot] = []
    flood = [(_key(i), "10.0.0.9", Tier.UNKNOWN) for i in range(10)]
    reasons = _admit_all(admission, slots, flood)
    assert reasons.count("") == 4 and reasons[-1] == "too many unknown connections (4)"
    assert _admit_all(admission, slots, [(_key(50), "10.0.0.9", Tier.KNOWN)]) == [""]
    # per address (5, uncredentialed): the known key took the place of an unknown one
    assert len(slots) == 5 and sum(s.tier is Tier.UNKNOWN for s in slots) == 4
    assert _admit_all(admission, slots, [(_key(51), "10.0.0.9", Tier.KNOWN)]) == [""]
    assert sum(s.tier is Tier.UNKNOWN for s in slots) == 3
    for n in range(52, 60):  # credentialed peers displace everything below them, never each other
        _admit_all(admission, slots, [(_key(n), "10.0.0.7", Tier.CREDENTIALED)])
    assert len(slots) == 6 and all(s.tier is Tier.CREDENTIALED for s in slots)
    assert _admit_all(admission, slots, [(_key(99), "10.0.0.7", Tier.CREDENTIALED)]) == [
        "too many connections (6)"
    ]


def test_busy_connections_are_displaced_last():
    limits = AdmissionLimits(max_connections=2, **UNLIMITED_RATES)
    admission = Admission(limits, now=0.0)
    busy = Slot(_key(1), "10.0.0.1", Tier.UNKNOWN, False, 0.0, "busy")
    idle = Slot(_key(2), "10.0.0.2", Tier.UNKNOWN, True, 5.0, "idle")
    decision = admission.decide(_key(3), "10.0.0.3", Tier.KNOWN, [busy, idle], now=6.0)
    assert decision.admitted and decision.evict == ("idle",)


def test_known_memory_is_bounded():
    admission = Admission(AdmissionLimits(memory=3), now=0.0)
    for n in range(5):
        admission.remember(_key(n))
    assert [admission.is_known(_key(n)) for n in range(5)] == [False, False, True, True, True]
