"""Which grid cells a joining node serves: the ones with the fewest live replicas, read from the DHT.

Volunteers joining together spread over the grid instead of all picking cell 0 (Learning@home section
3.1: every cell should stay covered). The portal is not asked: the DHT is what trainers see.

Nodes that start together all read an empty census and pick overlapping cells at random (the demo's three
agents left 6 of 16 cells empty), so a node looks again once its announcements had time to spread:
:func:`cells_to_move` moves its duplicated cells to holes, and only one replica of a cell moves (every owner
but the lowest node id does), so they never all leave it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from node_agent.dht.api import DHTNodeAPI
from node_agent.moe.announce import live_children, prefix_key
from node_agent.moe.uids import make_uid

__all__ = [
    "MAX_CENSUS_KEYS",
    "TARGET_REPLICAS",
    "cells_to_move",
    "choose_cells",
    "count_live_replicas",
    "grid_uids",
    "live_replica_owners",
]

#: Live replicas per cell the agents aim for once every cell has one.
TARGET_REPLICAS = 2
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


def cells_to_move(
    mine: Sequence[str],
    owners: Mapping[str, set[bytes]],
    me: bytes,
    prefix: str,
    grid: Sequence[int],
    rng: random.Random,
) -> dict[str, str]:
    """Which of my cells to give up for which cell: ``{old uid: new uid}`` (empty when nothing should move).

    Holes first: a cell of mine moves to a hole (a cell nobody announces, not one of mine) when another live
    replica of it exists and I am not its lowest owner (that one stays). Then replicas: while some cell has
    fewer than `TARGET_REPLICAS` live replicas, a cell of mine that has more than that moves there if I am
    not among its `TARGET_REPLICAS` lowest owners (so those stay), keeping two replicas per cell wherever
    the swarm has enough servers (a replica's state survives its volunteer; see `moe.server.replicas`).
    Destinations are shared out at random.
    """
    holes = [uid for uid in grid_uids(prefix, grid) if not owners.get(uid) and uid not in mine]
    thin = [
        uid
        for uid in grid_uids(prefix, grid)
        if 0 < len(owners.get(uid, ())) < TARGET_REPLICAS and uid not in mine
    ]
    rng.shuffle(holes)
    rng.shuffle(thin)
    moves: dict[str, str] = {}
    for uid in mine:
        ranked = sorted(owners.get(uid, set()) | {me})
        rank = ranked.index(me)
        if rank == 0:
            continue
        if holes:
            moves[uid] = holes.pop()
        elif thin and rank >= TARGET_REPLICAS:
            moves[uid] = thin.pop()
    return moves


async def live_replica_owners(dht: DHTNodeAPI, prefix: str, grid: Sequence[int]) -> dict[str, set[bytes]]:
    """Node ids announcing each cell live (non-withdrawn), from the prefix keys one level above the uids."""
    parents = [uid.rsplit(".", 1)[0] + "." for uid in grid_uids(prefix, [*grid[:-1], 1])]
    parents = list(dict.fromkeys(parents))[:MAX_CENSUS_KEYS]
    found = await dht.get_many([prefix_key(p) for p in parents], latest=True)
    owners: dict[str, set[bytes]] = {}
    for parent in parents:
        for coordinate, replicas in live_children(found.get(prefix_key(parent), {})).items():
            owners[f"{parent}{coordinate}"] = {a.node_id for a in replicas}
    return owners


async def count_live_replicas(dht: DHTNodeAPI, prefix: str, grid: Sequence[int]) -> dict[str, int]:
    """Live (non-withdrawn) replicas per cell."""
    return {uid: len(nodes) for uid, nodes in (await live_replica_owners(dht, prefix, grid)).items()}
