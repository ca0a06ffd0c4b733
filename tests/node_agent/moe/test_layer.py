"""RemoteMixtureOfExperts over real expert servers: matches the local computation, masks what fails.

Fixtures (`bootstrap_node`, `make_expert_server`, `make_caller`) come from this folder's conftest: real UDP
DHT nodes, real aiortc connections on 127.0.0.1, real batching servers. The layer is synchronous PyTorch
code, so it runs in a worker thread while the servers run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import pytest
import torch
from torch import nn

from node_agent.dht import DHTNode
from node_agent.moe.announce import announce_experts, register_experts_validator
from node_agent.moe.experts import get_expert_class
from node_agent.moe.layer import LocalMixtureOfExperts, RemoteMixtureOfExperts, TooFewExpertsError
from node_agent.moe.reliability import ReliabilityTracker
from node_agent.moe.server.backend import ExpertBackend, OptimizerConfig
from node_agent.moe.uids import expand_pattern
from tests.processes import wait_until_async

HIDDEN = 16


def make_backends(pattern: str, seed: int) -> dict[str, ExpertBackend]:
    """Seeded `ffn` experts with plain SGD (so a step is easy to see) for every uid of `pattern`."""
    expert_class = get_expert_class("ffn")
    backends = {}
    for index, uid in enumerate(expand_pattern(pattern)):
        torch.manual_seed(seed + index)
        module = expert_class.build(HIDDEN)
        sample = expert_class.sample_input(2, HIDDEN)
        backends[uid] = ExpertBackend(
            uid, module, sample, OptimizerConfig(name="sgd", lr=0.01), expert_class="ffn"
        )
    return backends


def local_reference(layer: RemoteMixtureOfExperts, modules: dict[str, nn.Module]) -> LocalMixtureOfExperts:
    """The same mixture computed in-process: same gate weights, copies of the servers' expert modules."""
    reference = LocalMixtureOfExperts(
        HIDDEN,
        layer.grid_size,
        layer.uid_prefix,
        {uid: copy.deepcopy(m) for uid, m in modules.items()},
        layer.k_best,
    )
    reference.gate.load_state_dict(layer.gate.state_dict())
    return reference


def make_layer(caller, **overrides) -> RemoteMixtureOfExperts:
    options = dict(
        in_features=HIDDEN,
        grid_size=(3, 3),
        uid_prefix="ffn",
        caller=caller,
        k_best=3,
        k_min=1,
        forward_timeout=10.0,
        timeout_after_k_min=2.0,
        backward_timeout=10.0,
    )
    options.update(overrides)
    return RemoteMixtureOfExperts(**options)


async def announce_dead_experts(bootstrap_node: DHTNode, pattern_uids: list[str]) -> DHTNode:
    """Announcements from a node that serves nothing: the experts look alive in the DHT but cannot answer."""
    ghost = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    register_experts_validator(ghost)
    assert all(await announce_experts(ghost, pattern_uids, ttl=60))
    return ghost


async def test_output_and_gradients_match_local_computation(make_expert_server, make_caller):
    # A sparse 3x3 grid: 5 live cells on two servers, the rest empty.
    first = await make_expert_server(
        "ffn.0.[0:3]", hidden_dim=HIDDEN, backends=make_backends("ffn.0.[0:3]", seed=1)
    )
    second = await make_expert_server(
        "ffn.[1:3].1", hidden_dim=HIDDEN, backends=make_backends("ffn.[1:3].1", seed=7)
    )
    modules = {uid: b.module for server in (first, second) for uid, b in server.backends.items()}
    torch.manual_seed(0)
    layer = make_layer(await make_caller())
    reference = local_reference(layer, modules)

    x = torch.randn(12, HIDDEN, requires_grad=True)
    x_local = x.detach().clone().requires_grad_()
    out = await asyncio.to_thread(layer, x)
    expected = reference(x_local)
    assert torch.allclose(out, expected, atol=1e-5)

    grad = torch.randn_like(out)
    await asyncio.to_thread(out.backward, grad)
    expected.backward(grad)
    assert torch.allclose(x.grad, x_local.grad, atol=1e-5)
    assert torch.allclose(layer.gate.weight.grad, reference.gate.weight.grad, atol=1e-5)
    stats = layer.take_stats()
    assert stats.forward_failed == stats.backward_failed == 0
    assert stats.forward_answered == stats.backward_answered > 0
    for server in (first, second):
        await server.settle()
    assert (
        sum(b.steps for server in (first, second) for b in server.backends.values())
        == stats.backward_answered
    )


