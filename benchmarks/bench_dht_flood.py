"""DHT storage flood: how much memory hostile stores can pin in a real node, and whether it keeps serving.

Starts a victim ``node-agent bootstrap`` process on 127.0.0.1. For ``--seconds``, attackers on
``--sources`` loopback addresses (127.0.0.2, 127.0.0.3, ...: each a separate source for the victim's
quotas) store records signed by fresh owners, rotating their port and identity every batch; half the
values are ``--value-size`` bytes, half are msgpack arrays of empty arrays (about 64 bytes of Python
objects per packed byte). One attacker also re-stores a single record with ever later expirations. An
honest node on 127.0.0.1 stores and gets its own key once a second throughout.

Prints one JSON object: records sent and accepted, the victim's RSS before and after (``/proc``), the
honest success rate, and whether the victim survived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node_agent.dht import DHTError
from node_agent.dht.endpoints import parse_endpoint
from node_agent.dht.node import DHTNode
from node_agent.dht.records import sign_record
from node_agent.identity import Identity

BATCH = 200  # records per attacker port and identity
_VICTIM = "import sys; from node_agent.cli import main; sys.exit(main(sys.argv[1:]))"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_victim() -> tuple[subprocess.Popen, str, bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", _VICTIM, "bootstrap", "--listen", "127.0.0.1:0", "--ephemeral"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert process.stdout is not None
    endpoint, _, id_hex = process.stdout.readline().strip().partition("/")
    return process, endpoint, bytes.fromhex(id_hex)


def flood_records(owner: Identity, batch: int, value_size: int) -> list:
    expanding = batch % 2 == 1
    value = [[] for _ in range(value_size - 3)] if expanding else b"x" * value_size
    expiration = time.time() + 3600
    return [sign_record(owner, f"flood-{batch}-{i % 10}", f"s{i}", value, expiration) for i in range(BATCH)]


async def attack(args: argparse.Namespace, victim: tuple[str, int], victim_id: bytes, stop: float) -> dict:
    sent = accepted = restores = 0
    batch = 0
    restorer = await DHTNode.create(listen="127.0.0.2:0")
    restore_start = time.time() + 600
    try:
        while time.time() < stop:
            host = f"127.0.0.{2 + batch % args.sources}"
            attacker = await DHTNode.create(listen=f"{host}:0")  # a fresh port and identity each batch
            try:
                records = flood_records(Identity.generate(), batch, args.value_size)
                flags = await attacker._send_records(victim_id, victim, records)
            finally:
                await attacker.shutdown()
            sent += len(records)
            accepted += sum(flags)
            again = [
                sign_record(restorer.identity, "restored", None, i, restore_start + restores + i * 0.001)
                for i in range(BATCH)
            ]
            await restorer._send_records(victim_id, victim, again)
            restores += len(again)
            batch += 1
            await asyncio.sleep(0)
    finally:
        await restorer.shutdown()
    return {"records_sent": sent, "records_accepted": accepted, "restores_sent": restores}


async def honest_client(endpoint: str, stop: float) -> dict:
    node = await DHTNode.create(initial_peers=[endpoint])
    ok = tries = 0
    try:
        while time.time() < stop:
            tries += 1
            try:
                value = {"n": tries}
                stored = await node.store("honest", value, time.time() + 60)
                found = await node.get("honest", latest=True)
                ok += bool(stored and found.get(None) and found[None].value == value)
            except DHTError:
                pass
            await asyncio.sleep(1.0)
    finally:
        await node.shutdown()
    return {"honest_operations": tries, "honest_success_rate": round(ok / max(1, tries), 3)}


async def main(args: argparse.Namespace) -> dict:
    process, endpoint, victim_id = start_victim()
    try:
        await asyncio.sleep(1.0)
        baseline = rss_mb(process.pid)
        host, port, _ = parse_endpoint(endpoint)
        stop = time.time() + args.seconds
        flood, honest = await asyncio.gather(
            attack(args, (host, port), victim_id, stop), honest_client(endpoint, stop)
        )
        await asyncio.sleep(1.0)
        alive = process.poll() is None
        after = rss_mb(process.pid) if alive else float("nan")
    finally:
        process.terminate()
        process.wait(timeout=10)
    return {
        "seconds": args.seconds,
        "sources": args.sources,
        "value_size": args.value_size,
        **flood,
        **honest,
        "victim_rss_baseline_mb": round(baseline, 1),
        "victim_rss_growth_mb": round(after - baseline, 1),
        "victim_alive": alive,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sources", type=int, default=8, help="attacker loopback addresses (127.0.0.2...)")
    parser.add_argument("--value-size", type=int, default=4000)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
