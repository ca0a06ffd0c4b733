"""One hostile peer or one anonymous request against a real swarm, while an honest trainer keeps calling.

Starts, as separate processes on 127.0.0.1: a DHT node (`node-agent bootstrap`), a gated project's expert
server (set up as `node-agent join` sets one up: credential in its announcements, credential checks and
the revocation watcher on its DHT node; `adversary/victims.py server`), a portal (Daphne on a throwaway
SQLite file, or a throwaway PostgreSQL database when DATABASE_URL is set) and an honest trainer on the real
client (`ExpertCaller`, WebRTC on loopback; every call finds an expert through the DHT afresh, then runs a
forward and a backward). Then it plays each attack of issue 11 for a bounded time (`--phase-seconds`),
crafted with the project's own message, record, framing and signing code (`benchmarks/adversary/`):

  DHT: hostile contact hosts in find answers, 16 KiB-record floods from rotating source ports, one record
  re-stored thousands of times, replayed unpinned requests from another address, a forged revocation
  list read by a credential-checking node, padded long-lived withdrawals under the expert prefix key;
  data channel: malformed tensor bodies, unfinished multi-part messages, a flood of signed rtc.offer
  from fresh keys (while a credentialed newcomer trainer tries to connect);
  portal: 8,000 nested lists and a 400-digit ts on the four agent endpoints, 2^63 counters in signed
  heartbeats and metrics, a big grid's swarm API, anonymous reads of an approval-only project.

Prints one JSON object: `honest_success_rate` (honest calls that succeeded / started during the
attacks), `victim_rss_growth_mb` (DHT node and expert server: peak RSS over the run minus RSS before the
attacks, from /proc/PID/status), `portal_5xx`, `crashed_processes` (victims that died or did not answer a
real request at the end), and per attack what was sent, how the honest calls fared (and how many peers
the trainer's DHT node still knew), the victims' RSS growth and what they did with the traffic.
Targets: honest success >= 0.99, RSS growth < 100 MB, no 5xx, no crash. About 2 to 2.5 minutes.

    .venv/bin/python benchmarks/bench_adversarial.py
    .venv/bin/python benchmarks/bench_adversarial.py --phase-seconds 2 --scale 0.1   # a quick smoke run

Attacks whose damage outlasts them run last (floods that overload the nodes so that clients drop their
contacts, bans, withdrawals that live for an hour), so each earlier phase measures its own attack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [
    str(REPO / "platform"),
    str(REPO),
    str(REPO / "benchmarks"),
    str(REPO / "tests" / "platform" / "live"),
]

from adversary import dht_attacks, portal_attacks, rtc_attacks  # noqa: E402

EXPERTS = "ffn.[0:2].[0:2]"
HIDDEN_DIM = 32
VICTIMS = ("dht_node", "expert_server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB from /proc/PID/status (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class Processes:
    """The processes of one run: output to files in `workdir`, stdin kept open as their stop signal."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir, self.env = workdir, env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(
        self, name: str, command: list[str], cwd: Path = REPO, env: dict[str, str] | None = None
    ) -> None:
        self.procs[name] = subprocess.Popen(
            command,
            cwd=cwd,
            env=env or self.env,
            stdin=subprocess.PIPE,
            stdout=(self.workdir / f"{name}.out").open("wb"),
            stderr=(self.workdir / f"{name}.log").open("wb"),
        )

    def lines(self, name: str) -> list[str]:
        return (self.workdir / f"{name}.out").read_text(errors="replace").splitlines()

    def first_line(self, name: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines(name)
            if lines:
                return lines[0]
            if self.procs[name].poll() is not None:
                break
            time.sleep(0.1)
        log = (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"{name} did not start: {log}")

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def stop_all(self) -> None:
        for process in self.procs.values():
            with contextlib.suppress(OSError):
                process.stdin.close()  # type: ignore[union-attr]
            if process.poll() is None:
                process.terminate()
        for process in self.procs.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


class RSSSampler(threading.Thread):
    """Samples the victims' RSS every 0.2 s; a phase's growth is its peak minus the sample before it."""

    def __init__(self, pids: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.time(), {n: rss_mb(p) for n, p in self.pids.items()}))
            self.halt.wait(0.2)

    def now(self, name: str) -> float:
        return rss_mb(self.pids[name])

    def growth(self, name: str, start: float, end: float) -> float:
        before = [s[name] for t, s in self.samples if t <= start] or [self.now(name)]
        during = [s[name] for t, s in self.samples if start <= t <= end] or [before[-1]]
        return round(max(0.0, max(during) - before[-1]), 1)