async def test_servers_keep_forward_graphs_only_when_a_backward_can_follow(make_expert_server, make_caller):
    server = await make_expert_server("ffn.[0:3].[0:3]", hidden_dim=HIDDEN)
    torch.manual_seed(0)
    layer = make_layer(await make_caller())
    x = torch.randn(8, HIDDEN)

    def evaluate() -> torch.Tensor:
        with torch.no_grad():  # grad mode is per thread: switch it off where the layer runs
            return layer(x)

    await asyncio.to_thread(evaluate)  # an evaluation pass: the servers must keep nothing for it
    assert server.forward_cache.stats()["entries"] == 0

    # A training pass: graphs kept, then used by backward, which reaches the experts even though `x` itself
    # needs no gradient (their optimisers must still step).
    out = await asyncio.to_thread(layer, x)
    assert server.forward_cache.stats()["entries"] > 0
    await asyncio.to_thread(out.sum().backward)
    assert server.forward_cache.stats()["entries"] == 0
    assert server.forward_cache.stats()["hits"] > 0
    await server.settle()
    assert sum(b.steps for b in server.backends.values()) > 0


async def test_missing_expert_is_masked_and_softmax_renormalised(
    bootstrap_node, make_expert_server, make_caller
):
    server = await make_expert_server("ffn.[0:2].0", hidden_dim=HIDDEN)
    ghost = await announce_dead_experts(bootstrap_node, ["ffn.2.2"])
    try:
        torch.manual_seed(0)
        layer = make_layer(await make_caller(), k_best=3, forward_timeout=8.0)
        with torch.no_grad():
            layer.gate.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0, 5.0]))  # everyone wants ffn.2.2
        reference = local_reference(layer, {uid: b.module for uid, b in server.backends.items()})
        x = torch.randn(6, HIDDEN)
        out = await asyncio.to_thread(layer, x)
        assert torch.allclose(out, reference(x), atol=1e-5)  # the mixture of the two that answered
        stats = layer.take_stats()
        assert stats.forward_failed == 1 and stats.forward_answered == 2
        assert layer.reliability.stats(ghost.node_id).total_failures == 1
    finally:
        await ghost.shutdown()


async def test_all_experts_missing(bootstrap_node, make_caller):
    ghost = await announce_dead_experts(bootstrap_node, ["ffn.0.0", "ffn.1.1"])
    try:
        caller = await make_caller()
        layer = make_layer(caller, forward_timeout=5.0)
        with pytest.raises(TooFewExpertsError, match="fewer than k_min=1"):
            await asyncio.to_thread(layer, torch.randn(4, HIDDEN))
        lenient = make_layer(caller, forward_timeout=5.0, allow_zero_outputs=True)
        x = torch.randn(4, HIDDEN, requires_grad=True)
        out = await asyncio.to_thread(lenient, x)
        assert torch.equal(out, torch.zeros(4, HIDDEN))
        await asyncio.to_thread(out.sum().backward)
        assert torch.equal(x.grad, torch.zeros_like(x))
        # an empty swarm: nothing announced under another grid name
        empty = make_layer(caller, uid_prefix="attn", allow_zero_outputs=True)
        assert torch.equal(await asyncio.to_thread(empty, torch.randn(2, HIDDEN)), torch.zeros(2, HIDDEN))
    finally:
        await ghost.shutdown()


