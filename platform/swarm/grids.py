"""A project's expert grids taken together: a classifier's one grid, or a language model's one per block.

Coverage, holes and "cells with two or more replicas" count every grid, so a language model whose block 1
has no server shows holes even when block 0 is whole. The grids share one shape; their cells are numbered
block after block (block 0's cells in row-major order, then block 1's, ...), which is the order coverage
is stored, holes are paged and the heatmaps are drawn in. Pure: no Django, sockets or clocks; the portal
builds `Grids` from what the config endpoint hands agents (swarm.selectors.project_grids).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from swarm.reconcile import cell_index, cell_uid, grid_cells, grid_uids


@dataclass(frozen=True, slots=True)
class Grids:
    """Grid names (`ffn`, or `lm.b0`, `lm.b1`, ...) in block order, all of shape `dims`."""

    prefixes: tuple[str, ...]
    dims: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.prefixes or not self.dims:
            raise ValueError("a project has at least one grid of at least one dimension")
        if len(set(self.prefixes)) != len(self.prefixes):
            raise ValueError("grid names must differ")

    @property
    def per_grid(self) -> int:
        """Cells of one grid."""
        return grid_cells(self.dims)

    @property
    def total(self) -> int:
        """Cells of every grid together."""
        return self.per_grid * len(self.prefixes)

    def locate(self, uid: str) -> int | None:
        """The cell's number across the grids, or None for a uid that is none of their cells."""
        prefix = uid.rsplit(".", len(self.dims))[0]
        try:
            block = self.prefixes.index(prefix)
        except ValueError:
            return None
        index = cell_index(prefix, self.dims, uid)
        return None if index is None else block * self.per_grid + index

    def uid_at(self, number: int) -> str:
        """The uid of cell `number` (0 .. total - 1) across the grids."""
        block, index = divmod(number, self.per_grid)
        return cell_uid(self.prefixes[block], self.dims, index)

    def coverage(self, announced: Mapping[str, Iterable[str]]) -> dict[str, int]:
        """Live replicas of each *covered* cell of any grid, in cell order; holes are not listed.

        Costs what was announced, never the grids' size. Uids of no grid are ignored."""
        replicas: dict[int, int] = {}
        for uids in announced.values():
            for uid in uids:
                number = self.locate(uid)
                if number is not None:
                    replicas[number] = replicas.get(number, 0) + 1
        return {self.uid_at(number): replicas[number] for number in sorted(replicas)}

    def holes(self, covered: Iterable[str], *, offset: int, limit: int) -> list[str]:
        """Uids of holes number `offset` .. `offset + limit - 1` (cell order), without walking the grids."""
        taken = sorted({n for n in (self.locate(uid) for uid in covered) if n is not None})
        # Hole number `offset` sits `offset` cells in, plus one for each covered cell at or before it.
        number, position = max(0, offset), 0
        while position < len(taken) and taken[position] <= number:
            position, number = position + 1, number + 1
        holes: list[str] = []
        while len(holes) < limit and number < self.total:
            if position < len(taken) and taken[position] == number:
                position += 1
            else:
                holes.append(self.uid_at(number))
            number += 1
        return holes

    def covered_count(self, cells: Iterable[str]) -> int:
        """How many distinct cells of the grids `cells` names (others are ignored)."""
        return len({n for n in (self.locate(uid) for uid in cells) if n is not None})

    def blocks_with_holes(self, covered: Iterable[str]) -> list[int]:
        """The blocks (grid positions) with at least one hole."""
        counts = [0] * len(self.prefixes)
        for number in {n for n in (self.locate(uid) for uid in covered) if n is not None}:
            counts[number // self.per_grid] += 1
        return [block for block, count in enumerate(counts) if count < self.per_grid]

    def where(self, covered: Iterable[str]) -> str:
        """Where the holes are, for a message: ` (in blocks 1, 3)`; empty for a single grid."""
        if len(self.prefixes) == 1:
            return ""
        blocks = self.blocks_with_holes(covered)
        shown = ", ".join(map(str, blocks[:8])) + (", ..." if len(blocks) > 8 else "")
        return f" (in block{'s' if len(blocks) > 1 else ''} {shown})" if blocks else ""

    def by_grid(self, replicas: Mapping[str, int]) -> list[tuple[str, list[tuple[str, int]]]]:
        """Every cell of every grid with its replicas (0 for a hole), grid by grid. Small grids only: it
        walks every cell (the server-rendered page draws at most a few thousand)."""
        return [
            (prefix, [(uid, replicas.get(uid, 0)) for uid in grid_uids(prefix, self.dims)])
            for prefix in self.prefixes
        ]
