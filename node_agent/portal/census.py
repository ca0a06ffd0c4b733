"""Which grid cells a joining node serves: the ones with the fewest live replicas, read from the DHT.

Volunteers joining together spread over the grid instead of all picking cell 0 (Learning@home section
3.1: every cell should stay covered). The portal is not asked: the DHT is what trainers see.

A project may have several grids (a language model has one per block, `lm.b0`, `lm.b1`, ...): the census
counts cells of all of them, and a node's cells are shared out over the grids (:func:`choose_cells`), so
that every block of the model has experts as soon as one node serves (a trainer's step needs them all).

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
from node_agent.moe.uids import make_uid, parse_uid

__all__ = [
    "DEFAULT_EXPERTS",
    "DEFAULT_EXPERT_MEMORY",
    "MAX_CENSUS_KEYS",
    "TARGET_REPLICAS",
    "TRAINING_BYTES_PER_PARAMETER",
    "Grid",
    "cells_to_move",
    "choose_cells",
    "count_live_replicas",
    "default_expert_count",
    "grid_uids",
    "grids_uids",
    "live_replica_owners",
]

#: Live replicas per cell the agents aim for once every cell has one.
TARGET_REPLICAS = 2
#: Largest number of DHT keys read to count replicas (a 16x16 grid reads 16).
MAX_CENSUS_KEYS = 1024
#: Experts a node serves unless told otherwise (at least one per grid, see `default_expert_count`).
DEFAULT_EXPERTS = 4
#: Memory a node's experts may take while training unless `--experts` says otherwise: a laptop's share.
DEFAULT_EXPERT_MEMORY = 2 * 1024**3
#: Bytes per expert parameter while training: float32 weight, gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16

#: A grid: its name (`ffn`, `lm.b3`) and its size per dimension.
Grid = tuple[str, Sequence[int]]


def default_expert_count(grids: Sequence[Grid], parameters_per_expert: int = 0) -> int:
    """`DEFAULT_EXPERTS`, or one per grid when there are more grids (a lone volunteer then makes every
    block of a language model answer, so a new project trains as soon as one node joins), but no more than
    fit in `DEFAULT_EXPERT_MEMORY` while training (at least one): wide experts of many blocks are spread
    over several volunteers instead (the census gives each the blocks with the fewest replicas)."""
    wanted = max(DEFAULT_EXPERTS, len(grids))
    if parameters_per_expert <= 0:
        return wanted
    affordable = DEFAULT_EXPERT_MEMORY // (parameters_per_expert * TRAINING_BYTES_PER_PARAMETER)
    return max(1, min(wanted, affordable))


def grid_uids(prefix: str, grid: Sequence[int]) -> list[str]:
    cells: list[tuple[int, ...]] = [()]
    for size in grid:
        cells = [(*cell, i) for cell in cells for i in range(size)]
    return [make_uid(prefix, cell) for cell in cells]


def grids_uids(grids: Sequence[Grid]) -> list[str]:
    """Every cell of every grid, grid by grid."""
    return [uid for prefix, grid in grids for uid in grid_uids(prefix, grid)]


def choose_cells(grids: Sequence[Grid], live: Mapping[str, int], count: int, rng: random.Random) -> list[str]:
    """The ``count`` cells with the fewest live replicas; among equally covered cells, those of the grids
    this node has picked fewest cells of so far (spread over the blocks), then at random."""
    draws = {uid: rng.random() for uid in grids_uids(grids)}
    queues = [
        sorted(grid_uids(prefix, grid), key=lambda uid: (live.get(uid, 0), draws[uid]))
        for prefix, grid in grids
    ]
    picked = [0] * len(queues)
    chosen: list[str] = []
    while len(chosen) < count:
        open_grids = [i for i, queue in enumerate(queues) if picked[i] < len(queue)]
        if not open_grids:
            break
        best = min(
            open_grids,
            key=lambda i: (live.get(queues[i][picked[i]], 0), picked[i], draws[queues[i][picked[i]]]),
        )
        chosen.append(queues[best][picked[best]])
        picked[best] += 1
    return chosen


def cells_to_move(
    mine: Sequence[str],
    owners: Mapping[str, set[bytes]],
    me: bytes,
    grids: Sequence[Grid],
    rng: random.Random,
) -> dict[str, str]:
    """Which of my cells to give up for which cell: ``{old uid: new uid}`` (empty when nothing should move).

    Holes first: a cell of mine moves to a hole (a cell nobody announces, not one of mine) when another live
    replica of it exists and I am not its lowest owner (that one stays). Then replicas: while some cell has
    fewer than `TARGET_REPLICAS` live replicas, a cell of mine that has more than that moves there if I am
    not among its `TARGET_REPLICAS` lowest owners (so those stay), keeping two replicas per cell wherever
    the swarm has enough servers (a replica's state survives its volunteer; see `moe.server.replicas`).
    A cell moves within its own grid when that grid has a destination (my experts stay spread over the
    blocks), else to another grid's. Destinations are shared out at random.
    """
    every = grids_uids(grids)
    holes = [uid for uid in every if not owners.get(uid) and uid not in mine]
    thin = [uid for uid in every if 0 < len(owners.get(uid, ())) < TARGET_REPLICAS and uid not in mine]
    rng.shuffle(holes)
    rng.shuffle(thin)
    moves: dict[str, str] = {}
    for uid in mine:
        ranked = sorted(owners.get(uid, set()) | {me})
        rank = ranked.index(me)
        if rank == 0:
            continue
        if holes:
            moves[uid] = _take(holes, parse_uid(uid)[0])
        elif thin and rank >= TARGET_REPLICAS:
            moves[uid] = _take(thin, parse_uid(uid)[0])
    return moves


def _take(destinations: list[str], grid: str) -> str:
    """Remove and return the last destination in `grid`, or the last one of any grid."""
    for index in range(len(destinations) - 1, -1, -1):
        if parse_uid(destinations[index])[0] == grid:
            return destinations.pop(index)
    return destinations.pop()


async def live_replica_owners(dht: DHTNodeAPI, grids: Sequence[Grid]) -> dict[str, set[bytes]]:
    """Node ids announcing each cell live (non-withdrawn), from the prefix keys one level above the uids."""
    parents = [
        uid.rsplit(".", 1)[0] + "." for prefix, grid in grids for uid in grid_uids(prefix, [*grid[:-1], 1])
    ]
    parents = list(dict.fromkeys(parents))[:MAX_CENSUS_KEYS]
    found = await dht.get_many([prefix_key(p) for p in parents], latest=True)
    owners: dict[str, set[bytes]] = {}
    for parent in parents:
        for coordinate, replicas in live_children(found.get(prefix_key(parent), {})).items():
            owners[f"{parent}{coordinate}"] = {a.node_id for a in replicas}
    return owners


async def count_live_replicas(dht: DHTNodeAPI, grids: Sequence[Grid]) -> dict[str, int]:
    """Live (non-withdrawn) replicas per cell."""
    return {uid: len(nodes) for uid, nodes in (await live_replica_owners(dht, grids)).items()}
