"""Kept forward graphs over real WebRTC calls: exactness, delayed gradients, fallback, bounds, refusals."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from node_agent.moe.api import ExpertHandle, ExpertProtocolError
from node_agent.tensor_codec import encode_tensors
from tests.processes import wait_until_async


def _handle(server, uid: str) -> ExpertHandle:
    return ExpertHandle(uid, server.dht.node_id, server.dht.endpoint)


async def _call(caller, method: str, *args):
    return await asyncio.wrap_future(getattr(caller, method)(*args))


def _local_step(module, optimizer, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    out = module(leaf)
    out.backward(grad)
    optimizer.step()
    optimizer.zero_grad()
    return out.detach(), leaf.grad


async def test_kept_forward_and_backward_equal_a_local_training_step(make_expert_server, make_caller):
    server = await make_expert_server("ffn.0", hidden_dim=16)
    backend = server.backends["ffn.0"]
    reference = copy.deepcopy(backend.module)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01)
    caller = await make_caller()
    handle = _handle(server, "ffn.0")
    for _ in range(2):
        x, grad = torch.randn(6, 16), torch.randn(6, 16)
        (out,) = await _call(caller, "forward", handle, [x], 10)
        assert len(server.forward_cache) == 1
        (grad_x,) = await _call(caller, "backward", handle, [x], [grad], 10)
        await server.settle()
        out_local, grad_local = _local_step(reference, optimizer, x, grad)
        assert torch.equal(out, out_local)
        assert torch.equal(grad_x, grad_local)
        for remote, local in zip(backend.module.parameters(), reference.parameters(), strict=True):
            assert torch.equal(remote, local)
    assert (caller.kept_backwards, caller.recomputed_backwards) == (2, 0)
    assert (
        server.forward_cache.hits == 2 and len(server.forward_cache) == 0 and server.forward_cache.bytes == 0
    )
    await server.settle()
    assert backend.steps == 2


async def test_a_step_in_between_gives_the_gradient_of_the_forward_the_client_saw(
    make_expert_server, make_caller
):
    """Learning@home's delayed gradients: the second backward uses the parameters its forward used."""
    server = await make_expert_server("ffn.1", hidden_dim=16, step_delay=0)  # a step on every backward
    backend = server.backends["ffn.1"]
    reference = copy.deepcopy(backend.module)
    caller = await make_caller()
    handle = _handle(server, "ffn.1")
    x1, x2, g1, g2 = (torch.randn(4, 16) for _ in range(4))
    (out1,) = await _call(caller, "forward", handle, [x1], 10)
    (out2,) = await _call(caller, "forward", handle, [x2], 10)
    (grad_x1,) = await _call(caller, "backward", handle, [x1], [g1], 10)
    await server.settle()
    assert backend.steps == 1  # the parameters moved in place
    (grad_x2,) = await _call(caller, "backward", handle, [x2], [g2], 10)
    await server.settle()
    assert backend.steps == 2 and caller.kept_backwards == 2

    # reference: both gradients at the original parameters, then two SGD steps
    params = list(reference.parameters())
    expected = []
    for x, g, out in ((x1, g1, out1), (x2, g2, out2)):
        leaf = x.clone().requires_grad_()
        y = reference(leaf)
        assert torch.equal(y.detach(), out)
        expected.append(torch.autograd.grad(y, [leaf, *params], g))
    assert torch.equal(grad_x1, expected[0][0])
    assert torch.equal(grad_x2, expected[1][0]), "the second backward must not see the first step"
    optimizer = torch.optim.SGD(params, lr=0.01)
    for grads in expected:
        for p, g in zip(params, grads[1:], strict=True):
            p.grad = g
        optimizer.step()
    for remote, local in zip(backend.module.parameters(), params, strict=True):
        assert torch.equal(remote, local)


