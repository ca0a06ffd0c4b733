"""How a local swarm splits an expert grid between its servers (pure; no processes here)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from node_agent.moe.uids import make_uid

__all__ = ["split_grid"]


def split_grid(uid_prefix: str, grid: Sequence[int], servers: int, replicas: int = 1) -> list[str]:
    """Expert patterns for each server (`node-agent serve --experts`), covering every cell `replicas` times.

    When the servers divide the first dimension evenly each gets a block of rows (`ffn.[0:2].[0:4]`);
    otherwise cells are dealt out in grid order as explicit uids. With `replicas > 1`, server i also hosts
    the cells of servers i+1 .. i+replicas-1, so killing one server leaves every cell alive.
    """
    if servers <= 0 or not grid or any(size <= 0 for size in grid):
        raise ValueError("need at least one server and a non-empty grid")
    if not 1 <= replicas <= servers:
        raise ValueError(f"replicas must be in [1, {servers}], got {replicas}")
    name = uid_prefix.rstrip(".")
    tail = "".join(f".[0:{size}]" for size in grid[1:])
    if grid[0] % servers == 0:
        rows = grid[0] // servers
        own = [f"{name}.[{i * rows}:{(i + 1) * rows}]{tail}" for i in range(servers)]
    else:
        cells = list(itertools.product(*(range(size) for size in grid)))
        if len(cells) < servers:
            raise ValueError(f"{len(cells)} grid cells cannot be split between {servers} servers")
        chunks = [cells[i::servers] for i in range(servers)]
        own = [" ".join(make_uid(name, cell) for cell in chunk) for chunk in chunks]
    return [" ".join(own[(i + r) % servers] for r in range(replicas)) for i in range(servers)]
