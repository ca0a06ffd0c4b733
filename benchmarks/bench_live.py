"""Live swarm channel under load: many browsers watching one project while its nodes heartbeat.

The portal runs as deployed: DEBUG off, PostgreSQL (a throwaway database; `--database sqlite` for the
zero-setup default), the Redis channel layer, Daphne on uvloop (`python -m live.serve`; `--loop asyncio`
for plain Daphne), with a pool of PostgreSQL connections in each portal process (`--db-pool`, 8; 0 for
a new connection per request, what Daphne's thread-per-request does without one). By default
heartbeats go to a second Daphne process (`--ingest separate`: the API and the WebSocket viewers in
separate portal processes, as a deployment would run them), viewers to the first. `--nodes`
simulated nodes join through the real join API and POST real signed heartbeats over HTTP every
`--period` seconds (spread evenly, from a thread pool in a separate process).
`--viewers` WebSocket clients (the `websockets` package on uvloop, split over `--viewer-procs`
processes) watch the project's live channel; they note the receipt time first and decode only the
fields they need (msgspec), so their own parsing stays out of the latency they report.

Delivery latency is measured per node update, from its `at` (the time the portal's heartbeat view
started, before its database write) to a viewer's receipt, on one machine's clock. It is split at the
hub's flush (`server_time` in each message): ingest to flush (database write, commit, channel layer,
coalescing wait of up to 250 ms) and flush to receipt (fan-out, sockets, client). The CPU time of each
portal process during the measurement is reported too (per second, and per viewer message for the
viewers' process): on a shared machine it moves far less than latencies do. A viewer that is refused or
dropped (any close code, 4503 "busy" included) counts as dropped. Prints one JSON object.

    .venv/bin/python benchmarks/bench_live.py            # 500 viewers, 200 nodes, 40 s
    .venv/bin/python benchmarks/bench_live.py --viewers 50 --nodes 20 --duration 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "platform"), str(REPO), str(REPO / "tests" / "platform" / "live")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---- viewers (run in child processes) ------------------------------------------------------------------


class _Diff(msgspec.Struct):
    """The two fields of a diff the benchmark reads; msgspec skips the rest in C."""

    type: str = ""
    at: float = 0.0


class _Message(msgspec.Struct):
    type: str
    seq: int
    at: float = 0.0
    server_time: float = 0.0
    diffs: list[_Diff] = []


_decode = msgspec.json.Decoder(_Message).decode


async def _viewer(url: str, measure_from: float, stop_at: float, stats: dict) -> None:
    """One browser: reads every message as it comes; only those after `measure_from` are counted.

    The receipt time is read before anything else is done with a message, and messages are decoded by
    msgspec into the few fields needed, so the clients' own parsing adds as little as possible to the
    latency they measure (two client processes decode 2,000 messages a second on a shared 2-core box).
    """
    import websockets

    try:
        async with websockets.connect(
            url, origin="http://127.0.0.1", open_timeout=60, max_size=2**24, compression=None
        ) as ws:
            snapshot = _decode(await asyncio.wait_for(ws.recv(decode=False), 60))
            assert snapshot.type == "swarm.snapshot"
            stats["connected"] += 1
            seq = snapshot.seq
            try:
                async with asyncio.timeout(max(0.0, stop_at - time.time())):
                    while True:
                        raw = await ws.recv(decode=False)
                        now = time.time()
                        message = _decode(raw)
                        if message.seq != seq + 1:
                            stats["gaps"] += 1
                        seq = message.seq
                        if now < measure_from:
                            continue
                        stats["messages"] += 1
                        stats["receipt"].append((now - message.server_time) * 1000)
                        diffs = message.diffs if message.type == "swarm.batch" else [message]
                        for diff in diffs:
                            if (diff.type or message.type) == "node.upsert":
                                stats["latencies"].append((now - diff.at) * 1000)
                                stats["to_flush"].append((message.server_time - diff.at) * 1000)
            except TimeoutError:
                pass
    except Exception as exc:  # a viewer that fails is a dropped viewer: count it, say why
        stats["dropped"] += 1
        stats["errors"].append(repr(exc)[:200])


def run_viewers(url: str, count: int, measure_from: float, stop_at: float, out: mp.Queue) -> None:
    async def main() -> dict:
        stats = {
            "messages": 0,
            "gaps": 0,
            "dropped": 0,
            "connected": 0,
            "latencies": [],
            "to_flush": [],
            "receipt": [],
            "errors": [],
        }
        tasks = []
        # Connect gradually over the warm-up, as browsers opening a page would (not all in one instant).
        interval = max(0.02, (measure_from - time.time() - 5) / max(1, count))
        for _ in range(count):
            tasks.append(asyncio.create_task(_viewer(url, measure_from, stop_at, stats)))
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)
        return stats

    try:
        import uvloop

        out.put(uvloop.run(main()))
    except ImportError:
        out.put(asyncio.run(main()))


# ---- nodes (run in a child process) ---------------------------------------------------------------------


def run_nodes(base_url: str, codes: list[str], period: float, stop_at: float, out: mp.Queue) -> None:
    from live_agents import SimulatedNode, http_poster

    post = http_poster(base_url, timeout=30)
    with ThreadPoolExecutor(max_workers=8) as pool:
        nodes = list(pool.map(lambda code: SimulatedNode(post=post).join(code), codes))
        sent, failed, slow = 0, 0, []

        def beat(node: SimulatedNode) -> float:
            started = time.monotonic()
            node.heartbeat(experts=["ffn.0.0"], samples_per_s=100.0)
            return time.monotonic() - started

        start = time.monotonic()
        futures = []
        i = 0
        while time.time() < stop_at:
            due = start + i * period / len(nodes)
            time.sleep(max(0.0, due - time.monotonic()))
            futures.append(pool.submit(beat, nodes[i % len(nodes)]))
            i += 1
        for future in futures:
            try:
                slow.append(future.result())
                sent += 1
            except Exception:
                failed += 1
    out.put(
        {
            "heartbeats_sent": sent,
            "heartbeats_failed": failed,
            "heartbeat_post_p50_ms": percentile(slow, 50) * 1000 if slow else None,
        }
    )


# ---- orchestration -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU seconds a portal process spends during the measurement window: a figure that, unlike
    latencies, hardly depends on what else the (shared) machine is doing."""

    def __init__(self, pid: int, start_at: float, stop_at: float) -> None:
        self.used: float | None = None
        self._thread = threading.Thread(target=self._run, args=(pid, start_at, stop_at), daemon=True)
        self._thread.start()

    def _run(self, pid: int, start_at: float, stop_at: float) -> None:
        try:
            time.sleep(max(0.0, start_at - time.time()))
            before = cpu_seconds(pid)
            time.sleep(max(0.0, stop_at - time.time()))
            self.used = cpu_seconds(pid) - before
        except (OSError, ValueError, IndexError):
            self.used = None


