from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from node_agent.moe.api import ExpertHandle, ExpertProtocolError, ExpertUnavailableError
from node_agent.moe.client import RemoteExpert, get_experts


async def _resolve(caller, uids):
    return await asyncio.wrap_future(caller.run(get_experts(caller.dht, uids)))


async def test_remote_forward_backward_match_local_exactly(make_expert_server, make_caller):
    server = await make_expert_server("ffn.0.[0:2]", hidden_dim=16)
    backend = server.backends["ffn.0.1"]
    reference = copy.deepcopy(backend.module)
    before = [p.detach().clone() for p in backend.module.parameters()]
    caller = await make_caller()
    handles = await _resolve(caller, ["ffn.0.1", "ffn.9.9"])
    assert handles[1] is None
    handle = handles[0]
    assert handle == ExpertHandle("ffn.0.1", server.dht.node_id, server.dht.endpoint)

    expert = RemoteExpert("ffn.0.1", handle, caller, timeout=10)
    x = torch.randn(5, 16, requires_grad=True)
    x_local = x.detach().clone().requires_grad_()
    out = await asyncio.to_thread(expert, x)
    out_local = reference(x_local)
    assert torch.equal(out, out_local.detach())

    grad = torch.randn(5, 16)
    await asyncio.to_thread(out.backward, grad)
    out_local.backward(grad)
    assert torch.equal(x.grad, x_local.grad)
    await server.settle()  # the optimiser step follows the answer
    after = list(backend.module.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), "server did not step"
    assert backend.steps == 1

    schema = await asyncio.wrap_future(caller.info(handle, timeout=5))
    assert schema["inputs"] == [{"dtype": "float32", "shape": [None, 16]}]
    assert schema["outputs"] == [{"dtype": "float32", "shape": [None, 16]}]


async def test_compressed_calls_within_tolerance(make_expert_server, make_caller):
    server = await make_expert_server("ffn.1", hidden_dim=32)
    reference = copy.deepcopy(server.backends["ffn.1"].module)
    caller = await make_caller(compression="float16")
    (handle,) = await _resolve(caller, ["ffn.1"])
    x = torch.randn(8, 32)
    (out,) = await asyncio.wrap_future(caller.forward(handle, [x], timeout=10))
    assert torch.allclose(out, reference(x).detach(), atol=2e-2)


async def test_bad_inputs_get_clear_errors(make_expert_server, make_caller):
    server = await make_expert_server("ffn.2", hidden_dim=16)
    caller = await make_caller()
    handle = ExpertHandle("ffn.2", server.dht.node_id, server.dht.endpoint)
    cases = [
        ([torch.randn(4, 15)], "expected shape"),
        ([torch.randn(4, 16, dtype=torch.float64)], "expected dtype"),
        ([torch.tensor([[float("nan")] * 16])], "NaN"),
        ([torch.randn(4, 16), torch.randn(4, 16)], "expected 1 tensors"),
    ]
    for inputs, message in cases:
        with pytest.raises(ExpertProtocolError, match=message):
            await asyncio.wrap_future(caller.forward(handle, inputs, timeout=10))
    with pytest.raises(ExpertProtocolError, match="expected shape"):
        await asyncio.wrap_future(
            caller.backward(handle, [torch.randn(4, 16)], [torch.randn(4, 3)], timeout=10)
        )
    missing = ExpertHandle("ffn.3", server.dht.node_id, server.dht.endpoint)
    with pytest.raises(ExpertUnavailableError, match="not served"):
        await asyncio.wrap_future(caller.forward(missing, [torch.randn(1, 16)], timeout=10))
    # the server is still healthy afterwards
    (out,) = await asyncio.wrap_future(caller.forward(handle, [torch.randn(2, 16)], timeout=10))
    assert out.shape == (2, 16)
    assert server.failures >= 5
