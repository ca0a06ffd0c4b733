"""Exact top-k search over a sparse grid: compared with brute force, plus batching and caching behaviour."""

from __future__ import annotations

import itertools
import random

import pytest

from node_agent.moe.beam_search import ExpertSearcher, GridSearch, PrefixCache
from node_agent.moe.uids import make_prefix, make_uid


def children_table(name: str, live: set[tuple[int, ...]]) -> dict[str, dict[int, tuple[object, ...]]]:
    """What the DHT would answer for every prefix, given the live cells (payload: the uid as a string)."""
    table: dict[str, dict[int, tuple[object, ...]]] = {}
    for cell in live:
        for depth in range(len(cell)):
            prefix = make_prefix(name, cell[:depth])
            table.setdefault(prefix, {})[cell[depth]] = (f"replica-of-{make_uid(name, cell)}",)
    return table


def brute_force(sample_scores, live, k):
    ranked = sorted(live, key=lambda cell: (-sum(sample_scores[d][c] for d, c in enumerate(cell)), cell))
    return [sum(sample_scores[d][c] for d, c in enumerate(cell)) for cell in ranked[:k]]


def run_search(search: GridSearch, table) -> int:
    lookups = 0
    while wanted := search.step():
        lookups += 1
        search.feed({p: table[p] for p in wanted if p in table}, asked=sorted(wanted))
    return lookups


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force_on_sparse_grids(seed):
    rng = random.Random(seed)
    grid = [rng.randint(2, 6) for _ in range(rng.randint(1, 3))]
    cells = list(itertools.product(*map(range, grid)))
    live = {cell for cell in cells if rng.random() < 0.4}
    batch = [[[rng.gauss(0, 1) for _ in range(size)] for size in grid] for _ in range(5)]
    k = rng.randint(1, 5)
    search = GridSearch("ffn", batch, k=k, beam_size=rng.randint(1, 4))
    run_search(search, children_table("ffn", live))
    for sample, found in zip(batch, search.results, strict=True):
        assert [f.score for f in found] == pytest.approx(brute_force(sample, live, k))
        for f in found:
            assert f.coords in live
            assert f.uid == make_uid("ffn", f.coords)
            assert f.replicas == (f"replica-of-{f.uid}",)


def test_good_expert_behind_a_weak_first_coordinate_is_found():
    # ffn.0.* has the best first score but only a terrible child; ffn.1.1 is the true best.
    live = {(0, 0), (1, 1), (2, 2)}
    scores = [[[5.0, 1.0, 0.0], [-10.0, 9.0, 0.0]]]
    search = GridSearch("ffn", scores, k=1, beam_size=1)
    run_search(search, children_table("ffn", live))
    assert [f.uid for f in search.results[0]] == ["ffn.1.1"]


def test_empty_grid_and_accept_filter():
    search = GridSearch("ffn", [[[1.0, 2.0], [1.0, 2.0]]], k=3)
    run_search(search, {})
    assert search.results == [[]]

    live = {(0, 0), (1, 1)}
    search = GridSearch(
        "ffn", [[[1.0, 2.0], [1.0, 2.0]]], k=2, accept=lambda uid, r: () if uid == "ffn.1.1" else r
    )
    run_search(search, children_table("ffn", live))
    assert [f.uid for f in search.results[0]] == ["ffn.0.0"]


def test_out_of_grid_children_are_ignored():
    table = {"ffn.": {0: ("a",), 7: ("b",)}, "ffn.0.": {0: ("c",)}, "ffn.7.": {0: ("d",)}}
    search = GridSearch("ffn", [[[0.0, 1.0], [0.0]]], k=5)
    run_search(search, table)
    assert [f.uid for f in search.results[0]] == ["ffn.0.0"]


def test_one_lookup_round_per_dimension_for_a_whole_batch_on_a_full_grid():
    live = set(itertools.product(range(4), range(4)))
    rng = random.Random(1)
    batch = [[[rng.random() for _ in range(4)] for _ in range(2)] for _ in range(32)]
    search = GridSearch("ffn", batch, k=2, beam_size=2)
    assert run_search(search, children_table("ffn", live)) <= 3


