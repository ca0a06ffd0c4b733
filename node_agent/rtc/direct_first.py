"""Direct paths before TURN: ICE checks of relayed candidate pairs wait a moment while direct ones may win.

aioice's controlling agent nominates aggressively: the first candidate pair whose check succeeds carries the
connection. Between two home routers the direct (server-reflexive) pair needs a hole punched from both sides,
so its first check is usually dropped by the far router and succeeds only on a retransmission about half a
second later; a pair through the TURN server succeeds at once. Left alone, ICE would therefore route a good
share of connections that could go direct through the TURN relay: slower, and at the operator's expense.

`install_direct_first` makes a check of a pair with a relay candidate at either end wait until `grace` seconds
after the connection's first check, unless every direct pair has failed by then (a symmetric NAT: no waiting
beyond that). The waiting pair is marked in progress, so aioice's pacing moves on to other pairs and an
incoming check on it triggers nothing. Where a direct pair succeeds first it is nominated and the relayed
checks never start; where none does, TURN takes over after at most `grace` seconds (the relayed connect
time the benchmark reports includes it).

Process-wide, like the other patches of `node_agent.rtc`: installed only on the pinned aioice
(`library_versions`); `test_aiortc_guards.py` checks the wrapped method is still where it was.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

#: Seconds relayed pairs wait for a direct one (about two STUN retransmission timeouts of aioice: 0.5 s, 1 s).
DEFAULT_GRACE = 1.0
_POLL = 0.05

_original_check_start: Any = None
_grace = DEFAULT_GRACE


def is_relayed_pair(pair: Any) -> bool:
    return "relay" in (
        getattr(pair.local_candidate, "type", None),
        getattr(pair.remote_candidate, "type", None),
    )


def relay_wait(connection: Any, pair: Any, now: float) -> float:
    """Seconds `pair`'s check should still wait: 0 for a direct pair, once the grace is over, or once every
    direct pair of the connection has failed."""
    if not is_relayed_pair(pair):
        return 0.0
    started: float | None = getattr(connection, "_colearn_checks_started", None)
    if started is None:
        return 0.0
    from aioice.ice import CandidatePair

    direct = [p for p in connection._check_list if not is_relayed_pair(p)]
    if all(p.state == CandidatePair.State.FAILED for p in direct):
        return 0.0
    return max(0.0, started + _grace - now)


def install_direct_first(grace: float = DEFAULT_GRACE) -> None:
    """Wrap aioice's `Connection.check_start` once (a later call only sets `grace`; 0: no waiting)."""
    global _original_check_start, _grace
    _grace = grace
    if _original_check_start is not None:
        return
    from aioice.ice import CandidatePair, Connection

    from node_agent.rtc.library_versions import require_tested_versions

    require_tested_versions()
    original = Connection.check_start

    async def check_start(self: Any, pair: Any) -> None:
        if getattr(self, "_colearn_checks_started", None) is None:
            self._colearn_checks_started = time.monotonic()
        if relay_wait(self, pair, time.monotonic()) > 0:
            self.check_state(pair, CandidatePair.State.IN_PROGRESS)  # pacing skips it meanwhile
            while (wait := relay_wait(self, pair, time.monotonic())) > 0:
                if self._check_list_done:
                    return
                await asyncio.sleep(min(_POLL, wait))
            if self._check_list_done:
                return
        await original(self, pair)

    Connection.check_start = check_start  # type: ignore[method-assign]
    _original_check_start = original


def installed() -> bool:
    return _original_check_start is not None