# ---- setting up the swarm and the portal -----------------------------------------------------------


def portal_env(workdir: Path, database_url: str | None) -> dict[str, str]:
    env = dict(os.environ) | {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "VAR_DIR": str(workdir),
        "CHANNELS_PREFIX": f"bench-adv-{os.getpid()}",
        "LOG_LEVEL": "ERROR",
        "DEBUG": "0",
        "SECRET_KEY": f"bench-adv-{os.urandom(16).hex()}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "STATIC_MANIFEST": "0",
        "PORTAL_SIGNING_KEY": os.urandom(32).hex(),
        "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]),
    }
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def _postgres(url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(statement)


def start_portal(procs: Processes) -> str:
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=procs.env, check=True)
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    procs.start("portal", command, cwd=REPO / "platform")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not portal_attacks.healthy(base):
        if time.monotonic() > deadline or not procs.alive("portal"):
            raise SystemExit("the portal did not start")
        time.sleep(0.3)
    return base


def start_swarm(procs: Processes, args: argparse.Namespace) -> dict[str, Any]:
    """Bootstrap node, gated expert server (credential issued by a portal key of this run), trainer."""
    from node_agent.identity import Identity
    from node_agent.portal.tokens import issue_credential

    victim_env = procs.env | {"PYTHONPATH": str(REPO)}
    agent = [sys.executable, "-m", "node_agent"]
    procs.start("dht_node", [*agent, "bootstrap", "--ephemeral", "--listen", "127.0.0.1:0"], env=victim_env)
    bootstrap = procs.first_line("dht_node", 30)
    project = project_near(bootstrap)
    portal_key = Identity.generate()
    server_key = procs.workdir / "server.key"
    server_identity = Identity.load_or_create(server_key)
    credential = issue_credential(
        portal_key, cid="bench-server", project=project, user=1,
        node_public_key=server_identity.public_key_bytes, now=time.time(), ttl=3600,
    )  # fmt: skip
    common = {
        "bootstrap": bootstrap, "project": project, "portal_public_key": portal_key.public_key_bytes.hex(),
        "hidden_dim": HIDDEN_DIM, "revocation_period": 1.0,
    }  # fmt: skip
    server = common | {
        "identity": str(server_key), "credential": credential, "experts": EXPERTS,
        "announce_ttl": 30.0, "announce_period": 5.0,
    }  # fmt: skip
    victims = str(REPO / "benchmarks" / "adversary" / "victims.py")
    procs.start("expert_server", [sys.executable, victims, "server", json.dumps(server)], env=victim_env)
    info = json.loads(procs.first_line("expert_server", 120))
    trainer_key = procs.workdir / "trainer.key"
    trainer_credential = issue_credential(
        portal_key, cid="bench-trainer", project=project, user=2,
        node_public_key=Identity.load_or_create(trainer_key).public_key_bytes, now=time.time(), ttl=3600,
    )  # fmt: skip
    trainer = common | {
        "prefix": "ffn.", "pause": args.honest_pause,
        "identity": str(trainer_key), "credential": trainer_credential,
    }  # fmt: skip
    procs.start("trainer", [sys.executable, victims, "trainer", json.dumps(trainer)], env=victim_env)
    procs.first_line("trainer", 120)
    return {
        "bootstrap": bootstrap,
        "server": f"{info['endpoint']}/{info['node_id']}",
        "server_endpoint": info["endpoint"],
        "server_id": bytes.fromhex(info["node_id"]),
        "portal_public_key": portal_key.public_key_bytes,
        "project": project,
        "issue_credential": lambda identity: issue_credential(
            portal_key,
            cid=f"bench-{identity.node_id.hex()[:8]}",
            project=project,
            user=3,
            node_public_key=identity.public_key_bytes,
            now=time.time(),
            ttl=3600,
        ),
    }


