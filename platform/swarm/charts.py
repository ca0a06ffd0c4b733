"""Tiny server-side SVG charts (polyline points), so pages are correct on load without JavaScript."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def polyline(values: Sequence[float], *, width: float = 300, height: float = 60, pad: float = 3) -> str:
    """`points` for an SVG polyline scaling `values` into the box; '' for fewer than two finite values."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return ""
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    step = (width - 2 * pad) / (len(finite) - 1)
    points = (
        f"{pad + i * step:.1f},{height - pad - (v - low) / span * (height - 2 * pad):.1f}"
        for i, v in enumerate(finite)
    )
    return " ".join(points)


def split_runs(points: Iterable[tuple[str, int, T]]) -> list[list[T]]:
    """Points `(series key, step, item)` in time order, grouped into runs: one list per key (a trainer's
    node and run id), and a new list wherever a key's step falls (a restart of an agent that sends no run
    id), so that no chart draws a line across a restart."""
    runs: list[list[T]] = []
    current: dict[str, tuple[int, list[T]]] = {}
    for key, step, item in points:
        last = current.get(key)
        if last is None or step < last[0]:
            last = (step, [])
            runs.append(last[1])
        last[1].append(item)
        current[key] = (step, last[1])
    return runs


def time_polylines(
    series: Sequence[Sequence[tuple[float, float]]], *, width: float = 300, height: float = 60, pad: float = 3
) -> list[str]:
    """`points` of one SVG polyline per series of `(time, value)`, on shared time and value scales; series
    with fewer than two finite values are left out."""
    lines = labelled_polylines([("", s) for s in series], width=width, height=height, pad=pad)
    return [points for _, points in lines]


def labelled_polylines(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    width: float = 300,
    height: float = 60,
    pad: float = 3,
) -> list[tuple[str, str]]:
    """`time_polylines` for `(label, series)` pairs, each drawn line with its label (a CSS class, say)."""
    finite = [(label, [(t, v) for t, v in s if math.isfinite(t) and math.isfinite(v)]) for label, s in series]
    labelled = [(label, s) for label, s in finite if len(s) >= 2]
    drawn = [s for _, s in labelled]
    if not drawn:
        return []
    times = [t for s in drawn for t, _ in s]
    values = [v for s in drawn for _, v in s]
    t0, t_span = min(times), (max(times) - min(times)) or 1.0
    low, v_span = min(values), (max(values) - min(values)) or 1.0

    def point(t: float, v: float) -> str:
        x = pad + (t - t0) / t_span * (width - 2 * pad)
        return f"{x:.1f},{height - pad - (v - low) / v_span * (height - 2 * pad):.1f}"

    return [(label, " ".join(point(t, v) for t, v in s)) for label, s in labelled]
