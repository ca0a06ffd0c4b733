"""Which ICE path a peer connection selected: direct (host or server-reflexive) or relayed through TURN.

For logs (a volunteer behind a NAT wants to know whether its peers reach it directly) and for the network
lab's tests, which check that ICE picks the server-reflexive pair where the NATs allow it and TURN where they
do not. Reads aioice's nominated pair (private attributes of the pinned aiortc/aioice versions); None when the
connection has none (not connected, or another ICE implementation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SelectedPath:
    """The nominated candidate pair: each end's candidate type (host, srflx, prflx, relay) and address."""

    local_type: str
    local_address: tuple[str, int]
    remote_type: str
    remote_address: tuple[str, int]

    @property
    def relayed(self) -> bool:
        """True when either end of the pair is a TURN relay."""
        return "relay" in (self.local_type, self.remote_type)

    def describe(self) -> str:
        local, remote = self.local_address, self.remote_address
        return f"{self.local_type} {local[0]}:{local[1]} -> {self.remote_type} {remote[0]}:{remote[1]}"


def selected_path(peer_connection: Any) -> SelectedPath | None:
    """The data transport's nominated ICE pair, or None if there is none (yet)."""
    try:
        pairs = list(peer_connection.sctp.transport.transport._connection._nominated.values())
    except AttributeError:
        return None
    if not pairs:
        return None
    pair = pairs[0]
    try:
        local, remote = pair.local_candidate, pair.remote_candidate
        return SelectedPath(
            str(local.type),
            (str(local.host), int(local.port)),
            str(remote.type),
            (str(remote.host), int(remote.port)),
        )
    except (AttributeError, TypeError, ValueError):
        return None