def project_near(bootstrap: str) -> str:
    """A project name whose revocation-list key lands next to the bootstrap node's id (16 bits shared).

    With a handful of nodes, the node nearest a key holds and serves that key's record; this makes the
    non-validating bootstrap node the one every reader of the revocation list asks first (item 3).
    """
    from node_agent.dht.endpoints import parse_endpoint
    from node_agent.dht.records import key_id
    from node_agent.portal.revocations import revocations_key

    node_id = parse_endpoint(bootstrap)[2] or b""
    for n in range(1_000_000):
        if key_id(revocations_key(f"bench-adv-{n}"))[:2] == node_id[:2]:
            return f"bench-adv-{n}"
    raise SystemExit("no project name near the bootstrap node")


# ---- the attacks -----------------------------------------------------------------------------------


Phase = tuple[str, float, float, dict[str, Any]]


async def play(
    args: argparse.Namespace, swarm: dict[str, Any], targets: Any, procs: Processes
) -> list[Phase]:
    from node_agent.moe.api import ExpertHandle

    seconds, scale = args.phase_seconds, args.scale
    victims = {"dht_node": swarm["bootstrap"], "expert_server": swarm["server"]}
    handle = ExpertHandle("ffn.0.0", swarm["server_id"], swarm["server_endpoint"])
    bootstrap = swarm["bootstrap"]
    phases: list[Phase] = []

    async def phase(name: str, attack: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        started = time.time()
        try:
            result = await asyncio.wait_for(attack(), timeout=4 * seconds + 60)
        except Exception as exc:  # an attack that breaks is reported, and the run goes on
            result = {"sent": 0, "notes": {"attack_error": f"{type(exc).__name__}: {exc}"[:200]}}
        await asyncio.sleep(args.settle)
        phases.append((name, started, time.time(), result))

    def portal(
        function: Callable[..., dict[str, Any]], *extra: Any
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        return lambda: asyncio.to_thread(function, targets, *extra)

    async def offer_flood() -> dict[str, Any]:
        until = time.time() + seconds + 2
        newcomer = asyncio.create_task(
            rtc_attacks.newcomer_calls(handle, HIDDEN_DIM, until, swarm["issue_credential"])
        )
        result = await rtc_attacks.offer_flood(
            swarm["server"], seconds, round(900 * scale), rate=150 * min(1.0, 4 * scale), sockets=16
        )
        calls = await newcomer
        result["notes"]["newcomer_calls_ok"] = f"{sum(calls)}/{len(calls)}"
        result["notes"]["server_open_fds"] = open_fds(procs.procs["expert_server"].pid)
        result["honest_extra"] = calls
        return result

    await phase("quiet_baseline", lambda: asyncio.sleep(seconds, result={"sent": 0, "notes": {}}))
    await phase(
        "rtc_malformed_tensors",
        lambda: rtc_attacks.malformed_tensors(handle, HIDDEN_DIM, seconds, max_calls=400),
    )
    await phase(
        "rtc_unfinished_messages",
        lambda: rtc_attacks.unfinished_messages(handle, seconds, 64, round(2 * 2**20 * scale)),
    )
    await phase("rtc_offer_flood", offer_flood)
    await phase("portal_nested_json", portal(portal_attacks.nested_json))
    await phase("portal_huge_ts", portal(portal_attacks.huge_ts))
    await phase("portal_counter_overflow", portal(portal_attacks.counter_overflow))
    await phase("portal_anonymous_access", portal(portal_attacks.anonymous_access))
    portal_rss = lambda: rss_mb(procs.procs["portal"].pid)  # noqa: E731
    await phase("portal_huge_grid", portal(portal_attacks.huge_grid, args.grid_requests, portal_rss))
    # Last: attacks whose damage outlasts them (dead or re-mapped contacts, overload that makes clients
    # drop contacts, bans, hour-long withdrawals), so that the earlier phases each measure their own attack.
    await phase(
        "dht_replay_remap",
        lambda: dht_attacks.replay_remap(
            bootstrap, swarm["server"], swarm["server_id"], max(2, round(5 * scale))
        ),
    )
    await phase(
        "dht_restore_one_record", lambda: dht_attacks.restore_heap(victims, seconds, round(20000 * scale))
    )
    await phase(
        "dht_store_flood_rotating_ports",
        lambda: dht_attacks.store_flood(victims, 2 * seconds, round(6000 * scale), sockets=32),
    )
    await phase(
        "dht_forged_revocations",
        lambda: dht_attacks.forged_revocations(
            victims, seconds, swarm["project"], swarm["portal_public_key"], "bench-server", bootstrap
        ),
    )
    await phase("dht_bad_contact_hosts", lambda: dht_attacks.bad_contacts(victims, seconds))
    await phase(
        "dht_withdrawal_flood",
        lambda: dht_attacks.withdrawal_flood(victims, seconds, 16, round(250 * scale) or 1, "ffn."),
    )
    return phases


async def still_answering(swarm: dict[str, Any], handle_uid: str = "ffn.0.0") -> dict[str, bool]:
    """A real request to each victim at the end: a signed DHT ping, and an expert call on a new connection."""
    from node_agent.moe.api import ExpertHandle

    handle = ExpertHandle(handle_uid, swarm["server_id"], swarm["server_endpoint"])
    calls = await rtc_attacks.newcomer_calls(handle, HIDDEN_DIM, time.time() + 0.1)
    return {
        "dht_node": await dht_attacks.ping(swarm["bootstrap"]),
        "expert_server": await dht_attacks.ping(swarm["server"]) and all(calls) and bool(calls),
    }


# ---- the report ------------------------------------------------------------------------------------


def honest_calls(procs: Processes, wait: float) -> list[dict[str, Any]]:
    """The trainer's calls; one still running after `wait` seconds counts as failed."""
    deadline = time.monotonic() + wait
    while True:
        started, ended = {}, []
        for line in procs.lines("trainer"):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if "start" in record:
                    started[record["start"]] = record
                elif "t0" in record:
                    ended.append(record)
                    started.pop(record["t0"], None)
        if not started or time.monotonic() > deadline or not procs.alive("trainer"):
            break
        time.sleep(0.5)
    hung = [{"t0": t, "t1": time.time(), "ok": False, "error": "Hung: no answer by the end"} for t in started]
    return ended + hung


def report(
    args: argparse.Namespace, phases: list[Phase], calls: list[dict[str, Any]], sampler: RSSSampler,
    start_rss: dict[str, float], peak_rss: dict[str, float], answering: dict[str, bool], procs: Processes,
    database: str, began: float, portal_base: str,
) -> dict[str, Any]:  # fmt: skip
    attacks: dict[str, Any] = {}
    total = ok = portal_5xx = 0
    for name, start, end, result in phases:
        mine = [c for c in calls if start <= c["t0"] < end]
        extra = result.pop("honest_extra", [])
        honest_ok = sum(c["ok"] for c in mine) + sum(extra)
        honest_total = len(mine) + len(extra)
        statuses = result.pop("statuses", [])
        fivexx = sum(1 for s in statuses if s >= 500)
        errors = Counter(c["error"].split(":")[0] + ": " + c["error"][-60:] for c in mine if not c["ok"])
        attacks[name] = {
            "sent": result.get("sent", 0),
            "honest_ok": honest_ok,
            "honest_total": honest_total,
            "rss_growth_mb": {v: sampler.growth(v, start, end) for v in VICTIMS},
            **({"statuses": statuses, "portal_5xx": fivexx} if statuses else {}),
            "notes": result.get("notes", {}),
            **({"honest_errors": dict(errors.most_common(3))} if errors else {}),
            # peers the trainer's DHT node knew during the phase (0: it can find nothing any more)
            "trainer_dht_contacts": sorted({c["contacts"] for c in mine if c.get("contacts") is not None}),
        }
        portal_5xx += fivexx
        if name != "quiet_baseline":
            total, ok = total + honest_total, ok + honest_ok
    growth = {v: round(max(0.0, peak_rss[v] - start_rss[v]), 1) for v in VICTIMS}
    portal_healthy = procs.alive("portal") and portal_attacks.healthy(portal_base)
    alive = {v: procs.alive(v) and answering.get(v, False) for v in VICTIMS} | {"portal": portal_healthy}
    crashed = sorted(v for v, up in alive.items() if not up)
    rate = round(ok / total, 4) if total else None
    return {
        "honest_success_rate": rate,
        "victim_rss_growth_mb": max(growth.values()),
        "portal_5xx": portal_5xx,
        "crashed_processes": len(crashed),
        "targets_met": {
            "honest_success_rate>=0.99": rate is not None and rate >= 0.99,
            "victim_rss_growth_mb<100": max(growth.values()) < 100,
            "portal_5xx==0": portal_5xx == 0,
            "crashed_processes==0": not crashed,
        },
        "crashed": crashed,
        "honest_calls": {"ok": ok, "total": total},
        "rss_growth_mb": growth,
        "rss_before_attacks_mb": {v: round(start_rss[v], 1) for v in VICTIMS},
        "trainer_alive": procs.alive("trainer"),
        "attacks": attacks,
        "phase_seconds": args.phase_seconds,
        "scale": args.scale,
        "database": database,
        "duration_s": round(time.time() - began, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=6.0, help="how long each attack plays")
    parser.add_argument(
        "--settle", type=float, default=1.5, help="seconds after each attack still counted to it"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the attacks' record/offer/byte counts"
    )
    parser.add_argument("--grid", default="1024x1024", help="the big grid whose swarm API is fetched")
    parser.add_argument("--grid-requests", type=int, default=2)
    parser.add_argument("--honest-pause", type=float, default=0.1, help="seconds between honest calls")
    args = parser.parse_args()

    began = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-adversarial-"))
    server_url = os.environ.get("DATABASE_URL")
    database_url, database = None, "sqlite (throwaway)"
    admin_url = server_url.rsplit("/", 1)[0] + "/postgres" if server_url else ""  # the server's own database
    if server_url:
        name = f"bench_adv_{os.getpid()}"
        _postgres(admin_url, f"CREATE DATABASE {name}")
        database_url, database = server_url.rsplit("/", 1)[0] + f"/{name}", "postgresql (throwaway)"
    procs = Processes(workdir, portal_env(workdir, database_url))
    try:
        base = start_portal(procs)
        os.environ.update(procs.env)
        import django

        django.setup()
        targets = portal_attacks.setup(base, args.grid)
        from django.db import connections

        connections.close_all()
        swarm = start_swarm(procs, args)
        pids = {name: procs.procs[name].pid for name in VICTIMS}
        sampler = RSSSampler(pids)
        time.sleep(2.0)  # the trainer's first calls connect and warm up
        start_rss = {v: rss_mb(pid) for v, pid in pids.items()}
        start_hwm = {v: rss_mb(pid, "VmHWM") for v, pid in pids.items()}
        sampler.start()
        phases = asyncio.run(play(args, swarm, targets, procs))
        calls = honest_calls(procs, wait=30.0)  # the last call of the attacks may still be running
        answering = asyncio.run(still_answering(swarm))
        sampler.halt.set()
        sampled = {v: max([s[v] for _, s in sampler.samples] or [0.0]) for v in VICTIMS}
        # the kernel's peak counts only if it rose during the run (not a start-up transient)
        hwm = {v: rss_mb(pid, "VmHWM") for v, pid in pids.items()}
        peak_rss = {v: max(sampled[v], hwm[v] if hwm[v] > start_hwm[v] else 0.0) for v in VICTIMS}
        result = report(args, phases, calls, sampler, start_rss, peak_rss, answering, procs,
                        database, began, targets.base)  # fmt: skip
    finally:
        procs.stop_all()
        if database_url:
            from django.db import connections

            connections.close_all()
            _postgres(admin_url, f"DROP DATABASE IF EXISTS {database_url.rsplit('/', 1)[1]} WITH (FORCE)")
    result["logs"] = str(workdir)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
