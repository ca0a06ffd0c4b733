"""What the portal observer's `info` probes cost for a swarm of many nodes (loopback, one machine).

A worker process hosts `--nodes` real expert servers (one DHT node, WebRTC pool and one small ffn expert
each) plus `--silent` nodes that announce experts but swallow every `rtc.offer` (their probes time out).
The main process probes all of them once, as `swarm.observer` does (`node_agent.moe.probe.probe_node` through
one connection pool, at most `--concurrency` at once, `--timeout` each, connections closed afterwards),
then once more. Reported: the round's wall time, probes per second, per-probe latency of serving nodes
(p50/p99), the prober's CPU seconds per probe, connections left open, and whether every serving node was found
serving and every silent one unreachable. Loopback only: across the Internet a probe adds its round trips.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.dht import DHTNode
from node_agent.moe.probe import SERVING, UNREACHABLE, probe_node
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def _hosts(conn: Connection, nodes: int, silent: int) -> None:
    asyncio.run(_hosts_main(conn, nodes, silent))


async def _hosts_main(conn: Connection, nodes: int, silent: int) -> None:
    from node_agent.moe.announce import announce_experts
    from node_agent.moe.server.backend import OptimizerConfig, create_backends
    from node_agent.moe.server.server import ExpertServer, ServerOptions

    bootstrap = await DHTNode.create(listen="127.0.0.1:0")
    servers, dhts, targets = [], [bootstrap], []
    for index in range(nodes):
        dht = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0")
        uid = f"ffn.{index}.0"
        backends = create_backends([uid], "ffn", 8, OptimizerConfig(name="sgd", lr=0.01), seed=index)
        server = await ExpertServer.create(
            dht, backends, ServerOptions(stats_period=3600.0), RTCOptions.for_loopback(), announce=False
        )
        servers.append(server)
        dhts.append(dht)
        targets.append((dht.node_id.hex(), dht.endpoint, [uid], True))
    never = asyncio.Event()

    async def swallow(peer: object, payload: object) -> None:
        await never.wait()

    for index in range(silent):
        dht = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0")
        dht.register_rpc("rtc.offer", swallow)
        await announce_experts(dht, [f"ffn.{index}.1"], ttl=600)
        dhts.append(dht)
        targets.append((dht.node_id.hex(), dht.endpoint, [f"ffn.{index}.1"], False))
    conn.send((bootstrap.endpoint, targets))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    for server in servers:
        await server.shutdown()
    for dht in dhts:
        await dht.shutdown()


async def probe_round(pool: ConnectionPool, targets: list, concurrency: int, timeout: float) -> dict:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    wrong = 0

    async def one(node_id: str, endpoint: str, uids: list[str], serving: bool) -> None:
        nonlocal wrong
        async with gate:
            started = time.monotonic()
            result = await probe_node(pool, bytes.fromhex(node_id), endpoint, uids, timeout)
            if serving:
                latencies.append(time.monotonic() - started)
            wrong += result.state != (SERVING if serving else UNREACHABLE)

    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(one(*target) for target in targets))
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return {
        "round_s": round(wall, 3),
        "probes_per_s": round(len(targets) / wall, 1),
        "serving_probe_p50_s": round(percentile(latencies, 0.5), 4),
        "serving_probe_p99_s": round(percentile(latencies, 0.99), 4),
        "prober_cpu_ms_per_probe": round(1000 * cpu / len(targets), 2),
        "misjudged": wrong,
        "connections_left_open": len(pool.links),
    }


async def main_async(args: argparse.Namespace) -> dict:
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.get_context("spawn").Process(
        target=_hosts, args=(child, args.nodes, args.silent), daemon=True
    )
    worker.start()
    try:
        bootstrap, targets = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        dht = await DHTNode.create(initial_peers=[bootstrap], listen="127.0.0.1:0", client_mode=True)
        pool = await ConnectionPool.create(dht, None, RTCOptions.for_loopback(connect_timeout=args.timeout))
        try:
            first = await probe_round(pool, targets, args.concurrency, args.timeout)
            second = await probe_round(pool, targets, args.concurrency, args.timeout)
        finally:
            await pool.close()
            await dht.shutdown()
    finally:
        parent.send("stop")
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
    return {
        "nodes": args.nodes,
        "silent_nodes": args.silent,
        "concurrency": args.concurrency,
        "timeout_s": args.timeout,
        "first_round": first,
        "second_round": second,
        "path": "loopback",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100, help="serving nodes")
    parser.add_argument("--silent", type=int, default=20, help="nodes whose offers go nowhere")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
