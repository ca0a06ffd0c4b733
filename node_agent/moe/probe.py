"""Does a node really serve its experts? A real `info` call per expert over the data path trainers use.

The portal's observer (`platform/swarm/observer.py`) asks this of every node announced in a project's DHT:
being announced proves nothing about being reachable (the announcement is the node's own claim, and a node
behind a NAT or bound to loopback may be announced and yet unreachable for everyone). The probe opens (or
reuses) a verified WebRTC connection through the same `ConnectionPool` a trainer's `ExpertCaller` uses and
asks `info` of each expert; a node is *serving* only when every probed expert answers with a well-formed
reply about that very expert. Every step has a timeout; the answer says why a node is not serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from node_agent.moe.api import ExpertProtocolError
from node_agent.rtc.pool import ConnectError, ConnectionPool
from node_agent.rtc.rpc import RPCError
from node_agent.tensor_codec import TensorCodecError, TensorSchema

UNREACHABLE, REACHABLE, SERVING = "unreachable", "reachable", "serving"
MAX_REASON_CHARS = 200


class ConnectingPool(Protocol):
    """What a probe needs of `ConnectionPool`."""

    async def connect(
        self, node_id: bytes, endpoint: str, timeout: float | None = None, relays: Sequence[str] = ()
    ) -> Any: ...

    def disconnect(self, node_id: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """`state`: unreachable (no connection opened), reachable (connected, but some expert did not answer
    `info` properly) or serving; `serving`: the uids that answered; `reason`: why not serving ("" if so)."""

    state: str
    serving: tuple[str, ...] = ()
    reason: str = ""


def check_info_reply(uid: str, reply: Any) -> list[TensorSchema]:
    """The output schemas of a valid `info` reply about `uid`; ExpertProtocolError if it is anything else."""
    if not isinstance(reply, dict) or not isinstance(reply.get("outputs"), list):
        raise ExpertProtocolError(f"{uid}: malformed info reply")
    answered = reply.get("uid", uid)
    if answered != uid:
        raise ExpertProtocolError(f"{uid}: info answered for another expert ({str(answered)[:40]!r})")
    try:
        return [TensorSchema.from_dict(s) for s in reply["outputs"]]
    except (TensorCodecError, TypeError, ValueError, AttributeError) as exc:
        raise ExpertProtocolError(f"{uid}: malformed info schema: {exc}") from exc


async def probe_node(
    pool: ConnectingPool | ConnectionPool,
    node_id: bytes,
    endpoint: str,
    uids: Sequence[str],
    timeout: float,
    *,
    keep_connection: bool = False,
    relays: Sequence[str] = (),
) -> ProbeResult:
    """Connect to `node_id` at `endpoint` and ask `info` of each of `uids` (concurrently), within `timeout`.

    The connection is closed afterwards unless `keep_connection` (a prober must not hold one connection per
    node of a large swarm). A node behind a NAT is signalled through its announced `relays`, as a trainer
    would."""
    try:
        async with asyncio.timeout(timeout):
            link = await pool.connect(node_id, endpoint, timeout, relays=relays)
    except ConnectError as exc:
        return ProbeResult(UNREACHABLE, reason=_short(f"no connection: {exc}"))
    except TimeoutError:
        return ProbeResult(UNREACHABLE, reason=f"no connection within {timeout:.0f} s")
    try:
        outcomes = await asyncio.gather(*(_info(link, uid, timeout) for uid in uids))
    finally:
        if not keep_connection:
            pool.disconnect(node_id)
    serving = tuple(uid for uid, error in zip(uids, outcomes, strict=True) if not error)
    errors = [error for error in outcomes if error]
    if errors or not uids:
        reason = errors[0] if errors else "announces no expert"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return ProbeResult(REACHABLE, serving, _short(f"connected, but {reason}{more}"))
    return ProbeResult(SERVING, serving)


async def _info(link: Any, uid: str, timeout: float) -> str:
    """ "" if `uid` answered a valid `info`, otherwise why not."""
    try:
        async with asyncio.timeout(timeout):
            reply = await link.rpc.call("info", {"uid": uid}, timeout)
        check_info_reply(uid, reply)
    except TimeoutError:
        return f"{uid}: info not answered within {timeout:.0f} s"
    except (RPCError, ExpertProtocolError) as exc:
        return f"{uid}: {exc}" if not str(exc).startswith(uid) else str(exc)
    return ""


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
