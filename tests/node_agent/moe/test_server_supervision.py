"""An expert server's background loops: one that dies is restarted; one that keeps dying stops the server's
owner (`on_fatal`) instead of leaving a server that looks alive but no longer expires or announces."""

from __future__ import annotations

from node_agent.backoff import Backoff
from tests.processes import wait_until_async

FAST = Backoff(base=0.01, factor=2.0, maximum=0.02)


async def test_a_dying_expiry_loop_restarts_then_stops_the_owner(make_expert_server) -> None:
    server = await make_expert_server("ffn.[0:1]", forward_cache_ttl=2.0)  # expiry every 0.5 s
    fatal: list[str] = []
    server.supervisor.on_fatal = fatal.append
    server.supervisor.backoff = FAST
    server.supervisor.max_restarts = 2
    cache = server.forward_cache
    real_expire, calls = cache.expire, []

    def expire_failing_once(now: float) -> int:
        calls.append(now)
        if len(calls) == 1:
            raise RuntimeError("expiry bug")
        return real_expire(now)

    cache.expire = expire_failing_once
    # raised inside the loop, restarted, expiring again
    await wait_until_async(lambda: len(calls) >= 2, timeout=10)
    assert server.supervisor.restarts("forward-cache-expiry") == 1 and fatal == []

    def always_failing(now: float) -> int:
        raise RuntimeError("expiry broken for good")

    cache.expire = always_failing
    await wait_until_async(lambda: fatal, timeout=10)
    assert "forward-cache-expiry keeps failing" in fatal[0] and "expiry broken for good" in fatal[0]
    assert server.supervisor.running("expert-reannounce")  # the other loops are untouched
