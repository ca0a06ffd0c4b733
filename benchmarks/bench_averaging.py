"""Averaging benchmark: hivemind's benchmark_averaging.py workload over our DHT + WebRTC averager.

Same flags and defaults as hivemind's script: ``--num-peers 16 --target-group-size 4 --num-rounds 5
--hid-size 256 --num-layers 3`` (13 tensors per layer, as its ``sample_tensors``), fp16 compression, peers
started ``--spawn-dtime`` apart, initial group bits ``index % num_groups``, each step bounded by
``--round-timeout``; ``--min-matchmaking-time`` is how long a group waits to fill (it forms at once when
full). ``--request-timeout`` is accepted for the same command line; our per-call deadlines come from measured
throughput instead.

The peers are spread over ``--processes`` OS processes, one per core by default (hivemind runs each averager
in its own process), each with one event loop: uvloop and the allocator settings of ``node-agent serve``,
where expert replicas average (hivemind's averagers run on uvloop too), unless ``--event-loop asyncio``. Real
DHT nodes on UDP, real aiortc connections on 127.0.0.1. Set-up is not timed:
``total_s`` runs from the first peer's first step to the last peer's last. ``max_abs_error`` compares every
complete round's result with the exact (float64) mean of its group's inputs (spilled to /dev/shm, checked
after the run). ``--standard-chunks`` keeps aiortc's 1.2 KB SCTP chunks, what a volunteer across a typical
network path gets; by default each connection probes its path and loopback carries 16 KiB packets (a
loopback-only speed-up). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.averaging import AveragingError, AveragingOptions, DecentralizedAverager
from node_agent.averaging.matchmaking import initial_group_bits
from node_agent.dht import DHTNode
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.tensor_codec import Compression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from averaging_workload import add_workload_arguments, sample_tensors


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _worker(conn: Connection, root: str, indices: list[int], args: argparse.Namespace, spill: str) -> None:
    torch.set_num_threads(1)  # several peers share one event loop; intra-op threads only contend
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    if args.event_loop == "uvloop":
        from node_agent.process_tuning import tune_server_process

        tune_server_process()  # what `node-agent serve` (replicas average there) does first
    asyncio.run(_worker_main(conn, root, indices, args, Path(spill)))


async def _worker_main(
    conn: Connection, root: str, indices: list[int], args: argparse.Namespace, spill: Path
) -> None:
    num_groups = 2 ** round(math.log2(max(1, args.num_peers / args.target_group_size)))
    nbits = round(math.log2(num_groups))
    rtc = RTCOptions.for_loopback(connect_timeout=10.0)
    if args.standard_chunks:
        rtc = dataclasses.replace(rtc, record_probing=None)
    peers = []
    for index in indices:
        torch.manual_seed(index)
        tensors = sample_tensors(args.hid_size, args.num_layers)
        dht = await DHTNode.create(initial_peers=[root], listen="127.0.0.1:0")
        pool = await ConnectionPool.create(dht, None, rtc)
        options = AveragingOptions(
            target_group_size=args.target_group_size,
            min_group_size=2,
            matchmaking_time=args.min_matchmaking_time,
            group_bits=initial_group_bits(index, nbits),
            compression=Compression.FLOAT16,
        )
        averager = await DecentralizedAverager.create(dht, pool, "my_tensor", tensors, options)
        peers.append((index, tensors, averager, pool, dht))
    conn.send("ready")
    loop = asyncio.get_running_loop()
    go_at = await loop.run_in_executor(None, conn.recv)
    results: list[dict[str, Any]] = []

    async def peer(index: int, tensors: list[torch.Tensor], averager: DecentralizedAverager) -> None:
        await asyncio.sleep(max(0.0, go_at + index * args.spawn_dtime - time.time()))
        for round_number in range(args.num_rounds):
            before = _flat(tensors).numpy().copy()
            started = time.monotonic()
            entry: dict[str, Any] = {"peer": index, "round": round_number, "ok": False}
            try:
                report = await averager.step(timeout=args.round_timeout)
                entry.update(
                    ok=report.complete,
                    round_s=time.monotonic() - started,
                    matchmaking_s=report.matchmaking_s,
                    allreduce_s=report.allreduce_s,
                    group=report.group_id.hex(),
                    size=report.group_size,
                )
            except AveragingError as exc:
                logging.info("peer %d: step failed: %s", index, exc)
            if entry["ok"]:
                stem = spill / f"{entry['group']}-{index}"
                before.tofile(f"{stem}.before")
                _flat(tensors).numpy().tofile(f"{stem}.after")
            results.append(entry)

    await asyncio.gather(*(peer(i, t, a) for i, t, a, _p, _d in peers))
    conn.send(results)
    for _index, _tensors, averager, pool, dht in peers:
        await averager.shutdown()
        await pool.close()
        await dht.shutdown()


def max_abs_error(results: list[dict[str, Any]], spill: Path) -> float:
    """Each complete group's results against the exact (float64) mean of its members' inputs."""
    groups: dict[str, list[int]] = {}
    for entry in results:
        if entry["ok"]:
            groups.setdefault(entry["group"], []).append(entry["peer"])
    worst = 0.0
    for group, members in groups.items():
        paths = [spill / f"{group}-{peer}" for peer in members]
        inputs = [np.fromfile(f"{p}.before", dtype=np.float32).astype(np.float64) for p in paths]
        if len(inputs) < max(e["size"] for e in results if e.get("group") == group):
            continue  # a member's side failed: no exact mean to compare with
        mean = np.mean(inputs, axis=0)
        for path in paths:
            worst = max(worst, float(np.abs(np.fromfile(f"{path}.after", dtype=np.float32) - mean).max()))
    return worst


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = await DHTNode.create(listen="127.0.0.1:0")
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="bench-averaging-", dir="/dev/shm") as spill:
        workers, conns = [], []
        for number in range(args.processes):
            parent, child = context.Pipe()
            indices = list(range(number, args.num_peers, args.processes))
            process = context.Process(target=_worker, args=(child, root.endpoint, indices, args, spill))
            process.start()
            workers.append(process)
            conns.append(parent)
        for conn in conns:
            assert await loop.run_in_executor(None, conn.recv) == "ready"
        go_at = time.time() + 0.5
        for conn in conns:
            conn.send(go_at)
        results: list[dict[str, Any]] = []
        for conn in conns:
            results += await loop.run_in_executor(None, conn.recv)
        total = max(0.0, time.time() - go_at)
        for process in workers:
            process.join(timeout=30)
        error = max_abs_error(results, Path(spill))
    await root.shutdown()
    good = [e for e in results if e["ok"]]

    def mean(key: str) -> float | None:
        return round(sum(e[key] for e in good) / len(good), 3) if good else None

    return {
        "benchmark": "averaging",
        "num_peers": args.num_peers,
        "target_group_size": args.target_group_size,
        "num_rounds": args.num_rounds,
        "hid_size": args.hid_size,
        "num_layers": args.num_layers,
        "values_per_peer": sum(t.numel() for t in sample_tensors(args.hid_size, args.num_layers)),
        "compression": "float16",
        "processes": args.processes,
        "event_loop": args.event_loop,
        "total_s": round(total, 3),
        "success_rate": len(good) / max(1, len(results)),
        "successful_steps": len(good),
        "attempted_steps": len(results),
        "mean_round_s": mean("round_s"),
        "mean_matchmaking_s": mean("matchmaking_s"),
        "mean_allreduce_s": mean("allreduce_s"),
        "max_abs_error": error,
        "path": "loopback (aiortc over 127.0.0.1), "
        + (
            "standard 1.2 KB SCTP chunks"
            if args.standard_chunks
            else "probed SCTP packets (16 KiB on loopback)"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_workload_arguments(parser)
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 2,
        help="OS processes the peers are spread over (default: one per core; more only add switching)",
    )
    parser.add_argument(
        "--standard-chunks",
        action="store_true",
        help="aiortc's standard 1.2 KB SCTP chunks, as across a typical network path (default: the packet "
        "size each connection probes, up to 16 KiB on loopback)",
    )
    parser.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="the peers' event loop: uvloop (and the allocator settings), as `node-agent serve` runs, where "
        "expert replicas average (default); asyncio: the standard library's loop",
    )
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, stream=sys.stderr)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
