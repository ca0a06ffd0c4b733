"""STUN/TURN servers from the portal: the operator's list in the project config, and short-lived TURN
credentials in coturn's REST scheme. Pure (no sockets, clocks, Django): the portal issues with it, the agent
reads with it.

coturn with `use-auth-secret` accepts the username `<expiry>:<node id>` with the password
`base64(HMAC-SHA1(secret, username))` until `<expiry>` (unix seconds) has passed; nobody needs to tell coturn
about a credential. The portal gives one to a node only in answers to requests signed with the node key and
carrying a valid credential (join, renew), so only the project's nodes can spend the operator's relay
bandwidth, each for a bounded time, and a revoked or banned node gets no new one.

The project config (public) lists the servers (`ice_servers`, URLs only); the TURN credential comes in the
join and renew replies (`TurnGrant`) and applies to every `turn:`/`turns:` URL of the list.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from collections.abc import Iterable, Sequence
from typing import Annotated

import msgspec

from node_agent.portal.errors import PayloadError, convert
from node_agent.rtc.config import IceServer

__all__ = [
    "IceServerSpec",
    "TurnGrant",
    "ice_servers_for",
    "issue_turn_grant",
    "parse_turn_grant",
    "turn_password",
]

_URL = Annotated[str, msgspec.Meta(pattern=r"^(stun|stuns|turn|turns):[^\s@]{1,250}$")]


class IceServerSpec(msgspec.Struct, frozen=True):
    """One server of the project config's `ice_servers`: STUN or TURN URLs, never credentials."""

    urls: Annotated[list[_URL], msgspec.Meta(min_length=1, max_length=8)]


class TurnGrant(msgspec.Struct, frozen=True):
    """A TURN credential for this node (coturn REST scheme), valid until `expires_at` (unix seconds)."""

    username: Annotated[str, msgspec.Meta(max_length=128)]
    credential: Annotated[str, msgspec.Meta(max_length=128)]
    expires_at: float
    issued_at: float = 0.0

    def renew_at(self) -> float:
        """Half-way through its lifetime: the agent renews (with its credential) by then."""
        return self.issued_at + (self.expires_at - self.issued_at) / 2


def turn_password(secret: str, username: str) -> str:
    """coturn's REST password for `username`: base64 of HMAC-SHA1 keyed with the shared secret."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def issue_turn_grant(secret: str, node_id_hex: str, *, now: float, ttl: float) -> TurnGrant:
    """A credential for `node_id_hex` that coturn accepts for `ttl` seconds from `now`."""
    if not secret:
        raise ValueError("no TURN secret configured")
    expiry = int(now + ttl)
    username = f"{expiry}:{node_id_hex}"
    password = turn_password(secret, username)
    return TurnGrant(username=username, credential=password, expires_at=float(expiry), issued_at=float(now))


def ice_servers_for(
    specs: Iterable[IceServerSpec], grant: TurnGrant | None, *, now: float, extra: Sequence[IceServer] = ()
) -> tuple[IceServer, ...]:
    """The servers a node's peer connections use: the project's STUN URLs, its TURN URLs with `grant`
    (left out without a grant or once it expired: coturn would refuse them), then `extra` (`--ice-server`)."""
    servers: list[IceServer] = []
    usable = grant is not None and grant.expires_at > now
    for spec in specs:
        for url in spec.urls:
            if url.startswith("stun"):
                servers.append(IceServer(url))
            elif usable and grant is not None:
                servers.append(IceServer(url, username=grant.username, credential=grant.credential))
    servers.extend(extra)
    return tuple(servers)


def parse_turn_grant(data: object) -> TurnGrant | None:
    """The `turn` field of a join or renew reply (None when the portal runs no TURN); ProtocolError if bad."""
    if data is None:
        return None
    grant = convert(data, TurnGrant, "TURN credential")
    if not (math.isfinite(grant.expires_at) and math.isfinite(grant.issued_at)):
        raise PayloadError("TURN credential: times must be finite")
    return grant
