"""End to end: a few training steps on a local swarm through the portal flow earn exactly the FLOPs the
server's modules ran (counted by torch), no more.

Both nodes join with join codes; the trainer's heartbeat reports its progress; the expert server (real DHT,
real WebRTC on 127.0.0.1) answers a credentialed trainer, keeps the receipts it hands back and uploads them in
its signed heartbeat.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from django.utils import timezone
from torch.utils.flop_counter import FlopCounterMode

from credit.models import NodeCredit, WorkReceipt
from node_agent.credit.receipts import receipt_to_text
from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.moe.client import ExpertCaller, RemoteExpert, get_experts
from node_agent.moe.server.backend import OptimizerConfig, create_backends
from node_agent.moe.server.server import ExpertServer, ServerOptions
from node_agent.rtc.config import RTCOptions
from projects.models import Project
from swarm import services as swarm_services
from tests.platform.conftest import make_user

pytestmark = pytest.mark.django_db
STEPS, BATCH = 3, 8


def _module_flops(module: torch.nn.Module, hidden: int) -> tuple[float, float]:
    """Torch-counted FLOPs of one sample's forward and backward through `module`."""
    x = torch.randn(4, hidden, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        y = module(x)
    with FlopCounterMode(display=False) as backward:
        y.backward(torch.ones_like(y))
    module.zero_grad()
    return forward.get_total_flops() / 4, backward.get_total_flops() / 4


async def _swarm(server_key: Identity, trainer_key: Identity, token: str, hidden: int) -> dict[str, Any]:
    rtc = RTCOptions.for_loopback(connect_timeout=10.0)
    bootstrap = await DHTNode.create(listen="127.0.0.1:0")
    dht = await DHTNode.create(initial_peers=[bootstrap.endpoint], listen="127.0.0.1:0", identity=server_key)
    uids = ["ffn.0.0", "ffn.0.1"]
    backends = create_backends(uids, "ffn", hidden, OptimizerConfig(name="sgd", lr=0.01, clip_grad_norm=None))
    ran = {"forward": 0, "backward": 0}
    for backend in backends.values():
        backend.module.register_forward_pre_hook(
            lambda _m, args: ran.__setitem__("forward", ran["forward"] + len(args[0]))
        )
        backend.module.register_full_backward_pre_hook(
            lambda _m, grads: ran.__setitem__("backward", ran["backward"] + len(grads[0]))
        )
    server = await ExpertServer.create(dht, backends, ServerOptions(stats_period=3600.0), rtc)
    caller = await asyncio.to_thread(
        ExpertCaller.start_caller, [bootstrap.endpoint], rtc_options=rtc, identity=trainer_key,
        credential=token, receipt_period=3600.0, compression="none",
    )  # fmt: skip
    try:
        handles = await asyncio.wrap_future(caller.run(get_experts(caller.dht, uids)))
        experts = [RemoteExpert(h.uid, h, caller, timeout=20) for h in handles if h is not None]

        def train() -> None:
            for _ in range(STEPS):
                x = torch.randn(BATCH, hidden, requires_grad=True)
                sum(e(x).pow(2).mean() for e in experts).backward()

        await asyncio.to_thread(train)
        await asyncio.to_thread(caller.stop)
        await server.settle()
        counted = dict(ran)  # before pricing below runs the module once more
        flops = _module_flops(next(iter(backends.values())).module, hidden)
        return {"receipts": server.receipts.peek(100), "ran": counted, "flops": flops}
    finally:
        await asyncio.to_thread(caller.stop)
        await server.shutdown()
        await dht.shutdown()
        await bootstrap.shutdown()


def test_local_swarm_run_earns_the_flops_it_ran(
    signed_post: Any, make_heartbeat: Any, joined: dict[str, Any], node_key: Identity, project: Project
) -> None:
    trainer_user = make_user("trainer@example.com")
    trainer_key = Identity.generate()
    code = swarm_services.join_code_create(project=project, user=trainer_user, now=timezone.now())[1]
    join = signed_post(
        "/api/v1/agent/join", trainer_key, {"code": code, "agent_version": "0.1.0", "platform": "Linux"}
    )
    assert join.status_code == 201, join.content
    token = join.json()["credential"]
    progress = make_heartbeat(trainer_key, token, role="trainer", experts=[], samples=STEPS * BATCH, peers=[])
    assert signed_post("/api/v1/agent/heartbeat", trainer_key, progress).status_code == 202

    run = asyncio.run(_swarm(node_key, trainer_key, token, project.hidden_size))
    body = make_heartbeat(
        node_key, joined["credential"], receipts=[receipt_to_text(r) for r in run["receipts"]]
    )
    assert signed_post("/api/v1/agent/heartbeat", node_key, body).status_code == 202

    forward_flops, backward_flops = run["flops"]
    ran = run["ran"]
    assert ran == {"forward": 2 * STEPS * BATCH, "backward": 2 * STEPS * BATCH}
    computed = ran["forward"] * forward_flops + ran["backward"] * backward_flops
    credit = NodeCredit.objects.get(node__public_key=node_key.public_key_bytes.hex()).total
    assert credit == pytest.approx(computed, rel=1e-9)
    assert sum(r.forward + r.backward for r in WorkReceipt.objects.all()) == 4 * STEPS * BATCH