async def test_fallback_to_recompute_when_nothing_is_kept_or_it_is_gone(make_expert_server, make_caller):
    disabled = await make_expert_server("ffn.2", hidden_dim=16, forward_cache_entries=0)
    tiny = await make_expert_server("ffn.3", hidden_dim=16, forward_cache_entries=1)
    short = await make_expert_server("ffn.4", hidden_dim=16, forward_cache_ttl=0.2)
    caller = await make_caller()
    x1, x2, grad = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 16)

    async def expected(server, uid, x):
        reference = copy.deepcopy(server.backends[uid].module)
        return _local_step(reference, torch.optim.SGD(reference.parameters(), lr=0.01), x, grad)[1]

    # cache disabled: no forward id comes back, backward re-sends the inputs
    want = await expected(disabled, "ffn.2", x1)
    await _call(caller, "forward", _handle(disabled, "ffn.2"), [x1], 10)
    (got,) = await _call(caller, "backward", _handle(disabled, "ffn.2"), [x1], [grad], 10)
    assert torch.equal(got, want) and (caller.kept_backwards, caller.recomputed_backwards) == (0, 1)

    # evicted: a second forward pushes the first one out; its backward falls back transparently
    want = await expected(tiny, "ffn.3", x1)
    await _call(caller, "forward", _handle(tiny, "ffn.3"), [x1], 10)
    await _call(caller, "forward", _handle(tiny, "ffn.3"), [x2], 10)
    (got,) = await _call(caller, "backward", _handle(tiny, "ffn.3"), [x1], [grad], 10)
    assert torch.equal(got, want) and caller.recomputed_backwards == 2
    assert tiny.forward_cache.evicted == 1 and tiny.forward_cache.misses == 1
    await _call(caller, "backward", _handle(tiny, "ffn.3"), [x2], [grad], 10)
    assert caller.kept_backwards == 1

    # expired on the server (the caller still remembers the id): same answer via recompute
    want = await expected(short, "ffn.4", x1)
    await _call(caller, "forward", _handle(short, "ffn.4"), [x1], 10)
    await asyncio.sleep(0.3)
    (got,) = await _call(caller, "backward", _handle(short, "ffn.4"), [x1], [grad], 10)
    assert torch.equal(got, want) and caller.recomputed_backwards == 3


async def test_kept_graphs_stay_within_the_byte_and_entry_bounds(make_expert_server, make_caller):
    server = await make_expert_server("ffn.5", hidden_dim=16)
    backend = server.backends["ffn.5"]
    one_graph = backend.forward_kept([torch.randn(8, 16)]).nbytes
    bound = backend.snapshot_bytes + 3 * one_graph
    server = await make_expert_server(
        "ffn.6", hidden_dim=16, forward_cache_bytes=bound, forward_cache_entries=5
    )
    caller = await make_caller()
    handle = _handle(server, "ffn.6")
    for _ in range(8):
        await _call(caller, "forward", handle, [torch.randn(8, 16)], 10)
        assert server.forward_cache.bytes <= bound
    assert len(server.forward_cache) == 3 and server.forward_cache.evicted == 5
    # a request that could never fit is answered without a forward id, and backward still works
    big = torch.randn(64, 16)
    await _call(caller, "forward", handle, [big], 10)
    assert server.forward_cache.rejected == 1
    (grad_x,) = await _call(caller, "backward", handle, [big], [torch.randn(64, 16)], 10)
    assert grad_x.shape == (64, 16) and caller.recomputed_backwards == 1
    # evaluation-only forwards keep nothing
    before = server.forward_cache.stats()
    await _call(caller, "forward", handle, [torch.randn(8, 16)], 10, False)
    assert server.forward_cache.stats() == before


async def test_another_clients_forward_id_is_refused(make_expert_server, make_caller):
    server = await make_expert_server("ffn.7", hidden_dim=16)
    owner, thief = await make_caller(), await make_caller()
    handle = _handle(server, "ffn.7")
    await _call(owner, "info", handle, 10)
    x, grad = torch.randn(3, 16), torch.randn(3, 16)
    forward = {"uid": "ffn.7", "inputs": encode_tensors([x]), "keep": True}
    reply = await asyncio.wrap_future(owner.run(owner._call(handle, "forward", forward, 10)))
    fid = reply["fid"]
    assert isinstance(fid, bytes) and len(fid) == 16
    stolen = {"uid": "ffn.7", "fid": fid, "grads": encode_tensors([grad])}
    with pytest.raises(ExpertProtocolError, match="unknown_forward"):
        await asyncio.wrap_future(thief.run(thief._call(handle, "backward", stolen, 10)))
    assert server.forward_cache.refused == 1 and len(server.forward_cache) == 1
    assert server.backends["ffn.7"].steps == 0
    # the owner still gets its backward from the kept graph
    reply = await asyncio.wrap_future(owner.run(owner._call(handle, "backward", stolen, 10)))
    assert len(reply["grads"]) == 1 and server.forward_cache.hits == 1
    # a malformed id is a bad request, not a crash
    with pytest.raises(ExpertProtocolError, match="bad_request"):
        bad = {"uid": "ffn.7", "fid": "not-bytes", "grads": encode_tensors([grad])}
        await asyncio.wrap_future(owner.run(owner._call(handle, "backward", bad, 10)))


