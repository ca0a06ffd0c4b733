"""Pure parts of averaging: partitioning, leader choice and group decisions, key rotation, screening."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from node_agent.averaging.aggregation import centered_clip, plausible_average, screen, weighted_mean
from node_agent.averaging.matchmaking import (
    Candidate,
    Decision,
    choose_leader,
    leader_decision,
    next_group_bits,
)
from node_agent.averaging.messages import Declaration
from node_agent.averaging.partition import MAX_MESSAGE_BYTES, bytes_per_value, part_bounds, split
from node_agent.tensor_codec import Compression


@given(
    st.lists(st.integers(0, 100_000), min_size=1, max_size=8),
    st.lists(st.floats(0, 1e9), min_size=1, max_size=6),
    st.sampled_from(list(Compression)),
)
def test_split_covers_everything_once_in_message_sized_pieces(sizes, shares, compression):
    parts = split(sizes, shares, [compression] * len(sizes))
    assert len(parts) == len(shares)
    covered = [(p.start, p.stop) for pieces in parts for p in pieces]
    flat = [i for start, stop in covered for i in range(start, stop)] if sum(sizes) < 5000 else None
    assert sum(stop - start for start, stop in covered) == sum(sizes)
    if flat is not None:
        assert flat == list(range(sum(sizes)))
    offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    for pieces in parts:
        for index, piece in enumerate(pieces):
            assert piece.index == index and piece.size > 0
            assert offsets[piece.tensor] <= piece.start < piece.stop <= offsets[piece.tensor + 1]
            assert piece.size * bytes_per_value(compression) <= MAX_MESSAGE_BYTES - 512


def test_parts_follow_throughput():
    assert part_bounds(100, [1.0, 3.0]) == [(0, 25), (25, 100)]
    assert part_bounds(10, [0.0, 0.0]) == [(0, 5), (5, 10)]


def _candidate(node: int, expiration: float, taken: bool = False) -> Candidate:
    return Candidate(bytes([node]) * 20, expiration, Declaration("h:1", 1e6, None, taken))


def test_leader_is_earliest_expiration_then_lowest_id():
    candidates = [
        _candidate(3, 10.0),
        _candidate(2, 10.0),
        _candidate(1, 11.0),
        _candidate(0, 9.0, taken=True),
    ]
    assert choose_leader(candidates, now=5.0).node_id == bytes([2]) * 20
    assert choose_leader(candidates, now=5.0, skip=frozenset({bytes([2]) * 20})).node_id == bytes([3]) * 20
    assert choose_leader(candidates, now=10.5).node_id == bytes([1]) * 20
    assert choose_leader(candidates, now=12.0) is None


def test_leader_decision():
    assert leader_decision(4, 4, 2, now=0.0, deadline=5.0) is Decision.BEGIN
    assert leader_decision(3, 4, 2, now=0.0, deadline=5.0) is Decision.WAIT
    assert leader_decision(3, 4, 2, now=5.0, deadline=5.0) is Decision.BEGIN
    assert leader_decision(1, 4, 2, now=5.0, deadline=5.0) is Decision.FAIL


def test_moshpit_rotation_spreads_a_group_over_keys():
    assert {next_group_bits("01", i, 4) for i in range(4)} == {"00", "01", "10", "11"}
    assert next_group_bits("", 3, 4) == ""
    assert next_group_bits("101", 1, 2) == "011"


def test_screen_refuses_nan_and_outliers_but_not_honest_spread():
    honest = {i: torch.randn(1000) for i in range(3)}
    verdict = screen({**honest, 3: torch.randn(1000) * 1e6, 4: torch.full((1000,), float("nan"))}, 10.0)
    assert verdict.accepted == [0, 1, 2] and set(verdict.refused) == {3, 4}
    # peers that agree almost exactly plus one fresh honest peer: nobody is an outlier
    same = torch.randn(1000)
    verdict = screen({0: same, 1: same.clone(), 2: same + 1e-6, 3: torch.randn(1000)}, 10.0)
    assert verdict.accepted == [0, 1, 2, 3]


def test_means_and_plausibility():
    values = [torch.ones(4), torch.zeros(4)]
    assert torch.equal(weighted_mean(values, [3.0, 1.0]), torch.full((4,), 0.75))
    clipped = centered_clip([torch.zeros(4), torch.zeros(4), torch.full((4,), 1e6)], [1.0, 1.0, 1.0], tau=1.0)
    assert clipped.abs().max() < 10
    assert plausible_average(torch.zeros(4), torch.ones(4), 10.0)
    assert not plausible_average(torch.full((4,), 1e6), torch.ones(4), 10.0)
    assert not plausible_average(torch.full((4,), float("nan")), torch.ones(4), 10.0)
