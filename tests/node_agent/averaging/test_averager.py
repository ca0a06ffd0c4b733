"""Four real peers (DHT + WebRTC on 127.0.0.1) average tensors: exact, fp16, a peer killed, a bad peer."""

from __future__ import annotations

import asyncio

import torch

from node_agent.averaging import AveragingOptions
from node_agent.tensor_codec import Compression
from tests.node_agent.averaging.swarm import averaging_peers


def _tensors(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(300, 70, generator=generator), torch.randn(1000, generator=generator)]


def _mean(groups: list[list[torch.Tensor]], weights: list[float] | None = None) -> list[torch.Tensor]:
    weights = weights or [1.0] * len(groups)
    total = sum(weights)
    return [
        sum(w * g[i] for w, g in zip(weights, groups, strict=True)) / total for i in range(len(groups[0]))
    ]


async def test_four_peers_average_exactly_with_weights():
    inputs = [_tensors(seed) for seed in range(4)]
    weights = [1.0, 2.0, 3.0, 4.0]
    expected = _mean(inputs, weights)
    options = AveragingOptions(target_group_size=4, min_group_size=2, compression=Compression.NONE)
    async with averaging_peers([[t.clone() for t in ts] for ts in inputs], options) as peers:
        reports = await asyncio.wait_for(
            asyncio.gather(*(p.averager.step(weight=w) for p, w in zip(peers, weights, strict=True))), 60
        )
        assert all(r.complete and r.group_size == 4 for r in reports)
        assert len({r.group_id for r in reports}) == 1
        for peer in peers:
            for got, want in zip(peer.tensors, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
