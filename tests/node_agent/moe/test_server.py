from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from node_agent.moe.announce import EXPERTS_NAMESPACE, live_children, prefix_key
from node_agent.moe.api import ExpertError, ExpertHandle, ExpertUnavailableError
from node_agent.moe.client import get_experts
from node_agent.moe.server.checkpoints import load_checkpoint, save_checkpoint


async def test_many_concurrent_clients_are_batched(make_expert_server, make_caller):
    server = await make_expert_server("ffn.0", hidden_dim=16, max_wait=0.05)
    callers = [await make_caller() for _ in range(3)]
    handle = ExpertHandle("ffn.0", server.dht.node_id, server.dht.endpoint)
    reference = server.backends["ffn.0"].module
    inputs = [torch.randn(4, 16) for _ in range(12)]
    futures = [  # evaluation forwards (no kept graph) are concatenated into batches
        asyncio.wrap_future(callers[i % 3].forward(handle, [x], timeout=20, keep_graph=False))
        for i, x in enumerate(inputs)
    ]
    results = await asyncio.gather(*futures)
    for x, (out,) in zip(inputs, results, strict=True):
        assert torch.allclose(out, reference(x).detach(), atol=1e-6)
    assert server.runtime.samples == 4 * 12 + 0
    assert server.runtime.batches < 12, "requests from concurrent clients were not batched"


async def test_server_killed_mid_call_gives_error_within_timeout(make_expert_server, make_caller):
    server = await make_expert_server("ffn.5", hidden_dim=16)
    caller = await make_caller()
    handle = ExpertHandle("ffn.5", server.dht.node_id, server.dht.endpoint)
    await asyncio.wrap_future(caller.forward(handle, [torch.randn(2, 16)], timeout=10))

    entered, release = threading.Event(), threading.Event()
    original = server.backends["ffn.5"].forward

    def stuck_forward(inputs):
        entered.set()
        release.wait(30)
        return original(inputs)

    server.runtime._queues["ffn.5/forward"].fn = stuck_forward
    started = time.monotonic()
    future = asyncio.wrap_future(caller.forward(handle, [torch.randn(2, 16)], timeout=4, keep_graph=False))
    assert await asyncio.to_thread(entered.wait, 5), "the call never reached the compute thread"
    assert server.pool is not None
    await server.pool.close()  # the server's connections vanish mid-call
    with pytest.raises(ExpertError):
        await future
    assert time.monotonic() - started < 5
    release.set()


async def test_announcements_and_graceful_shutdown_withdraws(make_expert_server, make_caller):
    server = await make_expert_server("ffn.[0:2].[0:2]", hidden_dim=8)
    caller = await make_caller()
    dht = caller.dht
    handles = await asyncio.wrap_future(caller.run(get_experts(dht, ["ffn.1.1", "ffn.0.0", "ffn.2.0"])))
    assert [h is not None for h in handles] == [True, True, False]
    top = await asyncio.wrap_future(caller.run(dht.get(prefix_key("ffn."), latest=True)))
    assert set(live_children(top)) == {0, 1}
    assert all(a.node_id == server.dht.node_id for anns in live_children(top).values() for a in anns)

    await server.shutdown()
    handles = await asyncio.wrap_future(caller.run(get_experts(dht, ["ffn.1.1"])))
    assert handles == [None]
    top = await asyncio.wrap_future(caller.run(dht.get(prefix_key("ffn."), latest=True)))
    assert live_children(top) == {}
    with pytest.raises(ExpertUnavailableError):
        h = ExpertHandle("ffn.1.1", server.dht.node_id, server.dht.endpoint)
        await asyncio.wrap_future(caller.forward(h, [torch.randn(1, 8)], timeout=3))


