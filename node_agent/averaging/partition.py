"""How a group splits the flattened tensors among its reducers, and each part into wire-sized pieces (pure).

Every member computes the same split from the same inputs (tensor sizes, the group's throughputs, the byte
widths of the tensors' compressions), so nothing about the split travels on the wire. A reducer's part is
proportional to its throughput (a reducer moves (n - 1) times its part in and out); pieces never cross a
tensor boundary, so each piece is compressed as its tensor asks, and each stays within `MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from node_agent.tensor_codec import Compression

#: A piece's request or reply, headers included, stays within one 64 KiB data-channel message.
MAX_MESSAGE_BYTES = 64 * 1024
#: Room left in a message for the msgpack envelope and tensor header (block scales are counted apart).
ENVELOPE_BYTES = 1024

_BYTES_PER_VALUE = {
    Compression.NONE: 4.0,
    Compression.FLOAT16: 2.0,
    Compression.UNIFORM_8BIT: 1.0,
    # one float32 scale per 4096 values rides along
    Compression.BLOCKWISE_8BIT: 1.0 + 4.0 / 4096,
}


def bytes_per_value(compression: Compression) -> float:
    return _BYTES_PER_VALUE[compression]


def max_piece_values(compression: Compression) -> int:
    """Most values of one piece so that its message fits in `MAX_MESSAGE_BYTES`."""
    return int((MAX_MESSAGE_BYTES - ENVELOPE_BYTES) // bytes_per_value(compression))


@dataclass(frozen=True, slots=True)
class Piece:
    """Values [start, stop) of the flat vector, all inside tensor `tensor`; `index` counts within the part."""

    part: int
    index: int
    tensor: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def part_bounds(total: int, shares: Sequence[float]) -> list[tuple[int, int]]:
    """Cut [0, total) into len(shares) consecutive ranges sized in proportion to `shares` (each >= 0).

    Non-positive or non-finite shares count as zero; if all are zero the cut is even.
    """
    if not shares:
        raise ValueError("need at least one share")
    clean = [s if s > 0 and s < float("inf") else 0.0 for s in shares]
    weight = sum(clean)
    if weight <= 0:
        clean, weight = [1.0] * len(shares), float(len(shares))
    bounds, start, cumulative = [], 0, 0.0
    for share in clean:
        cumulative += share
        stop = round(total * cumulative / weight)
        bounds.append((start, stop))
        start = stop
    bounds[-1] = (bounds[-1][0], total)
    return bounds


def tensor_offsets(sizes: Sequence[int]) -> list[int]:
    offsets, position = [0], 0
    for size in sizes:
        position += size
        offsets.append(position)
    return offsets


def part_pieces(
    part: int, bounds: tuple[int, int], sizes: Sequence[int], compressions: Sequence[Compression]
) -> list[Piece]:
    """The pieces of one part: cut at tensor boundaries and at each tensor's largest message."""
    offsets = tensor_offsets(sizes)
    start, stop = bounds
    pieces: list[Piece] = []
    for tensor, (low, high) in enumerate(itertools.pairwise(offsets)):
        begin, end = max(low, start), min(high, stop)
        step = max_piece_values(compressions[tensor])
        while begin < end:
            cut = min(end, begin + step)
            pieces.append(Piece(part, len(pieces), tensor, begin, cut))
            begin = cut
    return pieces


def split(
    sizes: Sequence[int], shares: Sequence[float], compressions: Sequence[Compression]
) -> list[list[Piece]]:
    """Pieces of every part, one list per reducer, for tensors of `sizes` values."""
    if len(sizes) != len(compressions):
        raise ValueError("need one compression per tensor")
    total = sum(sizes)
    return [
        part_pieces(part, bounds, sizes, compressions)
        for part, bounds in enumerate(part_bounds(total, shares))
    ]


def traffic_bytes(
    sizes: Sequence[int], shares: Sequence[float], compressions: Sequence[Compression]
) -> list[float]:
    """Bytes each member sends plus receives in one round (what its throughput has to carry)."""
    parts = split(sizes, shares, compressions)
    widths = [bytes_per_value(c) for c in compressions]
    part_bytes = [sum(p.size * widths[p.tensor] for p in pieces) for pieces in parts]
    everything = sum(part_bytes)
    n = len(parts)
    # as a sender: its slices of the others' parts out and their averages back; as a reducer: (n - 1)
    # contributions in and (n - 1) averages out
    return [2 * (everything - own) + 2 * (n - 1) * own for own in part_bytes]
