"""Tiny server-side SVG charts (polyline points), so pages are correct on load without JavaScript."""

from __future__ import annotations

import math
from collections.abc import Sequence


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
