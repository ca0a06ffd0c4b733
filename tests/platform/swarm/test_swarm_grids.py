"""Coverage across a project's grids (swarm.grids): a language model's blocks counted together. Pure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.grids import Grids
from swarm.reconcile import grid_uids

LM = Grids(prefixes=("lm.b0", "lm.b1", "lm.b2"), dims=(2, 2))


def test_cells_are_numbered_block_after_block() -> None:
    assert (LM.per_grid, LM.total) == (4, 12)
    assert [LM.uid_at(n) for n in (0, 3, 4, 11)] == ["lm.b0.0.0", "lm.b0.1.1", "lm.b1.0.0", "lm.b2.1.1"]
    assert [LM.locate(uid) for uid in ("lm.b0.0.0", "lm.b1.0.1", "lm.b2.1.1")] == [0, 5, 11]


@pytest.mark.parametrize(
    "uid",
    [
        "lm.b3.0.0",  # a block the model does not have
        "lm.b1.2.0",  # off the grid
        "lm.b1.0",  # too few coordinates
        "lm.b1.0.0.0",  # too many
        "lm.b1.01.0",  # not the canonical spelling
        "lm.b1.-1.0",
        "lm.b10.0.0",  # block 10, not block 1's cell 0.0
        "lm.b1",
        "",
        "ffn.0.0",
        "lm.b1.0.x",
    ],
)
def test_a_uid_of_no_grid_is_no_cell(uid: str) -> None:
    assert LM.locate(uid) is None


def test_coverage_counts_every_block_in_cell_order() -> None:
    announced = {
        "a": {"lm.b1.0.1", "lm.b0.1.1", "lm.b9.0.0", "junk"},
        "b": {"lm.b1.0.1", "lm.b2.0.0"},
    }
    assert LM.coverage(announced) == {"lm.b0.1.1": 1, "lm.b1.0.1": 2, "lm.b2.0.0": 1}


def test_a_node_serving_only_block_1_covers_block_1() -> None:
    covered = LM.coverage({"n": {f"lm.b1.{r}.{c}" for r in range(2) for c in range(2)}})
    assert list(covered) == grid_uids("lm.b1", (2, 2))
    assert LM.blocks_with_holes(covered) == [0, 2]
    assert LM.where(covered) == " (in blocks 0, 2)"
    assert LM.holes(covered, offset=0, limit=100) == grid_uids("lm.b0", (2, 2)) + grid_uids("lm.b2", (2, 2))


def test_holes_are_paged_across_blocks() -> None:
    covered = {"lm.b0.0.0": 1, "lm.b0.1.1": 1, "lm.b1.0.0": 3}
    assert LM.holes(covered, offset=0, limit=3) == ["lm.b0.0.1", "lm.b0.1.0", "lm.b1.0.1"]
    assert LM.holes(covered, offset=3, limit=3) == ["lm.b1.1.0", "lm.b1.1.1", "lm.b2.0.0"]
    assert LM.holes(covered, offset=8, limit=3) == ["lm.b2.1.1"]
    assert LM.holes(covered, offset=9, limit=3) == []
    assert LM.covered_count([*covered, "lm.b0.0.0", "elsewhere.0.0"]) == 3


def test_a_classifier_has_one_grid_and_says_nothing_of_blocks() -> None:
    grids = Grids(prefixes=("ffn",), dims=(4, 4))
    assert grids.total == 16 and grids.coverage({"a": {"ffn.3.3"}}) == {"ffn.3.3": 1}
    assert grids.where({}) == "" and grids.blocks_with_holes({}) == [0]
    assert [prefix for prefix, _ in grids.by_grid({})] == ["ffn"]


def test_every_cell_of_every_block_is_drawn_with_its_replicas() -> None:
    blocks = LM.by_grid({"lm.b1.1.0": 2})
    assert [prefix for prefix, _ in blocks] == ["lm.b0", "lm.b1", "lm.b2"]
    assert blocks[1][1] == [("lm.b1.0.0", 0), ("lm.b1.0.1", 0), ("lm.b1.1.0", 2), ("lm.b1.1.1", 0)]


def test_grids_need_distinct_names_and_a_shape() -> None:
    with pytest.raises(ValueError, match="differ"):
        Grids(prefixes=("lm.b0", "lm.b0"), dims=(2,))
    with pytest.raises(ValueError):
        Grids(prefixes=(), dims=(2,))


def test_a_large_language_model_costs_what_is_covered() -> None:
    """64 blocks of a 1024x1024 grid (67 million cells): coverage and holes never walk the grids (the
    last two of the total - 2 holes are the last block's last cells but one)."""
    grids = Grids(prefixes=tuple(f"lm.b{i}" for i in range(64)), dims=(1024, 1024))
    covered = grids.coverage({"a": {"lm.b63.1023.1023", "lm.b0.0.0"}})
    assert covered == {"lm.b0.0.0": 1, "lm.b63.1023.1023": 1}
    assert grids.holes(covered, offset=grids.total - 4, limit=5) == ["lm.b63.1023.1021", "lm.b63.1023.1022"]
    assert grids.blocks_with_holes(covered) == list(range(64))
    assert grids.where(covered) == " (in blocks 0, 1, 2, 3, 4, 5, 6, 7, ...)"


@settings(max_examples=150, deadline=None)
@given(
    blocks=st.integers(1, 4),
    dims=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    uids=st.lists(st.text(alphabet="lm.b0123x", max_size=12), max_size=30),
    picks=st.lists(st.integers(0, 200), max_size=30),
    offset=st.integers(0, 120),
    limit=st.integers(0, 120),
)
def test_holes_and_coverage_partition_every_grid(
    blocks: int, dims: list[int], uids: list[str], picks: list[int], offset: int, limit: int
) -> None:
    """Whatever is announced (cells or junk), covered cells and holes together are every cell once."""
    grids = Grids(prefixes=tuple(f"lm.b{i}" for i in range(blocks)), dims=tuple(dims))
    every = [uid for prefix in grids.prefixes for uid in grid_uids(prefix, dims)]
    announced = {"a": set(uids) | {every[p % len(every)] for p in picks}}
    covered = grids.coverage(announced)
    holes = grids.holes(covered, offset=0, limit=grids.total)
    assert sorted(covered, key=every.index) == list(covered)  # cell order
    assert sorted([*covered, *holes], key=every.index) == every and not set(covered) & set(holes)
    assert grids.holes(covered, offset=offset, limit=limit) == holes[offset : offset + limit]
    assert [grids.locate(uid) for uid in every] == list(range(grids.total))
