"""The network lab: namespaces, NAT routers, shaped links and coturn for tests and benchmarks (see lab.py)."""

from __future__ import annotations

from tests.netlab.coturn import TurnServer
from tests.netlab.lab import (
    PUBLIC_NETWORK,
    HomeNetwork,
    Host,
    LabUnavailable,
    NetLab,
    missing_requirements,
    require,
    sweep_stale_namespaces,
)

__all__ = [
    "PUBLIC_NETWORK",
    "HomeNetwork",
    "Host",
    "LabUnavailable",
    "NetLab",
    "TurnServer",
    "missing_requirements",
    "require",
    "skip_unless_lab",
    "sweep_stale_namespaces",
]


def skip_unless_lab(*, coturn: bool = False) -> None:
    """In a test: skip (saying why) when not root; fail loudly when root but a tool is missing: CI runs as
    root and `.ci/run` installs the tools, so a missing one there is a broken setup, not a reason to skip."""
    import os

    import pytest

    if os.geteuid() != 0:
        pytest.skip("the network lab needs root (network namespaces, nftables, tc)")
    reason = missing_requirements(coturn=coturn)
    if reason:
        pytest.fail(reason)
