"""Fitting a heartbeat into the portal's body limit (`MAX_BODY_BYTES` once signed).

A busy node can have more to say than one body holds: 256 connected peers alone are about 16 KiB of JSON, and
a body over the limit is refused whole, so the node would look offline. What is dropped first is what matters
least: graph edges (`peers`, listed busiest first) and replica states, halving whichever takes more bytes;
the served experts go last (coverage depends on them), with a warning. Work receipts then fill the room that
is left (`with_receipts`); those that do not fit wait for the next heartbeat. Pure: no sockets or clocks.
"""

from __future__ import annotations

import logging

import msgspec

from node_agent.portal.schemas import HeartbeatBody
from node_agent.portal.signed_body import MAX_BODY_BYTES

logger = logging.getLogger(__name__)

__all__ = ["RECEIPT_ROOM_BYTES", "SIGNED_FIELDS_BYTES", "fit_heartbeat", "heartbeat_budget", "with_receipts"]

#: Room left in a body for the fields signing adds (`ts`, `nonce`) and JSON spacing.
SIGNED_FIELDS_BYTES = 512
#: Room `fit_heartbeat` keeps free for work receipts (credit) when it has to trim: a few receipts a beat.
RECEIPT_ROOM_BYTES = 4 * 1024


def heartbeat_budget() -> int:
    """Bytes an unsigned heartbeat body may take."""
    return MAX_BODY_BYTES - SIGNED_FIELDS_BYTES


def _size(body: HeartbeatBody) -> int:
    return len(msgspec.json.encode(body))


def _size_of(items: object) -> int:
    return len(msgspec.json.encode(items))


def fit_heartbeat(body: HeartbeatBody, keep_free: int = RECEIPT_ROOM_BYTES) -> HeartbeatBody:
    """`body` trimmed until it leaves `keep_free` bytes of the budget (for receipts), or as near as it gets
    without dropping experts; experts are dropped only when the body would not fit at all."""
    target = heartbeat_budget() - keep_free
    if _size(body) <= target:
        return body
    before = (len(body.peers), len(body.replica_states), len(body.experts))
    while (body.peers or body.replica_states) and _size(body) > target:
        # halve whichever list takes more bytes: both keep their first (busiest, stalest) entries
        field = "peers" if _size_of(body.peers) >= _size_of(body.replica_states) else "replica_states"
        items = list(getattr(body, field))
        body = msgspec.structs.replace(body, **{field: items[: len(items) // 2]})
    experts = list(body.experts)
    while experts and _size(body) > heartbeat_budget():
        experts = experts[: len(experts) * 3 // 4]
        body = msgspec.structs.replace(body, experts=experts)
    dropped = (before[0] - len(body.peers), before[1] - len(body.replica_states), before[2] - len(experts))
    if dropped[2]:
        logger.warning(
            "heartbeat too large for the portal's %d-byte limit: %d of %d served experts left out of it",
            MAX_BODY_BYTES,
            dropped[2],
            before[2],
        )
    logger.info("heartbeat trimmed to fit: %d peer(s) and %d replica state(s) left out", *dropped[:2])
    return body


def with_receipts(body: HeartbeatBody, receipts: list[str]) -> HeartbeatBody:
    """`body` carrying the oldest receipts that fit in a signed body; the rest wait for the next heartbeat."""
    room = heartbeat_budget() - _size(body)
    fitting = []
    for text in receipts:
        room -= len(text) + 3  # quotes and comma
        if room < 0:
            break
        fitting.append(text)
    return msgspec.structs.replace(body, receipts=fitting) if fitting else body
