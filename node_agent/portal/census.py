"""Which grid cells a joining node serves: the ones with the fewest live replicas, read from the DHT.

Volunteers joining together spread over the grid instead of all picking cell 0 (Learning@home section
3.1: every cell should stay covered). The portal is not asked: the DHT is what trainers see.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from node_agent.dht.api import DHTNodeAPI
from node_agent.moe.announce import live_children, prefix_key
from node_agent.moe.uids import make_uid

__all__ = ["MAX_CENSUS_KEYS", "choose_cells", "count_live_replicas", "grid_uids"]

#: Largest number of DHT keys read to count replicas (a 16x16 grid reads 16).
MAX_CENSUS_KEYS = 1024


def grid_uids(prefix: str, grid: Sequence[int]) -> list[str]:
    cells: list[tuple[int, ...]] = [()]
    for size in grid:
        cells = [(*cell, i) for cell in cells for i in range(size)]
    return [make_uid(prefix, cell) for cell in cells]


def choose_cells(
    prefix: str, grid: Sequence[int], live: Mapping[str, int], count: int, rng: random.Random
) -> list[str]:
    """The ``count`` cells with the fewest live replicas; ties broken at random."""
    uids = grid_uids(prefix, grid)
    keyed = sorted(uids, key=lambda uid: (live.get(uid, 0), rng.random()))
    return keyed[: max(0, min(count, len(keyed)))]


async def count_live_replicas(dht: DHTNodeAPI, prefix: str, grid: Sequence[int]) -> dict[str, int]:
    """Live (non-withdrawn) replicas per cell, from the prefix keys one level above the full uids."""
    parents = [uid.rsplit(".", 1)[0] + "." for uid in grid_uids(prefix, [*grid[:-1], 1])]
    parents = list(dict.fromkeys(parents))[:MAX_CENSUS_KEYS]
    found = await dht.get_many([prefix_key(p) for p in parents], latest=True)
    counts: dict[str, int] = {}
    for parent in parents:
        for coordinate, replicas in live_children(found.get(prefix_key(parent), {})).items():
            counts[f"{parent}{coordinate}"] = len({a.node_id for a in replicas})
    return counts
