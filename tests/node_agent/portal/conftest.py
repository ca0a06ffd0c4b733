"""Fixtures for the agent-side portal tests: a real local HTTP portal (see `local_portal.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_portal import LocalPortal


@pytest.fixture
def local_portal() -> Iterator[LocalPortal]:
    portal = LocalPortal().start()
    yield portal
    portal.stop()
