"""Credit for verified work: receipts verified per second at the portal, heartbeat bytes, credit accuracy.

Three measurements, one JSON object:

* `verify`: receipts verified and credited per second by `credit.services.receipts_record` on PostgreSQL
  (wall clock, and per CPU second of the portal process, with the machine's load average beside them: on a
  shared machine the wall rate varies), in a throwaway database on the server of `--database-url`, in
  heartbeat-sized batches (64), each in its own transaction with the server row locked, as the heartbeat
  endpoint does; signatures, credentials, replay, limits and the inserts included.
* `swarm`: a local swarm on 127.0.0.1 (a DHT bootstrap node, an expert server of `ffn` experts over real
  WebRTC, a credentialed trainer doing `--steps` forward/backward steps through 4 experts). The server's
  modules count the samples they really ran (forward and backward, recomputations included); torch's
  FLOP counter prices them (the computed FLOPs). The receipts the server kept are credited by the portal;
  the relative error compares the two. The heartbeat bytes are the receipts' share of the JSON heartbeat,
  per minute of a server's work for one trainer.

    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/colearn python benchmarks/bench_credit.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DB = "colearn_bench_credit"
HIDDEN = 64


def _setup_django(database_url: str) -> None:
    import subprocess

    import psycopg

    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database_url.rsplit("/", 1)[0] + "/" + BENCH_DB,
        "LOG_LEVEL": "ERROR",
        "DEBUG": "0",
        "SECRET_KEY": os.urandom(16).hex(),
        "ALLOWED_HOSTS": "testserver",
        "SECURE_SSL_REDIRECT": "0",
        "STATIC_MANIFEST": "0",
        "PORTAL_SIGNING_KEY": os.urandom(32).hex(),
        "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)]),
    }
    os.environ.update(env)
    sys.path[:0] = [str(REPO / "platform"), str(REPO)]
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=dict(os.environ), check=True
    )
    import django

    django.setup()


def _drop_database(database_url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")


def _world() -> dict[str, Any]:
    """A project (ffn, hidden HIDDEN), a server node of one volunteer, trainers of others, credentials."""
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import Role, User
    from projects.models import Project
    from swarm.models import IssuedCredential, Node

    def user(name: str, role: str = Role.VOLUNTEER) -> User:
        return User.objects.create_user(f"{name}@bench.local", "x" * 20, display_name=name, role=role)

    owner = user("owner", Role.RESEARCHER)
    project = Project.objects.create(
        owner=owner, title="credit", slug="credit", hidden_size=HIDDEN, grid_shape="4x4", status="active"
    )
    now = timezone.now()

    def node(identity: Any, who: User, role: str, cid: str) -> Node:
        row = Node.objects.create(
            project=project, user=who, public_key=identity.public_key_bytes.hex(),
            node_id=identity.node_id.hex(), role=role,
        )  # fmt: skip
        IssuedCredential.objects.create(
            cid=cid, node=row, issued_at=now - timedelta(days=2), expires_at=now + timedelta(days=1)
        )
        return row

    return {"project": project, "user": user, "node": node}


def _record(server_node: Any, texts: list[str]) -> Any:
    from django.db import transaction
    from django.utils import timezone

    from credit import services
    from swarm.models import Node

    with transaction.atomic():
        locked = Node.objects.select_for_update().select_related("project").get(pk=server_node.pk)
        return services.receipts_record(server=locked, texts=texts, now=timezone.now())


def bench_verify(world: dict[str, Any], count: int, trainers: int) -> dict[str, Any]:
    from credit import services
    from node_agent.credit.receipts import Receipt, encode_receipt, receipt_to_text, sign_receipt
    from node_agent.identity import Identity

    server_id = Identity.generate()
    server = world["node"](server_id, world["user"]("server-volunteer"), "server", "c-server")
    parties = []
    for index in range(trainers):
        identity = Identity.generate()
        row = world["node"](identity, world["user"](f"trainer{index}"), "trainer", f"c-t{index}")
        services.progress_record(node=row, heartbeat_samples=10**9)
        parties.append((identity, f"c-t{index}"))
    minute_now = int(time.time() // 60) - 1
    texts = []
    for index in range(count):
        identity, cid = parties[index % trainers]
        draft = Receipt(
            cid=cid, trainer_key=identity.public_key_bytes, server=server_id.node_id,
            minute=minute_now - index // trainers, uids=("ffn.0.0", "ffn.0.1"), forward=256, backward=256,
            answers=8, first_nonce=os.urandom(16), last_nonce=os.urandom(16), chain=os.urandom(32),
        )  # fmt: skip
        texts.append(receipt_to_text(encode_receipt(sign_receipt(identity, draft))))
    started, cpu_started = time.perf_counter(), time.process_time()
    accepted = 0
    for start in range(0, count, 64):
        accepted += _record(server, texts[start : start + 64]).accepted
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    replay_started = time.perf_counter()
    replayed = sum(_record(server, texts[start : start + 64]).accepted for start in range(0, count, 64))
    replay_elapsed = time.perf_counter() - replay_started
    return {
        "receipts": count,
        "trainers": trainers,
        "accepted": accepted,
        "receipts_per_s": round(count / elapsed, 1),
        # the portal process's own CPU (PostgreSQL's is not in it): what a less loaded machine approaches
        "receipts_per_portal_cpu_s": round(count / cpu, 1),
        "load_average_1min": os.getloadavg()[0],
        "replays_accepted": replayed,
        "replays_refused_per_s": round(count / replay_elapsed, 1),
    }


class _Counted:
    """Counts the samples a server module really ran: forward calls, and backward when gradients flow."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def wrap(self, module: Any) -> None:
        counter = self

        def pre_hook(_module: Any, args: tuple[Any, ...]) -> None:
            counter.forward += int(args[0].shape[0])

        def hook(_module: Any, args: tuple[Any, ...], output: Any) -> None:
            if output.requires_grad:
                batch = int(output.shape[0])

                def grad_hook(grad: Any) -> None:
                    counter.backward += batch

                output.register_hook(grad_hook)

        module.register_forward_pre_hook(pre_hook)
        module.register_forward_hook(hook)


