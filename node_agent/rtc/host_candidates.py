"""Which host addresses one peer connection offers as ICE candidates, chosen per connection.

aioice gathers host candidates from the module function `aioice.ice.get_host_addresses`, which never offers
127.0.0.1, and has no per-connection parameter for it. Two agents on one machine without another interface,
and every loopback test, need 127.0.0.1; a node may also want to offer exactly some addresses.

The policy belongs to the connection, not the process: `HostPeerConnection` (an aiortc peer connection) holds
its `HostCandidates` and activates them in a context variable while it gathers (aiortc gathers only inside
`setLocalDescription`). The module function is wrapped once; without an active policy it is aioice's own, so
two pools or connections with different settings in one process never see each other's choice. The guard
tests (`test_aiortc_guards.py`) check that gathering still happens only there on the pinned versions.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

LOOPBACK_V4 = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HostCandidates:
    """A connection's host-candidate policy: exactly `only`, or aioice's list plus 127.0.0.1 if `loopback`."""

    loopback: bool = False
    only: tuple[str, ...] | None = None

    def addresses(self, interfaces: Callable[[], list[str]], use_ipv4: bool) -> list[str]:
        """The host addresses to gather on; `interfaces` is aioice's own choice (asked only when needed)."""
        if self.only is not None:
            return list(self.only)
        addresses = interfaces()
        if self.loopback and use_ipv4 and LOOPBACK_V4 not in addresses:
            addresses.append(LOOPBACK_V4)
        return addresses


_active: contextvars.ContextVar[HostCandidates | None] = contextvars.ContextVar(
    "colearn_host_candidates", default=None
)
_original: Callable[..., list[str]] | None = None


def install_host_candidate_hook() -> None:
    """Wrap `aioice.ice.get_host_addresses` once so it follows the gathering connection's policy."""
    global _original
    if _original is not None:
        return
    import aioice.ice

    from node_agent.rtc.library_versions import require_tested_versions

    require_tested_versions()
    original = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        policy = _active.get()
        if policy is None:
            return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        return policy.addresses(lambda: original(use_ipv4=use_ipv4, use_ipv6=use_ipv6), use_ipv4)

    aioice.ice.get_host_addresses = get_host_addresses
    _original = original


def original_get_host_addresses() -> Callable[..., list[str]]:
    """aioice's own function (for the guard tests), whether or not the hook is installed."""
    import aioice.ice

    return _original if _original is not None else aioice.ice.get_host_addresses


@contextlib.contextmanager
def gathering_with(policy: HostCandidates | None) -> Iterator[None]:
    """Gather (in this context and tasks started from it) with `policy`; None means aioice's default."""
    install_host_candidate_hook()
    token = _active.set(policy)
    try:
        yield
    finally:
        _active.reset(token)


def host_peer_connection_class() -> type[Any]:
    """`HostPeerConnection`, defined on first use so that importing this module does not import aiortc."""
    global _peer_connection_class
    if _peer_connection_class is None:
        from aiortc import RTCPeerConnection

        class HostPeerConnection(RTCPeerConnection):
            """An aiortc peer connection that gathers host candidates with its own `HostCandidates`."""

            def __init__(self, configuration: Any, host_candidates: HostCandidates | None) -> None:
                super().__init__(configuration)
                self.host_candidates = host_candidates

            async def setLocalDescription(self, sessionDescription: Any = None) -> None:
                with gathering_with(self.host_candidates):
                    await super().setLocalDescription(sessionDescription)

        _peer_connection_class = HostPeerConnection
    return _peer_connection_class


_peer_connection_class: type[Any] | None = None