async def test_bad_gradients_for_a_kept_forward_are_refused(make_expert_server, make_caller):
    server = await make_expert_server("ffn.8", hidden_dim=16)
    backend = server.backends["ffn.8"]
    caller = await make_caller()
    handle = _handle(server, "ffn.8")
    x = torch.randn(6, 16)
    await _call(caller, "forward", handle, [x], 10)
    nan = torch.randn(6, 16)
    nan[2, 3] = float("nan")
    with pytest.raises(ExpertProtocolError, match="NaN"):
        await _call(caller, "backward", handle, [x], [nan], 10)
    with pytest.raises(ExpertProtocolError, match="expected shape"):
        await _call(caller, "backward", handle, [x], [torch.randn(6, 15)], 10)
    assert len(server.forward_cache) == 1 and backend.steps == 0  # refused before touching the graph
    (grad_x,) = await _call(caller, "backward", handle, [x], [torch.randn(6, 16)], 10)
    await server.settle()
    assert grad_x.shape == (6, 16) and backend.steps == 1
    assert (caller.kept_backwards, caller.recomputed_backwards) == (1, 0)
    await _call(caller, "forward", handle, [x], 10)
    with pytest.raises(ExpertProtocolError, match="does not match the kept forward"):
        await _call(caller, "backward", handle, [x], [torch.randn(4, 16)], 10)
    await server.settle()
    assert backend.steps == 1
    # the server is healthy afterwards
    (out,) = await _call(caller, "forward", handle, [x], 10)
    assert out.shape == (6, 16)


async def test_backwards_awaited_together_share_one_optimiser_step(make_expert_server, make_caller):
    """Two trainers' forwards outstanding: the first backward waits, the second brings one summed step."""
    server = await make_expert_server("ffn.9", hidden_dim=16, step_delay=30)
    backend = server.backends["ffn.9"]
    reference = copy.deepcopy(backend.module)
    first, second = await make_caller(), await make_caller()
    handle = _handle(server, "ffn.9")
    x1, x2, g1, g2 = (torch.randn(4, 16) for _ in range(4))
    await _call(first, "forward", handle, [x1], 10)
    await _call(second, "forward", handle, [x2], 10)
    (grad_x1,) = await _call(first, "backward", handle, [x1], [g1], 10)
    assert backend.steps == 0 and backend.accumulated_samples == 4, "waits for the other awaited backward"
    (grad_x2,) = await _call(second, "backward", handle, [x2], [g2], 10)
    await server.settle()
    assert backend.steps == 1 and backend.accumulated_samples == 0

    params = list(reference.parameters())
    grads = []
    for x, g, grad_x in ((x1, g1, grad_x1), (x2, g2, grad_x2)):
        leaf = x.clone().requires_grad_()
        found = torch.autograd.grad(reference(leaf), [leaf, *params], g)
        assert torch.equal(grad_x, found[0])
        grads.append(found[1:])
    for p, a, b in zip(params, *grads, strict=True):
        p.grad = a + b
    torch.optim.SGD(params, lr=0.01).step()
    for remote, local in zip(backend.module.parameters(), params, strict=True):
        assert torch.allclose(remote, local, atol=1e-7)


async def test_a_backward_that_never_comes_delays_the_step_only_briefly(make_expert_server, make_caller):
    server = await make_expert_server("ffn.10", hidden_dim=16, step_delay=0.2)
    backend = server.backends["ffn.10"]
    caller = await make_caller()
    handle = _handle(server, "ffn.10")
    x = torch.randn(4, 16)
    await _call(caller, "forward", handle, [x], 10)
    await _call(caller, "forward", handle, [torch.randn(4, 16)], 10)  # its backward never comes
    await _call(caller, "backward", handle, [x], [torch.randn(4, 16)], 10)
    assert backend.steps == 0
    await wait_until_async(lambda: backend.steps, timeout=5, what="the step after step_delay")
    await server.settle()
    assert backend.steps == 1 and backend.accumulated_samples == 0
    assert server.forward_cache.pending("ffn.10") == 1


