"""DHT records under a withdrawal flood: do readers still see every server, and what does paging cost?

One process, real UDP on 127.0.0.1: ``--nodes`` DHT nodes, ``--servers`` owners announcing one cell each
under the prefix key ``experts:ffn.``, and one attacker owner storing ``--flood`` padded withdrawals at the
longest expiry allowed under the same key. A client-mode reader then runs ``--reads`` ``get(latest=True)``
of the key, before and after the flood. Reports how many servers the reader saw, the latency percentiles
and the find datagrams one read took. All nodes share this process's one CPU, so latencies are upper bounds.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.dht.api import owner_subkey
from node_agent.dht.node import DHTNode
from node_agent.moe.announce import (
    MAX_ANNOUNCE_TTL,
    announce_experts,
    announcement_value,
    live_children,
    prefix_key,
)
from node_agent.portal.project_dht import install_project_validators

KEY = prefix_key("ffn.")


async def read(reader: DHTNode, reads: int) -> tuple[list[float], int, int]:
    """Latencies of ``reads`` gets, the fewest servers one of them saw, find datagrams sent per get."""
    latencies: list[float] = []
    seen = 1 << 30
    sent = 0
    original = reader._call

    async def counting_call(address, kind, payload, expected_id, timeout):  # type: ignore[no-untyped-def]
        nonlocal sent
        sent += kind == "find"
        return await original(address, kind, payload, expected_id, timeout)

    reader._call = counting_call  # type: ignore[method-assign]
    try:
        for _ in range(reads):
            started = time.perf_counter()
            found = await reader.get(KEY, latest=True)
            latencies.append(time.perf_counter() - started)
            seen = min(seen, sum(len(v) for v in live_children(found).values()))
    finally:
        reader._call = original  # type: ignore[method-assign]
    return latencies, seen, sent // max(1, reads)


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    nodes = [await DHTNode.create(listen="127.0.0.1:0")]
    for _ in range(args.nodes - 1):
        nodes.append(await DHTNode.create(initial_peers=[nodes[0].endpoint], listen="127.0.0.1:0"))
    for node in nodes:
        install_project_validators(node)
    servers = []
    try:
        for index in range(args.servers):
            server = await DHTNode.create(initial_peers=[nodes[0].endpoint], listen="127.0.0.1:0")
            install_project_validators(server)
            servers.append(server)
            await announce_experts(server, [f"ffn.{index}.0"], ttl=MAX_ANNOUNCE_TTL)
        reader = await DHTNode.create(
            initial_peers=[nodes[0].endpoint], listen="127.0.0.1:0", client_mode=True
        )
        install_project_validators(reader)
        servers.append(reader)
        clean, seen_clean, finds_clean = await read(reader, args.reads)

        attacker = await DHTNode.create(
            initial_peers=[nodes[0].endpoint], listen="127.0.0.1:0", client_mode=True
        )
        servers.append(attacker)
        now = time.time()
        value = announcement_value(
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", attacker.node_id, now, True
        )
        stored = 0
        for start in range(0, args.flood, 200):
            batch = [
                (KEY, owner_subkey(str(c), attacker.node_id), value, now + MAX_ANNOUNCE_TTL - 5)
                for c in range(start, min(args.flood, start + 200))
            ]
            stored += sum(await attacker.store_many(batch))
        flooded, seen_flooded, finds_flooded = await read(reader, args.reads)
        return {
            "nodes": args.nodes,
            "servers": args.servers,
            "flood_withdrawals": args.flood,
            "flood_stored": stored,
            "servers_seen_clean": seen_clean,
            "servers_seen_flooded": seen_flooded,
            "get_clean": summary(clean),
            "get_flooded": summary(flooded),
            "find_datagrams_per_get_clean": finds_clean,
            "find_datagrams_per_get_flooded": finds_flooded,
        }
    finally:
        for node in [*servers, *nodes]:
            await node.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=20)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
