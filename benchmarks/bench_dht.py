"""DHT benchmark: hivemind's workload over real peers in separate processes, or an in-memory simulation.

Process mode (default): ``--num-peers`` peers, each its own OS process on 127.0.0.1, each joining through
``--initial-peers`` random earlier peers. For ``--rounds`` rounds, 8 random live peers store one subkey each
under a fresh key, then 8 other live peers ``get(key, latest=True)``; a get succeeds if it returns every
subkey whose store succeeded. ``--failure-rate`` of the peers are killed (SIGKILL, no goodbye) during the
first half of the rounds. Latencies are per operation; ``*_round_mean_s`` is the wall time of a round's 8
concurrent operations (what hivemind's benchmark reports).

Simulation mode (``--simulate N``): N real protocol cores in one process over the in-memory transport,
with routing tables filled as a converged swarm would have them (each node knows its nearest neighbours and
a random sample of the rest). Stores keys, removes ``--failure-rate`` of the nodes, then gets them and
reports hops, queries per lookup and success rate.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.dht.node import DHTNode
from node_agent.dht.routing import id_to_int
from node_agent.dht.transport import MemoryNetwork

OPS_PER_ROUND = 8
TTL = 600.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- process mode -------------------------------------------------------------------------------------
def _worker(conn: Connection, initial_peers: list[str]) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_worker_main(conn, initial_peers))


async def _worker_main(conn: Connection, initial_peers: list[str]) -> None:
    node = await DHTNode.create(initial_peers=initial_peers, listen="127.0.0.1:0")
    conn.send(node.endpoint)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    tasks: set[asyncio.Task] = set()

    async def execute(command: tuple) -> None:
        started = time.perf_counter()
        if command[0] == "store":
            _, key, subkey, value = command
            result: object = await node.store(key, value, time.time() + TTL, subkey=subkey)
        else:
            found = await node.get(command[1], latest=True)
            result = sorted(s for s in found if s is not None)
        conn.send((result, time.perf_counter() - started))

    while True:
        command = await commands.get()
        if command[0] == "exit":
            break
        task = loop.create_task(execute(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await node.shutdown()


def _ask(conns: list[Connection], command_for: list[tuple]) -> tuple[list, float]:
    started = time.perf_counter()
    for conn, command in zip(conns, command_for, strict=True):
        conn.send(command)
    replies: dict[int, tuple] = {}
    pending = {id(c): c for c in conns}
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for conn in wait(list(pending.values()), timeout=deadline - time.monotonic()):
            replies[id(conn)] = conn.recv()
            del pending[id(conn)]
    wall = time.perf_counter() - started
    return [replies.get(id(c), (None, float("nan"))) for c in conns], wall


def run_processes(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    context = multiprocessing.get_context("fork")  # fork from a light parent: no per-process import cost
    started = time.perf_counter()
    processes, conns, endpoints = [], [], []

    def spawn(initial: list[str]) -> None:
        parent, child = context.Pipe()
        process = context.Process(target=_worker, args=(child, initial), daemon=True)
        process.start()
        processes.append(process)
        conns.append(parent)

    spawn([])
    endpoints.append(conns[0].recv())
    while len(processes) < args.num_peers:
        batch = min(8, args.num_peers - len(processes))
        first = len(processes)
        for _ in range(batch):
            spawn(rng.sample(endpoints, min(args.initial_peers, len(endpoints))))
        for conn in conns[first:]:
            endpoints.append(conn.recv())
    setup_s = time.perf_counter() - started

    alive = list(range(args.num_peers))
    to_kill = round(args.failure_rate * args.num_peers)
    kill_rounds = max(1, args.rounds // 2)
    store_lat, get_lat, store_walls, get_walls = [], [], [], []
    stores_ok = stores = gets_ok = gets = 0
    run_started = time.perf_counter()
    for round_index in range(args.rounds):
        if round_index < kill_rounds and to_kill:
            kill_now = to_kill // kill_rounds + (1 if round_index < to_kill % kill_rounds else 0)
            for victim in rng.sample(alive, kill_now):
                processes[victim].kill()
                alive.remove(victim)
        key = f"bench:{round_index}:{rng.getrandbits(32):08x}"
        chosen = rng.sample(alive, min(len(alive), 2 * OPS_PER_ROUND))
        storers, getters = chosen[:OPS_PER_ROUND], chosen[OPS_PER_ROUND:]
        replies, wall = _ask(
            [conns[i] for i in storers], [("store", key, f"peer{i}", {"round": round_index}) for i in storers]
        )
        store_walls.append(wall)
        expected = sorted(f"peer{i}" for i, (ok, _) in zip(storers, replies, strict=True) if ok)
        for ok, latency in replies:
            stores += 1
            stores_ok += ok is True
            store_lat.append(latency)
        replies, wall = _ask([conns[i] for i in getters], [("get", key)] * len(getters))
        get_walls.append(wall)
        for found, latency in replies:
            gets += 1
            gets_ok += found is not None and set(expected) <= set(found) and bool(expected)
            get_lat.append(latency)
    total_s = time.perf_counter() - run_started
    for index in alive:
        conns[index].send(("exit",))
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
    return {
        "mode": "processes",
        "num_peers": args.num_peers,
        "initial_peers": args.initial_peers,
        "rounds": args.rounds,
        "failure_rate": args.failure_rate,
        "peers_killed": to_kill,
        "store_success_rate": stores_ok / max(1, stores),
        "get_success_rate": gets_ok / max(1, gets),
        "store_latency_mean_s": statistics.fmean(store_lat),
        "store_latency_p99_s": percentile(store_lat, 0.99),
        "get_latency_mean_s": statistics.fmean(get_lat),
        "get_latency_p99_s": percentile(get_lat, 0.99),
        "store_round_mean_s": statistics.fmean(store_walls),
        "get_round_mean_s": statistics.fmean(get_walls),
        "setup_s": setup_s,
        "total_s": total_s,
        "cpu_count": os.cpu_count(),
    }


# -- simulation mode ----------------------------------------------------------------------------------
def _fill_routing_tables(nodes: list[DHTNode], rng: random.Random, sample: int) -> None:
    """Give each node what a converged Kademlia table holds: nearest neighbours plus a random spread."""
    ordered = sorted(nodes, key=lambda n: id_to_int(n.node_id))
    now = time.time()
    for position, node in enumerate(ordered):
        neighbours = ordered[max(0, position - 20) : position + 21]
        for other in neighbours + rng.sample(ordered, min(sample, len(ordered))):
            if other is not node:
                node.core.routing.observe(other.node_id, *other._transport.local_address, now, True)


async def run_simulation(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    network = MemoryNetwork()
    started = time.perf_counter()
    nodes = [
        await DHTNode.create(listen=f"127.0.{i // 60000}.1:{i % 60000 + 1}", network=network)
        for i in range(args.simulate)
    ]
    _fill_routing_tables(nodes, rng, sample=200)
    setup_s = time.perf_counter() - started
    keys = [f"sim:{i}" for i in range(args.lookups)]
    storers = rng.sample(nodes, len(keys))
    store_ok = await asyncio.gather(
        *(
            node.store(key, {"i": i}, time.time() + TTL)
            for i, (node, key) in enumerate(zip(storers, keys, strict=True))
        )
    )
    victims = rng.sample(nodes, round(args.failure_rate * len(nodes)))
    for victim in victims:
        await victim.shutdown()
    gone = {id(v) for v in victims}
    alive = [n for n in nodes if id(n) not in gone]
    getters = rng.sample(alive, len(keys))
    network.datagrams = 0
    get_started = time.perf_counter()
    results = []
    for batch in range(0, len(keys), 25):
        chunk = list(zip(getters[batch : batch + 25], keys[batch : batch + 25], strict=True))
        found = await asyncio.gather(*(node.get(key) for node, key in chunk))
        for (node, _key), value in zip(chunk, found, strict=True):
            state = node.last_lookup
            results.append((bool(value), state.hops if state else 0, state.queries_sent if state else 0))
    get_s = time.perf_counter() - get_started
    get_datagrams = network.datagrams
    # Nearest-neighbour accuracy: do live lookups find the true k nearest live nodes?
    probes = [(node, os.urandom(20)) for node in rng.sample(alive, min(20, len(alive)))]
    found_sets = await asyncio.gather(*(node.find_nearest(target, 20) for node, target in probes))
    accuracy = []
    for (_, target), found in zip(probes, found_sets, strict=True):
        truth = {
            n.node_id for n in sorted(alive, key=lambda n: id_to_int(n.node_id) ^ id_to_int(target))[:20]
        }
        accuracy.append(len({node_id for node_id, _ in found} & truth) / 20)
    for node in alive:
        await node.shutdown()
    return {
        "mode": "simulate",
        "num_nodes": args.simulate,
        "failure_rate": args.failure_rate,
        "lookups": len(keys),
        "store_success_rate": sum(store_ok) / len(store_ok),
        "get_success_rate": sum(ok for ok, _, _ in results) / len(results),
        "hops_mean": statistics.fmean(h for _, h, _ in results),
        "hops_max": max(h for _, h, _ in results),
        "queries_per_lookup_mean": statistics.fmean(q for _, _, q in results),
        "nearest_20_accuracy_mean": statistics.fmean(accuracy),
        "datagrams_per_get": get_datagrams / len(keys),
        "setup_s": setup_s,
        "get_phase_s": get_s,
        "total_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-peers", type=int, default=16)
    parser.add_argument("--initial-peers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--failure-rate", type=float, default=0.1)
    parser.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="in-memory simulation of N nodes"
    )
    parser.add_argument("--lookups", type=int, default=200, help="keys stored and fetched in --simulate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = asyncio.run(run_simulation(args)) if args.simulate else run_processes(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