async def test_searcher_batches_and_caches_lookups():
    live = {(0, 1), (1, 0), (3, 3)}
    table = children_table("ffn", live)
    table["ffn."][2] = ("stale",)  # the root still lists 2, but ffn.2. has expired: an empty prefix
    calls: list[list[str]] = []

    async def fetch(prefixes):
        calls.append(list(prefixes))
        return {p: table[p] for p in prefixes if p in table}

    clock = [0.0]
    searcher = ExpertSearcher(fetch, PrefixCache(ttl=10, negative_ttl=2), clock=lambda: clock[0])
    scores = [[[1.0, 0.0, 5.0, 2.0], [0.0, 1.0, 0.0, 2.0]], [[0.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]]]
    found = await searcher.find_best_experts("ffn", scores, k=2, beam_size=4)
    assert [f.uid for f in found[0]] == ["ffn.3.3", "ffn.0.1"]
    assert [f.uid for f in found[1]] == ["ffn.1.0", "ffn.0.1"]
    first_calls = len(calls)
    assert all(len(set(c)) == len(c) for c in calls)

    await searcher.find_best_experts("ffn", scores, k=2, beam_size=4)
    assert len(calls) == first_calls  # all from cache, including the empty prefixes

    clock[0] = 3.0  # negative entries expired, positive ones not
    await searcher.find_best_experts("ffn", scores, k=2, beam_size=4)
    refetched = {p for c in calls[first_calls:] for p in c}
    assert refetched and all(p not in table for p in refetched)


async def test_searcher_stops_after_max_rounds():
    live = set(itertools.product(range(3), range(3), range(3)))
    table = children_table("ffn", live)

    async def fetch(prefixes):
        return {p: table[p] for p in prefixes if p in table}

    searcher = ExpertSearcher(fetch, max_rounds=1)
    found = await searcher.find_best_experts("ffn", [[[0.0] * 3] * 3], k=2)
    assert found == [[]]


def test_bad_arguments():
    with pytest.raises(ValueError):
        GridSearch("ffn", [[[1.0]]], k=0)
    with pytest.raises(ValueError):
        GridSearch("ffn", [[[1.0]], [[1.0], [2.0]]], k=1)


async def test_search_through_a_real_dht_returns_the_true_top_k(bootstrap_node):
    """Four announcing nodes over UDP on 127.0.0.1 share a sparse 4x5 grid; compare with brute force."""
    from node_agent.dht import DHTNode
    from node_agent.moe.announce import announce_experts, register_experts_validator
    from node_agent.moe.api import ExpertHandle
    from node_agent.moe.beam_search import dht_prefix_fetcher

    rng = random.Random(5)
    cells = [cell for cell in itertools.product(range(4), range(5)) if rng.random() < 0.5]
    nodes = []
    try:
        for index in range(4):
            node = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
            register_experts_validator(node)
            nodes.append(node)
            assert all(await announce_experts(node, [make_uid("ffn", c) for c in cells[index::4]], ttl=60))
        owner = {cell: nodes[index % 4] for index, cell in enumerate(cells)}
        reader = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], client_mode=True)
        nodes.append(reader)
        register_experts_validator(reader)
        searcher = ExpertSearcher(dht_prefix_fetcher(reader))
        batch = [[[rng.gauss(0, 1) for _ in range(size)] for size in (4, 5)] for _ in range(6)]
        found = await searcher.find_best_experts("ffn", batch, k=3, beam_size=2)
        for sample, experts in zip(batch, found, strict=True):
            assert [f.score for f in experts] == pytest.approx(brute_force(sample, set(cells), 3))
            for f in experts:
                node = owner[f.coords]
                assert f.replicas == (ExpertHandle(f.uid, node.node_id, node.endpoint),)
        # one batched lookup per round, at most one round per grid dimension plus the refinements
        assert searcher.prefixes_fetched <= 1 + 4
    finally:
        for node in nodes:
            await node.shutdown()