def _torch_flops_per_sample(expert_class: str) -> tuple[float, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from node_agent.moe.experts import get_expert_class

    spec = get_expert_class(expert_class)
    module = spec.build(HIDDEN)
    (x,) = spec.sample_input(16, HIDDEN)
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as forward:
        y = module(x)
    with FlopCounterMode(display=False) as backward:
        y.backward(torch.randn_like(y))
    return forward.get_total_flops() / 16, backward.get_total_flops() / 16


async def _swarm_run(steps: int, batch: int, credential: str, trainer_identity: Any) -> dict[str, Any]:
    import torch

    from node_agent.dht import DHTNode
    from node_agent.moe.client import ExpertCaller, RemoteExpert, get_experts
    from node_agent.moe.server.backend import OptimizerConfig, create_backends
    from node_agent.moe.server.server import ExpertServer, ServerOptions
    from node_agent.rtc.config import RTCOptions

    rtc = RTCOptions.for_loopback(connect_timeout=10.0)
    bootstrap = await DHTNode.create(listen="127.0.0.1:0")
    server_dht = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0")
    uids = [f"ffn.0.{i}" for i in range(4)]
    backends = create_backends(uids, "ffn", HIDDEN, OptimizerConfig(name="sgd", lr=0.01, clip_grad_norm=None))
    counted = _Counted()
    for backend in backends.values():
        counted.wrap(backend.module)
    server = await ExpertServer.create(server_dht, backends, ServerOptions(stats_period=3600.0), rtc)
    caller = await asyncio.to_thread(
        ExpertCaller.start_caller, [bootstrap.endpoint], rtc_options=rtc, identity=trainer_identity,
        credential=credential, receipt_period=3600.0,
    )  # fmt: skip
    try:
        handles = await asyncio.wrap_future(caller.run(get_experts(caller.dht, uids)))
        experts = [RemoteExpert(h.uid, h, caller, timeout=20) for h in handles if h is not None]

        def train() -> None:
            for _ in range(steps):
                x = torch.randn(batch, HIDDEN, requires_grad=True)
                loss = sum(expert(x).pow(2).mean() for expert in experts)
                loss.backward()

        started = time.perf_counter()
        await asyncio.to_thread(train)
        seconds = time.perf_counter() - started
        await asyncio.to_thread(caller.stop)  # hands back the receipts
        await server.settle()
        receipts = server.receipts.peek(10_000)
        return {
            "server": server_dht.identity,
            "receipts": receipts,
            "forward_samples": counted.forward,
            "backward_samples": counted.backward,
            "seconds": seconds,
            "unsigned_answers": caller.unsigned_answers,
        }
    finally:
        await asyncio.to_thread(caller.stop)
        await server.shutdown()
        await server_dht.shutdown()
        await bootstrap.shutdown()


def bench_swarm(world: dict[str, Any], steps: int, batch: int) -> dict[str, Any]:
    from credit import services
    from credit.models import NodeCredit
    from node_agent.credit.receipts import decode_receipt, receipt_to_text
    from node_agent.identity import Identity
    from node_agent.portal.tokens import issue_credential
    from swarm.keys import portal_identity

    trainer_identity = Identity.generate()
    trainer = world["node"](trainer_identity, world["user"]("swarm-trainer"), "trainer", "c-swarm-trainer")
    services.progress_record(node=trainer, heartbeat_samples=steps * batch)
    token = issue_credential(
        portal_identity(), cid="c-swarm-trainer", project="credit", user=trainer.user_id,
        node_public_key=trainer_identity.public_key_bytes, now=time.time(), ttl=3600,
    )  # fmt: skip
    run = asyncio.run(_swarm_run(steps, batch, token, trainer_identity))
    server = world["node"](run["server"], world["user"]("swarm-server"), "server", "c-swarm-server")
    texts = [receipt_to_text(data) for data in run["receipts"]]
    outcome = _record(server, texts)
    credited = NodeCredit.objects.get(node=server).total if outcome.accepted else 0.0
    forward_flops, backward_flops = _torch_flops_per_sample("ffn")
    computed = run["forward_samples"] * forward_flops + run["backward_samples"] * backward_flops
    decoded = [decode_receipt(data) for data in run["receipts"]]
    minutes = max(1, len({r.minute for r in decoded}))
    receipt_bytes = len(json.dumps(texts, separators=(",", ":")))
    return {
        "steps": steps,
        "batch": batch,
        "experts": 4,
        "seconds": round(run["seconds"], 2),
        "receipts": len(texts),
        "receipted_forward_samples": sum(r.forward for r in decoded),
        "receipted_backward_samples": sum(r.backward for r in decoded),
        "server_forward_samples": run["forward_samples"],
        "server_backward_samples": run["backward_samples"],
        "unsigned_answers": run["unsigned_answers"],
        "credited_flops": credited,
        "computed_flops": computed,
        "credit_relative_error": abs(credited - computed) / computed if computed else None,
        "heartbeat_receipt_bytes": receipt_bytes,
        "heartbeat_bytes_per_server_minute_per_trainer": round(receipt_bytes / minutes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--receipts", type=int, default=5120)
    parser.add_argument("--trainers", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        parser.error("--database-url (or DATABASE_URL) must name a PostgreSQL server")
    _setup_django(args.database_url)
    try:
        world = _world()
        result = {
            "benchmark": "credit",
            "verify": bench_verify(world, args.receipts, args.trainers),
            "swarm": bench_swarm(world, args.steps, args.batch),
        }
    finally:
        _drop_database(args.database_url)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
