"""Recent average credit (RAC): credit decayed exponentially with a one-week half-life, as BOINC's.

Pure. A node keeps `recent`, the decayed sum of its credit, and the time it was last brought forward.
`rac` turns it into credit per day: a node earning `c` per day for weeks has `rac` -> `c`.
"""

from __future__ import annotations

import math

HALF_LIFE_S = 7 * 86400.0
_DAY_S = 86400.0


def decayed(recent: float, elapsed_s: float, half_life_s: float = HALF_LIFE_S) -> float:
    """`recent` brought forward by `elapsed_s` seconds (never grows for negative elapsed times)."""
    return recent * math.pow(0.5, max(0.0, elapsed_s) / half_life_s)


def rac(recent: float, elapsed_s: float, half_life_s: float = HALF_LIFE_S) -> float:
    """Credit per day from a decayed sum: the sum of a steady rate `c`/day tends to c * half_life / ln 2."""
    return decayed(recent, elapsed_s, half_life_s) * math.log(2) * _DAY_S / half_life_s
