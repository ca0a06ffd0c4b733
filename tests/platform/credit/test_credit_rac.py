"""Recent average credit decays with a one-week half-life (fixed clock, pure)."""

from __future__ import annotations

import pytest

from credit.rac import HALF_LIFE_S, decayed, rac


def test_recent_credit_halves_every_week() -> None:
    assert decayed(1000.0, HALF_LIFE_S) == pytest.approx(500.0)
    assert decayed(1000.0, 2 * HALF_LIFE_S) == pytest.approx(250.0)
    assert decayed(1000.0, -5.0) == 1000.0


def test_a_steady_rate_converges_to_its_daily_credit() -> None:
    recent = 0.0
    for _ in range(200 * 24):  # 200 days at 100 credit per day, credited hourly
        recent = decayed(recent, 3600.0) + 100.0 / 24
    assert rac(recent, 1800.0) == pytest.approx(100.0, rel=0.01)
