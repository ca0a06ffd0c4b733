"""Switch-style routing: one expert per sample scaled by its router probability, load-balancing loss."""

from __future__ import annotations

import asyncio
import copy

import torch

from node_agent.dht import DHTNode
from node_agent.moe.announce import announce_experts, register_experts_validator
from node_agent.moe.switch import RemoteSwitchMixtureOfExperts, switch_balance_loss

HIDDEN = 16


def test_balance_loss_is_one_when_balanced_and_larger_when_not():
    uniform = [torch.full((4, 2), 0.5), torch.full((4, 2), 0.5)]
    balanced = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    everyone = torch.ones(4, dtype=torch.bool)
    assert torch.isclose(switch_balance_loss(uniform, balanced, everyone), torch.tensor(1.0))

    skewed_probs = [torch.tensor([[0.9, 0.1]] * 4, requires_grad=True), torch.full((4, 2), 0.5)]
    skewed = torch.zeros(4, 2, dtype=torch.long)
    loss = switch_balance_loss(skewed_probs, skewed, everyone)
    assert loss > 1.0
    loss.backward()
    assert skewed_probs[0].grad[0, 0] > 0  # pushes probability away from the overloaded coordinate
    # unrouted samples do not count towards the load fractions
    assert torch.isclose(
        switch_balance_loss(uniform, balanced, torch.tensor([True, True, False, False])), torch.tensor(1.0)
    )


async def test_switch_layer_over_real_servers(bootstrap_node, make_expert_server, make_caller):
    server = await make_expert_server("ffn.[0:2].[0:2]", hidden_dim=HIDDEN)
    modules = {uid: copy.deepcopy(b.module) for uid, b in server.backends.items()}
    torch.manual_seed(0)
    layer = RemoteSwitchMixtureOfExperts(
        in_features=HIDDEN,
        grid_size=(2, 2),
        uid_prefix="ffn",
        caller=await make_caller(),
        forward_timeout=8.0,
    )
    x = torch.randn(10, HIDDEN, requires_grad=True)
    out = await asyncio.to_thread(layer, x)

    with torch.no_grad():
        s0, s1 = torch.split(layer.gate(x), (2, 2), dim=-1)
        p0, p1 = torch.softmax(s0, -1), torch.softmax(s1, -1)
        for b in range(10):
            i, j = int(s0[b].argmax()), int(s1[b].argmax())
            expected = p0[b, i] * p1[b, j] * modules[f"ffn.{i}.{j}"](x[b : b + 1])[0]
            assert torch.allclose(out[b], expected, atol=1e-5)
    assert layer.aux_loss is not None and layer.aux_loss >= 1.0 - 1e-5
    loss = out.square().sum() + 0.01 * layer.aux_loss
    await asyncio.to_thread(loss.backward)
    assert layer.gate.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    stats = layer.take_stats()
    assert stats.forward_answered == stats.backward_answered == len({tuple(c) for c in stats_cells(s0, s1)})


def stats_cells(s0: torch.Tensor, s1: torch.Tensor) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in zip(s0.argmax(-1), s1.argmax(-1), strict=True)]


async def test_failed_switch_expert_gives_zero_output(bootstrap_node, make_caller):
    ghost = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    register_experts_validator(ghost)
    await announce_experts(ghost, ["ffn.0.0"], ttl=60)
    try:
        layer = RemoteSwitchMixtureOfExperts(
            in_features=HIDDEN,
            grid_size=(1, 1),
            uid_prefix="ffn",
            caller=await make_caller(),
            forward_timeout=5.0,
        )
        out = await asyncio.to_thread(layer, torch.randn(3, HIDDEN))
        assert torch.equal(out, torch.zeros(3, HIDDEN))
        assert layer.take_stats().forward_failed == 1
    finally:
        await ghost.shutdown()