def collect(out: mp.Queue, procs: list, *, deadline: float) -> list[dict]:
    """One result per child; a child that died without one ends the run at once with its exit code."""
    import queue

    results: list[dict] = []
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead or time.time() > deadline:
            for proc in procs:
                proc.terminate()
            raise SystemExit(f"benchmark children failed: {[(p.name, p.exitcode) for p in dead]}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=500)
    parser.add_argument("--viewer-procs", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--period", type=float, default=5.0, help="seconds between one node's heartbeats")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of measurement")
    parser.add_argument(
        "--ingest",
        choices=["separate", "same"],
        default="separate",
        help="heartbeats to a second Daphne process (as a deployment with two portal processes) or the same",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="Daphne on uvloop (python -m live.serve, as deployed) or on the default asyncio loop",
    )
    parser.add_argument(
        "--database",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="a throwaway PostgreSQL database (as deployed) or a throwaway SQLite file",
    )
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--viewer-db-conn-max-age",
        type=int,
        default=60,
        help="DB_CONN_MAX_AGE of the WebSocket process (its consumers share one database thread)",
    )
    parser.add_argument(
        "--db-pool",
        type=int,
        default=8,
        help="DB_POOL_MAX_SIZE of both portal processes (a psycopg pool; 0: a new connection per request)",
    )
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-live-"))
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)  # SQLite in workdir unless PostgreSQL: a throwaway database either way
    database = None
    if args.database == "postgres":
        database = f"bench_live_{os.getpid()}"
        _postgres(args.postgres, f"CREATE DATABASE {database}")
        env["DATABASE_URL"] = args.postgres.rsplit("/", 1)[0] + f"/{database}"
    try:
        _run(args, env, workdir)
    finally:
        if database is not None:
            from django.db import connections

            connections.close_all()
            _postgres(args.postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _postgres(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(statement)


def _run(args: argparse.Namespace, env: dict[str, str], workdir: Path) -> None:
    env |= {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(workdir),
        "REDIS_URL": args.redis,
        "CHANNELS_PREFIX": f"bench-live-{os.getpid()}",
        "SWARM_HEARTBEAT_INTERVAL_S": str(int(args.period)),
        "LOG_LEVEL": "WARNING",
        "DB_CONN_MAX_AGE": "0",  # Daphne runs each HTTP request in a thread of its own: no reuse there
        # As deployed: DEBUG off (no query log, no debug cursor wrappers), TLS left to a proxy.
        "DEBUG": os.environ.get("BENCH_DEBUG", "0"),
        "SECRET_KEY": f"bench-live-{os.urandom(16).hex()}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "STATIC_MANIFEST": "0",
        "PORTAL_SIGNING_KEY": os.urandom(32).hex(),
        "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]),
    }
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True)

    import django

    django.setup()
    from django.utils import timezone

    from accounts.models import Role, User
    from projects import services as project_services
    from swarm import services as swarm_services

    owner = User.objects.create_user(
        "bench-owner@example.org", "x" * 12, display_name="Owner", role=Role.RESEARCHER
    )
    project = project_services.project_create(
        owner=owner, launch=True, title="Bench", slug="bench", description="", expert_architecture="ffn",
        hidden_size=16, grid_shape="16x16", optimizer="adam", learning_rate=0.001, dataset="digits",
        join_policy="open",
    )  # fmt: skip
    volunteers = [
        User.objects.create_user(f"v{i}@example.org", "x" * 12, display_name=f"V{i}") for i in range(10)
    ]
    codes = [
        swarm_services.join_code_create(project=project, user=volunteers[i % 10], now=timezone.now())[1]
        for i in range(args.nodes)
    ]
    from django.db import connections

    connections.close_all()

    daphne_log = (workdir / "daphne.log").open("wb")
    servers = []
    for _ in range(1 if args.ingest == "same" else 2):
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "live.serve" if args.loop == "uvloop" else "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "config.asgi:application",
        ]
        # The first process serves the viewers; with --ingest separate it serves nothing else.
        conn_max_age = args.viewer_db_conn_max_age if not servers and args.ingest == "separate" else 0
        process = subprocess.Popen(
            command,
            cwd=REPO / "platform",
            env=env | {"DB_CONN_MAX_AGE": str(conn_max_age), "DB_POOL_MAX_SIZE": str(args.db_pool)},
            stdout=daphne_log,
            stderr=subprocess.STDOUT,
        )
        servers.append((process, port, f"http://127.0.0.1:{port}"))
    (_, port, _), (_, _, ingest_base) = servers[0], servers[-1]
    try:
        for _, _, url in servers:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/healthz", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        ctx = mp.get_context("spawn")
        out: mp.Queue = ctx.Queue()
        connect_by = time.time() + 15 + args.viewers / 15  # warm-up: joins, then viewers ramp in
        stop_at = connect_by + args.duration
        per = [
            args.viewers // args.viewer_procs + (i < args.viewers % args.viewer_procs)
            for i in range(args.viewer_procs)
        ]
        ws_url = f"ws://127.0.0.1:{port}/ws/live/projects/{project.slug}/"
        procs = [ctx.Process(target=run_viewers, args=(ws_url, n, connect_by, stop_at, out)) for n in per]
        procs.append(ctx.Process(target=run_nodes, args=(ingest_base, codes, args.period, stop_at, out)))
        for proc in procs:
            proc.start()
        viewer_cpu = CpuWindow(servers[0][0].pid, connect_by, stop_at)
        ingest_cpu = CpuWindow(servers[-1][0].pid, connect_by, stop_at) if len(servers) > 1 else None
        results = collect(out, procs, deadline=stop_at + 300)
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for process, _, _ in servers:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        daphne_log.close()

    viewer_stats = [r for r in results if "latencies" in r]
    node_stats = next(r for r in results if "heartbeats_sent" in r)
    latencies = [x for r in viewer_stats for x in r["latencies"]]
    to_flush = [x for r in viewer_stats for x in r["to_flush"]]
    receipt = [x for r in viewer_stats for x in r["receipt"]]

    def ms(values: list[float], q: float) -> float | None:
        return round(percentile(values, q), 1) if values else None

    messages = sum(r["messages"] for r in viewer_stats)
    connected = sum(r["connected"] for r in viewer_stats)
    print(
        json.dumps(
            {
                "viewers": args.viewers,
                "viewers_connected": connected,
                "nodes": args.nodes,
                "heartbeat_period_s": args.period,
                "duration_s": args.duration,
                "delivery_latency_p50_ms": ms(latencies, 50),
                "delivery_latency_p99_ms": ms(latencies, 99),
                # The two legs: heartbeat ingest to the hub's flush (database write, channel layer,
                # coalescing wait), and the flush to a viewer's receipt (fan-out, sockets, client).
                "ingest_to_flush_p50_ms": ms(to_flush, 50),
                "ingest_to_flush_p99_ms": ms(to_flush, 99),
                "flush_to_receipt_p50_ms": ms(receipt, 50),
                "flush_to_receipt_p99_ms": ms(receipt, 99),
                "delivery_latency_max_ms": round(max(latencies), 1) if latencies else None,
                "node_updates_delivered": len(latencies),
                "messages_per_viewer_per_s": round(messages / max(1, connected) / args.duration, 2),
                "seq_gaps": sum(r["gaps"] for r in viewer_stats),
                "dropped_viewers": sum(r["dropped"] for r in viewer_stats)
                + (args.viewers - connected - sum(r["dropped"] for r in viewer_stats)),
                "viewer_errors": sorted({e for r in viewer_stats for e in r["errors"]})[:5],
                **node_stats,
                "heartbeats_via": f"signed HTTP POST /api/v1/agent/heartbeat, {args.ingest} Daphne",
                "event_loop": args.loop,
                "channel_layer": "channels_redis",
                "database": f"{args.database} (throwaway)",
                "db_pool_max_size": args.db_pool if args.database == "postgres" else None,
                "db_conn_max_age_s": {  # a pool replaces persistent connections (config/settings.py)
                    "viewer_process": args.viewer_db_conn_max_age
                    if args.ingest == "separate" and not (args.db_pool and args.database == "postgres")
                    else 0,
                    "ingest_process": 0,
                },
                "mean_latency_ms": round(statistics.fmean(latencies), 1) if latencies else None,
                # CPU of the portal process serving the viewers, during the measurement: per second
                # (1.0 = one core busy) and per message sent to a viewer.
                "viewer_process_cpu_per_s": round(viewer_cpu.used / args.duration, 3)
                if viewer_cpu.used is not None
                else None,
                "viewer_process_cpu_us_per_message": round(viewer_cpu.used / messages * 1e6, 1)
                if viewer_cpu.used is not None and messages
                else None,
                "ingest_process_cpu_per_s": round(ingest_cpu.used / args.duration, 3)
                if ingest_cpu is not None and ingest_cpu.used is not None
                else None,
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
