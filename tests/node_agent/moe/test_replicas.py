"""Expert replicas over real WebRTC connections: takeover from a live replica, averaging, donor checks."""

from __future__ import annotations

import asyncio

import torch

from node_agent.moe.api import ExpertHandle


def params(server, uid: str) -> list[torch.Tensor]:
    return [p.detach().clone() for p in server.backends[uid].module.parameters()]


async def train(caller, server, uid: str, steps: int) -> None:
    handle = ExpertHandle(uid, server.dht.node_id, server.dht.endpoint)
    for _ in range(steps):
        x = torch.randn(8, 16)
        await asyncio.wrap_future(caller.backward(handle, [x], [torch.randn(8, 16)], timeout=10))
    await server.settle()


async def test_a_server_taking_over_a_cell_starts_from_the_live_replica(
    make_expert_server, make_caller, backends_factory
):
    first = await make_expert_server("ffn.0", hidden_dim=16, replica_period=0)
    assert first.replicas.stats.started_from == {"ffn.0": "initial"}
    caller = await make_caller()
    await train(caller, first, "ffn.0", 5)
    assert first.backends["ffn.0"].steps == 5
    second = await make_expert_server(
        "ffn.0", hidden_dim=16, replica_period=0, backends=backends_factory("ffn.0", seed=7)
    )
    assert second.replicas.stats.started_from["ffn.0"].startswith("replica ")
    backend = second.backends["ffn.0"]
    assert backend.steps == 5
    for mine, theirs in zip(params(second, "ffn.0"), params(first, "ffn.0"), strict=True):
        assert torch.allclose(mine, theirs, atol=2e-3)  # parameters travel in float16
    assert first.replicas.donor.stats.completed == 1 and not first.replicas.donor.sessions


async def test_replicas_average_to_the_mean(make_expert_server, backends_factory):
    one = await make_expert_server(
        "ffn.1", hidden_dim=16, replica_period=0, take_over=False, backends=backends_factory("ffn.1", seed=1)
    )
    two = await make_expert_server(
        "ffn.1", hidden_dim=16, replica_period=0, take_over=False, backends=backends_factory("ffn.1", seed=2)
    )
    before = [params(one, "ffn.1"), params(two, "ffn.1")]
    assert not all(torch.equal(a, b) for a, b in zip(*before, strict=True))
    done = await asyncio.gather(one.replicas.average_once(), two.replicas.average_once())
    assert done == [1, 1]
    assert one.replicas.stats.rounds_completed == two.replicas.stats.rounds_completed == 1
    for x, y, a, b in zip(params(one, "ffn.1"), params(two, "ffn.1"), *before, strict=True):
        assert torch.allclose(x, (a + b) / 2, atol=2e-3)  # equal weights (neither trained): the mean
        assert torch.allclose(y, (a + b) / 2, atol=2e-3)


async def test_a_replica_with_other_shapes_is_refused_and_counted(make_expert_server, backends_factory):
    honest = await make_expert_server(
        "ffn.2", hidden_dim=16, replica_period=0, take_over=False, backends=backends_factory("ffn.2", seed=1)
    )
    await make_expert_server(  # same uid, another architecture: its state must not be loaded
        "ffn.2",
        hidden_dim=8,
        replica_period=0,
        take_over=False,
        backends=backends_factory("ffn.2", hidden_dim=8, seed=2),
    )
    before = params(honest, "ffn.2")
    assert await honest.replicas.average_once() == 0  # no group with a replica of another shape
    assert honest.replicas.stats.rounds_failed == 1
    for a, b in zip(params(honest, "ffn.2"), before, strict=True):
        assert torch.equal(a, b)


async def test_with_no_live_replica_a_takeover_starts_from_the_last_export(
    tmp_path, bootstrap_node, backends_factory
):
    from node_agent.dht import DHTNode
    from node_agent.moe.server.server import ExpertServer, ServerOptions
    from node_agent.training.export import CellEntry, ExportSpec, Manifest, export_fallback, write_export
    from tests.node_agent.moe.conftest import LOOPBACK_RTC

    (trained,) = backends_factory("ffn.3", seed=1).values()
    tensors = {f"experts.ffn.3.{k}": v for k, v in trained.module.state_dict().items()}
    tensors["experts.ffn.4.w"] = torch.zeros(3)  # a cell of another shape: refused, not loaded
    manifest = Manifest(
        ExportSpec(grid=(8,), hidden_dim=16),
        [CellEntry("ffn.3", 42, "ab", 1.0), CellEntry("ffn.4", 7, "ab", 1.0)],
    )
    path = write_export(tmp_path / "model.safetensors", tensors, manifest)
    dht = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    backends = backends_factory("ffn.[3:6]", seed=2)
    server = await ExpertServer.create(
        dht, backends, ServerOptions(replica_period=0), LOOPBACK_RTC, fallback=export_fallback(path)
    )
    try:
        assert server.replicas.stats.started_from == {
            "ffn.3": "checkpoint",
            "ffn.4": "initial",
            "ffn.5": "initial",
        }
        assert backends["ffn.3"].steps == 42
        for a, b in zip(backends["ffn.3"].module.parameters(), trained.module.parameters(), strict=True):
            assert torch.equal(a, b)
    finally:
        await server.shutdown()
        await dht.shutdown()


async def test_replicas_that_split_the_batches_keep_both_updates(make_expert_server, backends_factory):
    """Two replicas each train on their own batches: the averaged state holds both updates, as one server
    taking every step would (a plain mean would keep half of each)."""
    one = await make_expert_server(
        "ffn.6", hidden_dim=16, replica_period=0, take_over=False, backends=backends_factory("ffn.6", seed=1)
    )
    two = await make_expert_server(
        "ffn.6", hidden_dim=16, replica_period=0, take_over=False, backends=backends_factory("ffn.6", seed=2)
    )
    assert await asyncio.gather(one.replicas.average_once(), two.replicas.average_once()) == [1, 1]
    base = params(one, "ffn.6")  # the common state both now hold

    async def local_steps(server, seed: int) -> None:
        backend = server.backends["ffn.6"]
        generator = torch.Generator().manual_seed(seed)
        for _ in range(3):
            x, g = torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)
            await server.runtime.call(lambda x=x, g=g: backend.backward([x], [g]))

    await local_steps(one, 10)
    await local_steps(two, 20)
    deltas = [
        [a - b for a, b in zip(params(one, "ffn.6"), base, strict=True)],
        [a - b for a, b in zip(params(two, "ffn.6"), base, strict=True)],
    ]
    assert await asyncio.gather(one.replicas.average_once(), two.replicas.average_once()) == [1, 1]
    for got_one, got_two, b, d1, d2 in zip(
        params(one, "ffn.6"), params(two, "ffn.6"), base, *deltas, strict=True
    ):
        assert torch.allclose(got_one, b + d1 + d2, atol=3e-3)
        assert torch.allclose(got_two, got_one, atol=3e-3)
    assert one.replicas.stats.rounds_completed == 2
