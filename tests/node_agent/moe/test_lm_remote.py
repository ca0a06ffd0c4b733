"""The byte-level LM with its experts on real expert servers (this folder's fixtures): the same logits and
gradients as the same model with in-process copies of those experts (no compression)."""

from __future__ import annotations

import asyncio
import copy

import torch

from node_agent.training.lm import LMConfig, block_uid_patterns
from node_agent.training.lm_session import LMSessionConfig, build_lm
from node_agent.training.text import encode

TINY = LMConfig(hidden_dim=16, blocks=2, grid=(2, 2), seq_len=16, window=8, heads=2, k_best=2)


async def test_remote_lm_matches_local_logits_and_gradients(
    make_expert_server, make_caller, backends_factory
):
    servers = [
        await make_expert_server(
            pattern, hidden_dim=TINY.hidden_dim, backends=backends_factory(pattern, hidden_dim=16, seed=9 * i)
        )
        for i, pattern in enumerate(block_uid_patterns(TINY))
    ]
    caller = await make_caller()
    remote = build_lm(LMSessionConfig(model=TINY, mode="remote", seed=3), caller)
    local = build_lm(LMSessionConfig(model=TINY, mode="local", seed=3))
    # Same trainer weights (same seed); the local experts become copies of the servers' modules.
    for block, server in zip(local.blocks, servers, strict=True):
        moe = block.moe
        for index, uid in enumerate(moe.uids):
            moe.experts[index] = copy.deepcopy(server.backends[uid].module)
    own = {k: v for k, v in remote.state_dict().items()}
    missing, unexpected = local.load_state_dict(own, strict=False)
    assert not unexpected and all(".experts." in name for name in missing)

    tokens = encode(b"def f(x):\n    return x + 1\n")[: TINY.seq_len].view(1, -1).repeat(3, 1)
    out_remote = await asyncio.to_thread(remote, tokens)
    out_local = local(tokens)
    assert torch.allclose(out_remote, out_local, atol=1e-4)
    grad = torch.randn_like(out_local)
    await asyncio.to_thread(out_remote.backward, grad)
    out_local.backward(grad)
    for (name, p_remote), p_local in zip(
        remote.named_parameters(),
        (dict(local.named_parameters())[n] for n, _ in remote.named_parameters()),
        strict=True,
    ):
        assert torch.allclose(p_remote.grad, p_local.grad, atol=1e-4), name
    stats = [layer.take_stats() for layer in remote.moe_layers()]
    assert all(s.forward_failed == 0 and s.backward_answered > 0 for s in stats)
