"""Per-peer failure bookkeeping: bans after repeated failures, growing with each ban, probation after."""

from __future__ import annotations

import pytest

from node_agent.moe.reliability import FailureKind, ReliabilityTracker

PEER = b"\x01" * 32
OTHER = b"\x02" * 32


def test_occasional_failures_do_not_ban():
    tracker = ReliabilityTracker(threshold=3, base_ban=5)
    tracker.record_failure(PEER, FailureKind.TIMEOUT, now=0)
    tracker.record_success(PEER, now=1)
    tracker.record_failure(PEER, FailureKind.TIMEOUT, now=2)
    tracker.record_failure(PEER, FailureKind.UNAVAILABLE, now=3)
    assert not tracker.is_avoided(PEER, now=3)
    assert tracker.stats(PEER).total_failures == 3


def test_repeated_failures_ban_for_a_growing_time():
    tracker = ReliabilityTracker(threshold=3, base_ban=5, max_ban=12)
    assert not tracker.record_failure(PEER, FailureKind.TIMEOUT, now=0)
    assert not tracker.record_failure(PEER, FailureKind.TIMEOUT, now=0)
    assert tracker.record_failure(PEER, FailureKind.TIMEOUT, now=0)
    assert tracker.is_avoided(PEER, now=4.9)
    assert not tracker.is_avoided(OTHER, now=4.9)
    assert not tracker.is_avoided(PEER, now=5.0)
    # on probation: the next failure bans again, twice as long
    assert tracker.record_failure(PEER, FailureKind.TIMEOUT, now=6)
    assert tracker.stats(PEER).avoid_until == pytest.approx(16)
    assert tracker.record_failure(PEER, FailureKind.TIMEOUT, now=17)
    assert tracker.stats(PEER).avoid_until == pytest.approx(17 + 12)  # capped at max_ban
    assert tracker.avoided_peers(now=18) == {PEER}


def test_anomalies_weigh_more_than_timeouts():
    tracker = ReliabilityTracker(threshold=3, base_ban=5)
    tracker.record_failure(PEER, FailureKind.ANOMALY, now=0)
    assert tracker.record_failure(PEER, FailureKind.ANOMALY, now=0)
    summary = tracker.summary(now=1)
    assert summary == {"peers": 1, "avoided": 1, "failures": 2, "anomalies": 2}


def test_success_after_ban_ends_probation():
    tracker = ReliabilityTracker(threshold=2, base_ban=1)
    tracker.record_failure(PEER, FailureKind.PROTOCOL, now=0)
    assert tracker.is_avoided(PEER, now=0.5)
    tracker.record_success(PEER, now=2)
    assert not tracker.record_failure(PEER, FailureKind.TIMEOUT, now=3)
    assert not tracker.is_avoided(PEER, now=3)


def test_failures_during_a_ban_do_not_extend_it():
    tracker = ReliabilityTracker(threshold=1, base_ban=10)
    assert tracker.record_failure(PEER, FailureKind.TIMEOUT, now=0)
    assert not tracker.record_failure(PEER, FailureKind.TIMEOUT, now=1)
    assert tracker.stats(PEER).avoid_until == 10


def test_bad_parameters():
    with pytest.raises(ValueError):
        ReliabilityTracker(threshold=0)
