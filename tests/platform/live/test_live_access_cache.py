"""live.access_cache: verdicts kept a few seconds, shared by concurrent askers, bounded, forgettable."""

from __future__ import annotations

import asyncio

import pytest

from live.access_cache import AccessCache, Verdict

ALLOWED = Verdict("allowed", 7)
FORBIDDEN = Verdict("forbidden", 7)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_verdict_is_kept_for_its_ttl_then_asked_again() -> None:
    clock = Clock()
    cache = AccessCache(ttl=5.0, clock=clock)
    cache.put(("p", None), FORBIDDEN)
    clock.now += 4.9
    assert cache.get(("p", None)) == FORBIDDEN
    clock.now += 0.2
    assert cache.get(("p", None)) is None


def test_signed_in_refusals_are_not_kept_but_admissions_are() -> None:
    cache = AccessCache()
    cache.put(("p", 42), FORBIDDEN)  # an approval a moment later must let them in at once
    assert cache.get(("p", 42)) is None
    cache.put(("p", 42), ALLOWED)
    assert cache.get(("p", 42)) == ALLOWED
    cache.put(("p", None), Verdict("not_found"))
    assert cache.get(("p", None)) == Verdict("not_found")


def test_the_cache_is_bounded_expired_entries_first_then_the_oldest() -> None:
    clock = Clock()
    cache = AccessCache(ttl=5.0, max_entries=3, clock=clock)
    cache.put(("old", None), ALLOWED)
    clock.now += 10  # "old" has expired
    for slug in ("a", "b", "c", "d"):
        cache.put((slug, None), ALLOWED)
    assert cache.get(("old", None)) is None and cache.get(("a", None)) is None
    assert [cache.get((s, None)) for s in ("b", "c", "d")] == [ALLOWED] * 3
    for i in range(1000):  # a flood of unknown slugs never grows it past its bound
        cache.put((f"probe-{i}", None), Verdict("not_found"))
    assert len(cache._entries) == 3


def test_forgetting_a_project_drops_its_entries_by_slug_and_by_id() -> None:
    cache = AccessCache()
    cache.put(("p", None), ALLOWED)
    cache.put(("p", 1), ALLOWED)
    cache.put(("renamed", 2), ALLOWED)  # same project (id 7) under a slug it had before
    cache.put(("other", None), Verdict("allowed", 8))
    cache.forget_project(slug="p", project_id=7)
    assert cache.get(("p", None)) is None and cache.get(("p", 1)) is None
    assert cache.get(("renamed", 2)) is None
    assert cache.get(("other", None)) == Verdict("allowed", 8)


async def test_concurrent_askers_share_one_check_and_one_giving_up_does_not_cancel_it() -> None:
    cache = AccessCache()
    release = asyncio.Event()
    calls = 0

    async def check() -> Verdict:
        nonlocal calls
        calls += 1
        await release.wait()
        return ALLOWED

    impatient = asyncio.create_task(asyncio.wait_for(cache.verdict(("p", None), check), 0.05))
    waiting = [asyncio.create_task(cache.verdict(("p", None), check)) for _ in range(50)]
    with pytest.raises(TimeoutError):
        await impatient
    release.set()
    assert await asyncio.gather(*waiting) == [ALLOWED] * 50
    assert calls == 1 and cache.checks == 1
    assert await cache.verdict(("p", None), check) == ALLOWED and calls == 1  # now from the cache


async def test_a_failed_check_reaches_every_asker_and_is_not_cached() -> None:
    cache = AccessCache()

    async def broken() -> Verdict:
        await asyncio.sleep(0.01)
        raise ConnectionError("database away")

    results = await asyncio.gather(
        *(cache.verdict(("p", None), broken) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    assert cache.get(("p", None)) is None