async def test_forged_announcement_rejected(bootstrap_node):
    from node_agent.dht import DHTNode, owner_subkey
    from node_agent.moe.announce import register_experts_validator

    node = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
    register_experts_validator(node)
    register_experts_validator(bootstrap_node)
    try:
        bad_value = {"endpoint": node.endpoint, "node_id": b"\x01" * 20, "t": time.time()}
        with pytest.raises(Exception, match="signer"):
            await node.store(
                EXPERTS_NAMESPACE + "ffn.1", bad_value, time.time() + 30, owner_subkey("", node.node_id)
            )
        with pytest.raises(Exception, match="not an expert uid"):
            await node.store(EXPERTS_NAMESPACE + "ffn", {}, time.time() + 30, owner_subkey("", node.node_id))
    finally:
        await node.shutdown()


async def test_checkpoint_round_trip(tmp_path, backends_factory):
    make_backends = backends_factory
    (backend,) = make_backends("ffn.0", hidden_dim=8, lr=0.1).values()
    x, g = torch.randn(3, 8), torch.randn(3, 8)
    backend.backward([x], [g])
    path = save_checkpoint(tmp_path, backend)
    assert path.name == "ffn.0.safetensors"
    (fresh,) = make_backends("ffn.0", hidden_dim=8, lr=0.1, seed=99).values()
    assert load_checkpoint(tmp_path, fresh)
    assert fresh.steps == 1
    for a, b in zip(backend.module.parameters(), fresh.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(backend.backward([x], [g])[0], fresh.backward([x], [g])[0])
    assert not load_checkpoint(tmp_path / "none", fresh)


def test_backend_schemas_and_optimizer_features(backends_factory):
    make_backends = backends_factory
    for expert_class in ("ffn", "transformer", "nop"):
        (backend,) = make_backends("e.0", expert_class=expert_class, hidden_dim=8).values()
        info = backend.info()
        assert info["class"] == expert_class and info["inputs"][0]["shape"][0] is None
        x = backend.input_schema and torch.randn(2, *[s for s in backend.input_schema[0].shape[1:]])
        (grad,) = backend.backward([x], [torch.ones_like(backend.forward([x])[0])])
        assert grad.shape == x.shape
    (backend,) = make_backends("e.0", hidden_dim=8).values()
    with pytest.raises(ValueError, match="non-finite"):
        from node_agent.moe.server.backend import ExpertBackend, OptimizerConfig

        clipped = ExpertBackend(
            "e.1", backend.module, [torch.randn(2, 8)], OptimizerConfig(clip_grad_norm=1.0)
        )
        clipped.backward([torch.randn(2, 8)], [torch.full((2, 8), float("inf"))])


async def test_requests_arriving_while_the_compute_thread_is_busy_join_one_batch():
    from node_agent.moe.server.runtime import BatchingRuntime

    runtime = BatchingRuntime(max_batch_size=64, max_wait=0.001)
    sizes: list[int] = []

    def double(columns: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes.append(columns[0].shape[0])
        return [columns[0] * 2]

    runtime.add_queue("double", double)
    entered, release = threading.Event(), threading.Event()

    def block() -> None:
        entered.set()
        release.wait(10)

    busy = asyncio.ensure_future(runtime.call(block))
    assert await asyncio.to_thread(entered.wait, 5), "the compute thread never took the blocking job"
    requests = []
    for i in range(3):  # further apart than max_wait, but the compute thread is busy all along
        requests.append(asyncio.ensure_future(runtime.submit("double", [torch.full((2, 3), float(i))])))
        await asyncio.sleep(0.02)
    release.set()
    await busy
    results = await asyncio.gather(*requests)
    assert sizes == [6]
    for i, (out,) in enumerate(results):
        assert torch.equal(out, torch.full((2, 3), 2.0 * i))
    await runtime.call(lambda: None)
    first = asyncio.ensure_future(runtime.submit("double", [torch.ones(1, 3)]))
    assert (await first)[0].shape == (1, 3) and sizes == [6, 1], "an idle compute thread takes work at once"
    await runtime.shutdown()
