"""A trainer-side probe for lab tests: every `--period` seconds it looks an expert up in the DHT and calls it
over a *fresh* connection (so each round signals again, through the relays the server announces), printing
one JSON line per round: `{"t", "ok", "relays", "seconds", "connect_s", "error"}` (`connect_s`: offer sent to
data channel open, the offer through a relay when the server announces relays).

    python -m tests.netlab.expert_probe --initial-peers 198.18.0.2:31337 --uid ffn.0.0 --hidden-dim 16 \
        --ice-server stun:198.18.0.9:3478 --duration 60
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from node_agent.moe.client import ExpertCaller, get_experts
from node_agent.rtc.config import RTCOptions, parse_ice_server
from node_agent.rtc.pool import ConnectionPool


def emit(**event: object) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def fresh_pool(caller: ExpertCaller) -> None:
    assert caller.pool is not None and caller.dht is not None
    await caller.pool.close()
    caller.pool = await ConnectionPool.create(caller.dht, None, caller.rtc_options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--initial-peers", action="append", required=True)
    parser.add_argument("--ice-server", action="append", default=[])
    parser.add_argument("--uid", required=True)
    parser.add_argument("--hidden-dim", type=int, default=16)
    parser.add_argument("--period", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    options = RTCOptions(ice_servers=tuple(parse_ice_server(s) for s in args.ice_server), connect_timeout=8.0)
    caller = ExpertCaller.start_caller(args.initial_peers, rtc_options=options, compression="none")
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.duration:
            round_started = time.monotonic()
            relays: list[str] = []
            connect_s = None
            try:
                caller.run(fresh_pool(caller)).result(10)
                (handle,) = caller.run(get_experts(caller.dht, [args.uid])).result(args.timeout)
                if handle is None:
                    raise RuntimeError("expert not found in the DHT")
                relays = list(handle.relays)
                connect_started = time.monotonic()
                assert caller.pool is not None
                caller.run(
                    caller.pool.connect(handle.node_id, handle.endpoint, args.timeout, handle.relays)
                ).result(args.timeout + 5)
                connect_s = time.monotonic() - connect_started
                (out,) = caller.forward(handle, [torch.randn(2, args.hidden_dim)], args.timeout).result(
                    args.timeout + 5
                )
                ok, error = tuple(out.shape) == (2, args.hidden_dim), ""
            except Exception as exc:  # every failure is a data point, not the end of the probe
                ok, error = False, f"{type(exc).__name__}: {exc}"
            emit(
                t=round(time.monotonic() - started, 2),
                ok=ok,
                relays=relays,
                seconds=round(time.monotonic() - round_started, 2),
                connect_s=None if connect_s is None else round(connect_s, 3),
                error=error[:300],
            )
            time.sleep(max(0.0, args.period - (time.monotonic() - round_started)))
    finally:
        caller.stop()


if __name__ == "__main__":
    main()
