"""An averaging peer for lab tests: a real DHT node (reachability checks, relays when it finds itself behind a
NAT), a WebRTC connection pool with the lab's STUN/TURN, and a `DecentralizedAverager` over seeded tensors.

    python -m tests.netlab.averaging_peer --initial-peers 198.18.0.2:31337 --seed 3 --group-size 4 \
        --ice-server stun:198.18.0.9:3478 --ice-server turn:u:p@198.18.0.9:3478 --out peer3.pt \
        [--behind-nat] [--reachability private]

It prints `{"event": "ready", "node_id", "relays"}` once its DHT node is up (with `--behind-nat`, once it has
relays, which its declarations must carry), waits for a line `go` on stdin, averages once without compression
(a group of exactly `--group-size`), saves its averaged tensor to `--out` and prints `{"event": "done", ...}`
(the round's report and every connection's ICE path), then keeps serving until `quit` or end of input, so
that the others' calls to it can finish. The test computes the exact mean from the seeds (`peer_tensor`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

import torch

from node_agent.averaging import AveragingOptions, DecentralizedAverager
from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.portal.project_dht import project_validators
from node_agent.rtc.config import RTCOptions, parse_ice_server
from node_agent.rtc.paths import selected_path
from node_agent.rtc.pool import ConnectionPool
from node_agent.tensor_codec import Compression

READY_TIMEOUT = 60.0
GO_TIMEOUT = 120.0


def peer_tensor(seed: int, size: int) -> torch.Tensor:
    """What peer `seed` starts from (the test recomputes it for the expected mean)."""
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


async def read_line(timeout: float) -> str:
    """One stripped line of stdin ("" at its end), without blocking the loop; TimeoutError after `timeout`."""
    return (await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), timeout)).strip()


async def run(args: argparse.Namespace) -> None:
    dht = await DHTNode.create(
        initial_peers=args.initial_peers,
        listen="0.0.0.0:0",
        identity=Identity.generate(),
        validators=project_validators(),
        reachability=args.reachability,
    )
    options = RTCOptions(
        ice_servers=tuple(parse_ice_server(s) for s in args.ice_server), connect_timeout=15.0
    )
    pool = await ConnectionPool.create(dht, None, options)
    tensor = peer_tensor(args.seed, args.size)
    averager = await DecentralizedAverager.create(
        dht,
        pool,
        "lab",
        [tensor],
        AveragingOptions(
            target_group_size=args.group_size,
            min_group_size=args.group_size,
            matchmaking_time=args.matchmaking_time,
            compression=Compression.NONE,
            register_validator=False,  # `project_validators` has the `avg:` namespace
        ),
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while args.behind_nat and not dht.relays and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        emit({"event": "ready", "node_id": dht.node_id.hex(), "relays": list(dht.relays)})
        if await read_line(GO_TIMEOUT) != "go":
            return
        started = time.monotonic()
        report = await averager.step(weight=1.0, timeout=args.timeout)
        torch.save(tensor, args.out)
        links = []
        for link in pool.links:
            path = selected_path(link.peer_connection)
            links.append(
                {
                    "peer": link.node_id.hex(),
                    "outbound": link.outbound,
                    "relayed": None if path is None else path.relayed,
                    "path": None if path is None else path.describe(),
                }
            )
        emit(
            {
                "event": "done",
                "node_id": dht.node_id.hex(),
                "relays": list(dht.relays),
                "complete": report.complete,
                "group_size": report.group_size,
                "index": report.index,
                "members": [m.hex() for m in report.members],
                "seconds": round(time.monotonic() - started, 2),
                "links": links,
            }
        )
        while await read_line(GO_TIMEOUT) not in ("quit", ""):
            pass
    finally:
        await averager.shutdown()
        await pool.close()
        await dht.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--initial-peers", action="append", required=True)
    parser.add_argument("--ice-server", action="append", default=[])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--matchmaking-time", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--behind-nat", action="store_true", help="wait for relays before saying ready")
    parser.add_argument("--reachability", choices=("auto", "public", "private"), default="auto")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