class SlowExpert(nn.Module):
    """Once `slow` is set, holds the server's compute thread until `release` is set (at most 10 s): a
    volunteer whose machine is overloaded. Its answer cannot arrive before the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.slow = False
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slow:
            self.release.wait(10)
        return self.linear(x)


async def test_slow_expert_past_the_timeout_is_masked(make_expert_server, make_caller):
    fast = await make_expert_server("ffn.0.0", hidden_dim=HIDDEN)
    slow_module = SlowExpert()
    slow_backend = ExpertBackend(
        "ffn.1.1", slow_module, [torch.randn(2, HIDDEN)], OptimizerConfig(name="sgd")
    )
    await make_expert_server("ffn.1.1", backends={"ffn.1.1": slow_backend})
    slow_module.slow = True
    layer = make_layer(await make_caller(), k_best=2, timeout_after_k_min=0.5, forward_timeout=10.0)
    reference = local_reference(layer, {"ffn.0.0": fast.backends["ffn.0.0"].module})
    x = torch.randn(5, HIDDEN)
    started = time.monotonic()
    try:
        out = await asyncio.to_thread(layer, x)  # the slow expert is held until after this returns
    finally:
        slow_module.release.set()
    assert time.monotonic() - started < 5.0  # gave up after timeout_after_k_min, not forward_timeout
    assert torch.allclose(out, reference(x), atol=1e-5)
    stats = layer.take_stats()
    assert stats.forward_answered == 1 and stats.forward_failed == 1


class NaNExpert(nn.Module):
    """A broken or hostile volunteer: well-formed replies full of NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float("nan")


async def test_nan_expert_is_masked_then_avoided(make_expert_server, make_caller):
    honest = await make_expert_server("ffn.0.[0:2]", hidden_dim=HIDDEN)
    hostile_backends = {
        uid: ExpertBackend(uid, NaNExpert(), [torch.randn(2, HIDDEN)], OptimizerConfig(name="sgd"))
        for uid in ("ffn.2.0", "ffn.2.1")
    }
    hostile = await make_expert_server("ffn.2.[0:2]", backends=hostile_backends)
    reliability = ReliabilityTracker(threshold=3, base_ban=60)
    layer = make_layer(await make_caller(), k_best=4, reliability=reliability)
    with torch.no_grad():
        layer.gate.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 0.0]))  # the hostile row scores best
    reference = local_reference(layer, {uid: b.module for uid, b in honest.backends.items()})
    x = torch.randn(4, HIDDEN, requires_grad=True)

    out = await asyncio.to_thread(layer, x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, reference(x), atol=1e-5)
    stats = layer.take_stats()
    assert stats.forward_failed == 2 and stats.anomalies == 2
    assert reliability.is_avoided(hostile.dht.node_id, time.monotonic())  # two anomalies: banned

    out = await asyncio.to_thread(layer, x)  # the hostile peer is no longer even asked
    stats = layer.take_stats()
    assert stats.forward_failed == 0 and stats.forward_answered == 2
    await asyncio.to_thread(out.sum().backward)
    assert torch.isfinite(x.grad).all()
    assert all(b.steps == 0 for b in hostile.backends.values())
    # the first call's forwards never get a backward, so the honest experts step after `step_delay`
    await wait_until_async(lambda: sum(b.steps for b in honest.backends.values()) == 2, timeout=5)


def test_bad_arguments_and_inputs():
    class NoDHT:
        dht = None

    with pytest.raises(ValueError):
        make_layer(NoDHT(), k_min=5, k_best=2)
    with pytest.raises(ValueError):
        make_layer(NoDHT(), grid_size=())
    layer = make_layer(NoDHT())
    with pytest.raises(ValueError, match="expected input"):
        layer(torch.randn(2, HIDDEN + 1))
    with pytest.raises(ValueError, match="NaN"):
        layer(torch.full((2, HIDDEN), float("nan")))