async def test_snapshots_are_reused_only_when_no_kept_graph_needs_them(make_expert_server, make_caller):
    server = await make_expert_server("ffn.11", hidden_dim=16, step_delay=0)
    backend = server.backends["ffn.11"]
    caller = await make_caller()
    handle = _handle(server, "ffn.11")
    x, g = torch.randn(4, 16), torch.randn(4, 16)
    await _call(caller, "forward", handle, [x], 10)
    first = [t.data_ptr() for t in backend._snapshot]
    await _call(caller, "backward", handle, [x], [g], 10)
    await _call(caller, "forward", handle, [x], 10)  # nothing refers to the old snapshot: overwritten
    assert [t.data_ptr() for t in backend._snapshot] == first
    await _call(caller, "forward", handle, [x], 10)  # same generation: shared
    (grad_a,) = await _call(caller, "backward", handle, [x], [g], 10)
    await _call(caller, "forward", handle, [x], 10)  # the other graph still needs it: fresh copies
    assert [t.data_ptr() for t in backend._snapshot] != first
    (grad_b,) = await _call(caller, "backward", handle, [x], [g], 10)
    (grad_c,) = await _call(caller, "backward", handle, [x], [g], 10)
    assert caller.kept_backwards == 4 and caller.recomputed_backwards == 0
    await server.settle()
    assert backend.steps == 4
    assert not torch.equal(grad_a, grad_c), "the last forward saw parameters after more steps"
    del grad_b


async def test_concurrent_kept_forwards_share_one_batch_and_one_backward(make_expert_server, make_caller):
    """Requests that arrive together run as one concatenated graph; each member gets its exact gradients."""
    server = await make_expert_server("ffn.12", hidden_dim=16, max_wait=0.2, step_delay=5)
    backend = server.backends["ffn.12"]
    reference = copy.deepcopy(backend.module)
    callers = [await make_caller() for _ in range(3)]
    handle = _handle(server, "ffn.12")
    for caller in callers:  # connect first, so the three forwards arrive within max_wait
        await _call(caller, "info", handle, 10)
    xs = [torch.randn(2 + i, 16) for i in range(3)]
    gs = [torch.randn(2 + i, 16) for i in range(3)]
    batches = server.runtime.batches
    outs = await asyncio.gather(
        *(_call(c, "forward", handle, [x], 10) for c, x in zip(callers, xs, strict=True))
    )
    assert server.runtime.batches == batches + 1 and server.forward_cache.pending("ffn.12") == 3
    grads = await asyncio.gather(
        *(_call(c, "backward", handle, [x], [g], 10) for c, x, g in zip(callers, xs, gs, strict=True))
    )
    await server.settle()
    assert backend.steps == 1 and all(c.kept_backwards == 1 for c in callers)

    params = list(reference.parameters())
    totals = [torch.zeros_like(p) for p in params]
    for x, g, (out,), (grad_x,) in zip(xs, gs, outs, grads, strict=True):
        leaf = x.clone().requires_grad_()
        y = reference(leaf)
        assert torch.allclose(out, y.detach(), atol=1e-6)
        found = torch.autograd.grad(y, [leaf, *params], g)
        assert torch.allclose(grad_x, found[0], atol=1e-6)
        for total, grad in zip(totals, found[1:], strict=True):
            total += grad
    for p, total in zip(params, totals, strict=True):
        p.grad = total
    torch.optim.SGD(params, lr=0.01).step()
    for remote, local in zip(backend.module.parameters(), params, strict=True):
        assert torch.allclose(remote, local, atol=1e-6)


async def test_a_member_that_never_sends_its_backward_holds_the_others_only_briefly(
    make_expert_server, make_caller
):
    server = await make_expert_server("ffn.13", hidden_dim=16, max_wait=0.2, step_delay=0.3)
    backend = server.backends["ffn.13"]
    present, absent = await make_caller(), await make_caller()
    handle = _handle(server, "ffn.13")
    for caller in (present, absent):
        await _call(caller, "info", handle, 10)
    x1, x2, g = torch.randn(3, 16), torch.randn(4, 16), torch.randn(3, 16)
    await asyncio.gather(
        _call(present, "forward", handle, [x1], 10), _call(absent, "forward", handle, [x2], 10)
    )
    reference = copy.deepcopy(backend.module)
    started = asyncio.get_running_loop().time()
    (grad_x1,) = await _call(present, "backward", handle, [x1], [g], 10)
    assert 0.2 < asyncio.get_running_loop().time() - started < 5
    leaf = x1.clone().requires_grad_()
    (expected,) = torch.autograd.grad(reference(leaf), [leaf], g)
    assert torch.allclose(grad_x1, expected, atol=1e-6)
    assert server.forward_cache.pending("ffn.13") == 0, "the absent member's graph was released"
    # its backward arrives late: the server no longer has the graph, so the client re-sends the inputs
    (grad_x2,) = await _call(absent, "backward", handle, [x2], [torch.randn(4, 16)], 10)
    await server.settle()
    assert grad_x2.shape == (4, 16) and absent.recomputed_backwards == 1
    assert backend.steps == 2
