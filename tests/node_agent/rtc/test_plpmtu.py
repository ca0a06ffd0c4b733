"""The record-size search alone (no sockets, no clock): it finds what a simulated path carries, never
validates a size the path drops, survives chance losses and falls back to the base on a black hole."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node_agent.rtc.plpmtu import (
    BASE_PACKET,
    MAX_PACKET,
    Phase,
    RecordSizeSearch,
    SearchLimits,
    user_data_for,
)

LIMITS = SearchLimits()
path_mtus = st.integers(BASE_PACKET, MAX_PACKET)


def run_search(search: RecordSizeSearch, carries: int, loss: float = 0.0, seed: int = 0) -> list[int]:
    """Drive the search against a path carrying packets up to `carries` bytes that also loses a fraction
    `loss` of probes by chance (never `max_probes` in a row of one passing size); the sizes probed."""
    chance = random.Random(seed)
    probes: list[int] = []
    chance_losses = 0
    while (size := search.probe_size()) is not None:
        probes.append(size)
        assert len(probes) < 200, "the search does not end"
        confirming = search.phase is Phase.CONFIRMING
        assert confirming or (size % 4 == 0 and search.plpmtu < size <= search.limits.maximum)
        unlucky = chance.random() < loss and chance_losses < search.limits.max_probes - 1
        if size <= carries and not unlucky:
            chance_losses = 0
            search.acked(size)
        else:
            chance_losses = chance_losses + 1 if size <= carries else 0
            search.lost(size)
        assert search.plpmtu <= max(carries, search.limits.base)  # never validates a size that is dropped
    return probes


def assert_found(search: RecordSizeSearch, carries: int) -> None:
    assert search.phase is Phase.COMPLETE
    assert search.plpmtu <= carries
    assert carries - search.plpmtu < search.limits.precision + 4


@given(path_mtus)
def test_finds_what_the_path_carries_to_within_the_precision(carries):
    search = RecordSizeSearch(LIMITS)
    probes = run_search(search, carries)
    assert_found(search, carries)
    assert probes[0] == MAX_PACKET
    assert len(probes) <= 1 + LIMITS.max_probes * 12


@given(path_mtus, st.floats(0.0, 0.5), st.integers(0, 2**32))
def test_chance_losses_do_not_change_the_result(carries, loss, seed):
    search = RecordSizeSearch(LIMITS)
    run_search(search, carries, loss, seed)
    assert_found(search, carries)


def test_a_loopback_path_ends_after_one_probe_at_a_whole_record():
    search = RecordSizeSearch()
    assert run_search(search, 65536) == [MAX_PACKET]
    assert search.plpmtu == MAX_PACKET and search.probe_size() is None


def test_a_1500_byte_mtu_path_settles_just_under_it():
    carries = 1500 - 20 - 8 - 37  # IPv4, UDP and DTLS (AES-GCM) headers
    search = RecordSizeSearch()
    run_search(search, carries)
    assert_found(search, carries)
    assert user_data_for(search.plpmtu) > user_data_for(BASE_PACKET)


@given(path_mtus, path_mtus)
def test_after_a_path_change_a_confirmation_and_a_new_search_find_the_new_size(before, after):
    search = RecordSizeSearch(LIMITS)
    run_search(search, before)
    found = search.plpmtu
    search.confirm()
    while (size := search.probe_size()) is not None:  # confirming the size found before
        assert size == found
        search.acked(size) if size <= after else search.lost(size)
    if found <= after:
        assert search.plpmtu == found and search.black_holes == 0
    else:
        assert search.plpmtu == LIMITS.base and search.black_holes == 1
    search.search_again()
    run_search(search, after)
    assert_found(search, after)


def test_a_lost_confirmation_counts_one_black_hole_and_drops_to_the_base_at_once():
    search = RecordSizeSearch()
    run_search(search, 9000)
    search.confirm()
    for _ in range(search.limits.max_probes):
        assert search.probe_size() == search.plpmtu != BASE_PACKET
        search.lost(search.plpmtu)
    assert search.plpmtu == BASE_PACKET and search.black_holes == 1
    assert search.probe_size() is None  # until the driver searches again
    search.confirm()  # nothing to confirm at the base
    assert search.probe_size() is None


def test_only_the_outstanding_probe_can_be_answered():
    search = RecordSizeSearch()
    with pytest.raises(ValueError):
        search.acked(1500)
    with pytest.raises(ValueError):
        search.lost(MAX_PACKET - 4)


@pytest.mark.parametrize(
    "limits",
    [
        dict(base=10),
        dict(maximum=MAX_PACKET + 4),
        dict(base=2000, maximum=1500),
        dict(maximum=1502),
        dict(max_probes=0),
        dict(precision=4),
    ],
)
def test_impossible_limits_are_refused(limits):
    with pytest.raises(ValueError):
        SearchLimits(**limits)


def test_user_data_fills_the_packet():
    assert user_data_for(BASE_PACKET) == 1160  # aiortc's own chunk size
    assert 28 + user_data_for(MAX_PACKET) <= MAX_PACKET
