"""The kept-forward cache's bookkeeping (pure: no torch, no network; `now` is passed in)."""

from __future__ import annotations

import pytest

from node_agent.moe.server.forward_cache import ForwardCache, ForwardCacheMiss

A, B = b"a" * 20, b"b" * 20


def put(cache: ForwardCache, key: str, *, owner: bytes = A, nbytes: int = 10, gen: int = 1, now: float = 0.0):
    return cache.put(key, owner, f"graph-{key}", nbytes=nbytes, generation=gen, generation_bytes=100, now=now)


def test_take_returns_once_and_only_to_its_owner():
    cache = ForwardCache(max_entries=8, max_bytes=10_000, ttl=30)
    assert put(cache, "k")
    with pytest.raises(ForwardCacheMiss) as refused:
        cache.take("k", B, now=1.0)
    assert refused.value.reason == "foreign"
    assert "k" in cache, "a foreign attempt must not consume the owner's entry"
    assert cache.take("k", A, now=1.0) == "graph-k"
    with pytest.raises(ForwardCacheMiss) as missed:
        cache.take("k", A, now=1.0)
    assert missed.value.reason == "unknown"
    assert cache.stats() == {
        "entries": 0,
        "bytes": 0,
        "hits": 1,
        "misses": 1,
        "refused": 1,
        "evicted": 0,
        "expired": 0,
        "rejected": 0,
    }


def test_entries_expire_after_the_ttl():
    cache = ForwardCache(max_entries=8, max_bytes=10_000, ttl=5)
    put(cache, "old", now=0.0)
    put(cache, "new", now=3.0)
    assert cache.expire(now=5.0) == 1
    assert "old" not in cache and "new" in cache
    with pytest.raises(ForwardCacheMiss):
        cache.take("new", A, now=8.0)
    assert len(cache) == 0 and cache.bytes == 0 and cache.expired == 2


def test_count_bound_evicts_the_oldest():
    cache = ForwardCache(max_entries=2, max_bytes=10_000, ttl=30)
    for key in "xyz":
        assert put(cache, key)
    assert len(cache) == 2 and "x" not in cache and cache.evicted == 1


def test_byte_bound_counts_a_shared_snapshot_once():
    cache = ForwardCache(max_entries=100, max_bytes=150, ttl=30)
    # generation 1: snapshot 100 bytes + 10 per graph
    assert put(cache, "a", gen=1) and put(cache, "b", gen=1)
    assert cache.bytes == 120
    # generation 2 needs another 100 bytes for its snapshot: the oldest entries make room
    assert put(cache, "c", gen=2)
    assert cache.bytes <= 150
    assert "a" not in cache and "b" not in cache and "c" in cache
    assert cache.bytes == 110, "generation 1's snapshot is freed with its last graph"
    cache.take("c", A, now=0.0)
    assert cache.bytes == 0


def test_what_can_never_fit_is_refused_and_disabled_cache_keeps_nothing():
    cache = ForwardCache(max_entries=4, max_bytes=150, ttl=30)
    assert not put(cache, "huge", nbytes=51)  # 51 + 100 snapshot > 150
    assert len(cache) == 0 and cache.rejected == 1
    disabled = ForwardCache(max_entries=0)
    assert not disabled.enabled
    assert not put(disabled, "k")
    with pytest.raises(ValueError):
        ForwardCache(max_entries=-1)


def test_many_owners_and_generations_stay_within_both_bounds():
    cache = ForwardCache(max_entries=7, max_bytes=1_000, ttl=30)
    for i in range(200):
        put(cache, f"k{i}", owner=A if i % 2 else B, nbytes=37 + i % 50, gen=i // 3, now=i * 0.01)
        assert len(cache) <= 7 and cache.bytes <= 1_000
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0
