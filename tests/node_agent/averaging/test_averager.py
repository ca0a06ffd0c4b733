"""Four real peers (DHT + WebRTC on 127.0.0.1) average tensors: exact, fp16, a peer killed, a bad peer."""

from __future__ import annotations

import asyncio
import time

import torch

from node_agent.averaging import AveragingError, AveragingOptions, RoundReport
from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.tokens import issue_credential
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


async def test_fp16_within_tolerance_and_keys_rotate():
    inputs = [_tensors(seed) for seed in range(4)]
    expected = _mean(inputs)
    options = AveragingOptions(target_group_size=4, group_bits="01", compression=Compression.FLOAT16)
    async with averaging_peers([[t.clone() for t in ts] for ts in inputs], options) as peers:
        reports = await asyncio.wait_for(asyncio.gather(*(p.averager.step() for p in peers)), 60)
        assert all(r.complete for r in reports)
        for peer in peers:
            for got, want in zip(peer.tensors, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=5e-3)
        for peer in peers[1:]:  # everyone keeps the value that travelled: identical tensors
            assert all(torch.equal(a, b) for a, b in zip(peer.tensors, peers[0].tensors, strict=True))
        # Moshpit: each member's next key ends with its index in the group, so the four now differ
        assert len({p.averager.group_key for p in peers}) == 4


async def test_peer_killed_mid_round_leaves_partial_average_and_no_hang():
    inputs = [[torch.randn(400_000)] for _ in range(4)]
    options = AveragingOptions(target_group_size=4, compression=Compression.NONE, window=1)
    async with averaging_peers([[t.clone() for t in ts] for ts in inputs], options) as peers:
        victim = peers[3]
        steps = [asyncio.ensure_future(p.averager.step()) for p in peers[:3]]
        victim_step = asyncio.ensure_future(victim.averager.step())
        # kill the victim once the round is under way (its pieces have started to flow)
        while not victim.averager._rounds:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        victim_step.cancel()
        await victim.stop()
        reports = await asyncio.wait_for(asyncio.gather(*steps), 60)
        victim_id = victim.dht.node_id
        survivors_mean = _mean([inputs[i] for i in range(3)])[0]
        for peer, report in zip(peers[:3], reports, strict=True):
            assert report.group_size == 4 and not report.complete
            assert victim_id in report.failed_reducers  # its part stayed local
            assert torch.isfinite(peer.tensors[0]).all()
            # every part the survivors reduced is an average of the survivors (plus maybe the victim's
            # early pieces): far closer to the survivors' mean than the peer's own input was
            own = inputs[peers.index(peer)][0]
            assert (peer.tensors[0] - survivors_mean).abs().mean() < (own - survivors_mean).abs().mean()


async def test_peer_sending_huge_or_nan_values_is_refused_and_penalised():
    inputs = [_tensors(seed) for seed in range(4)]
    inputs[3] = [inputs[3][0] * 1e6, torch.full_like(inputs[3][1], float("nan"))]  # huge, then NaN
    honest_mean = _mean(inputs[:3])
    options = AveragingOptions(target_group_size=4, compression=Compression.NONE)
    async with averaging_peers([[t.clone() for t in ts] for ts in inputs], options) as peers:
        reports = await asyncio.wait_for(asyncio.gather(*(p.averager.step() for p in peers)), 60)
        bad = peers[3].dht.node_id
        for peer, report in zip(peers[:3], reports[:3], strict=True):
            assert bad in report.refused or bad in report.failed_reducers
            assert bad in peer.averager.penalties
            flat = torch.cat([t.reshape(-1) for t in peer.tensors])
            want = torch.cat([t.reshape(-1) for t in honest_mean])
            own = torch.cat([t.reshape(-1) for t in inputs[peers.index(peer)]])
            assert torch.isfinite(flat).all() and flat.abs().max() < 100  # nothing of the bad peer got in
            # each value is the honest mean (parts reduced by honest peers) or our own (the bad peer's part)
            assert bool(((flat - want).abs() < 1e-4).logical_or((flat - own).abs() < 1e-6).all())


async def test_gated_project_groups_only_credentialed_peers():
    portal = Identity.generate()
    policy = CredentialPolicy("demo", portal.public_key_bytes)
    outsider = 3

    def options(dht: DHTNode) -> AveragingOptions:
        token = issue_credential(
            portal, cid=dht.node_id.hex(), project="demo", user=1,
            node_public_key=dht.identity.public_key_bytes, now=time.time(), ttl=600,
        )  # fmt: skip
        index = len(made)
        made.append(dht.node_id)
        return AveragingOptions(
            target_group_size=4,
            min_group_size=2,
            matchmaking_time=2.0,
            compression=Compression.NONE,
            credential=None if index == outsider else token,
            credentials=policy,
        )

    made: list[bytes] = []
    inputs = [_tensors(seed) for seed in range(4)]
    expected = _mean(inputs[:3])
    async with averaging_peers([[t.clone() for t in ts] for ts in inputs], options) as peers:
        results = await asyncio.wait_for(
            asyncio.gather(*(p.averager.step(timeout=6) for p in peers), return_exceptions=True), 30
        )
        assert isinstance(results[outsider], AveragingError)  # nobody takes it in, nobody joins it
        for peer, report in zip(peers[:3], results[:3], strict=True):
            assert isinstance(report, RoundReport) and report.complete and report.group_size == 3
            assert peers[outsider].dht.node_id not in report.members
            for got, want in zip(peer.tensors, expected, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
