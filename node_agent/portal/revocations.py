"""The revocation list: a DHT record the portal publishes with its own identity, checked by every peer.

Stored under :func:`revocations_key` (subkey ``None``) by a DHT node whose identity is the portal key, so the
record's owner is the portal's node id. Pure: no sockets, no clocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from node_agent.portal.errors import PayloadError
from node_agent.portal.tokens import PROTOCOL_VERSION

__all__ = [
    "MAX_REVOKED",
    "REVOCATIONS_NAMESPACE",
    "RevocationList",
    "parse_revocation_list",
    "revocation_list_value",
    "revocations_key",
]

REVOCATIONS_NAMESPACE = "revocations:"
MAX_REVOKED = 512


@dataclass(frozen=True, slots=True)
class RevocationList:
    revoked: frozenset[str]
    published_at: float


def revocations_key(project: str) -> str:
    """DHT key of a project's revocation list (plain value, subkey ``None``)."""
    return f"{REVOCATIONS_NAMESPACE}{project}"


def revocation_list_value(revoked: Iterable[str], now: float) -> dict[str, Any]:
    """The DHT value the portal stores (with its own identity) under :func:`revocations_key`."""
    cids = sorted({str(cid) for cid in revoked})
    if len(cids) > MAX_REVOKED:
        raise ValueError(f"at most {MAX_REVOKED} revoked credentials fit in one DHT record")
    return {"v": PROTOCOL_VERSION, "revoked": cids, "t": float(now)}


def parse_revocation_list(value: object) -> RevocationList:
    if not isinstance(value, dict) or value.get("v") != PROTOCOL_VERSION:
        raise PayloadError("revocation list must be a map with v=1")
    revoked, t = value.get("revoked"), value.get("t")
    if not isinstance(revoked, list) or len(revoked) > MAX_REVOKED:
        raise PayloadError(f"revoked must be a list of at most {MAX_REVOKED} credential ids")
    if not all(isinstance(cid, str) and 0 < len(cid) <= 64 for cid in revoked):
        raise PayloadError("revoked credential ids must be short strings")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise PayloadError("revocation list t must be a unix time")
    return RevocationList(frozenset(revoked), float(t))
