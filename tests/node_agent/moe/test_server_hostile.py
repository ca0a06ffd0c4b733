"""Hostile traffic over a real data channel to a real expert server: clean errors, bounded memory, and the
server keeps serving honest callers."""

from __future__ import annotations

import asyncio
import random

import torch

from node_agent.moe.api import ExpertHandle
from node_agent.rtc.framing import FrameKind, encode_frames
from node_agent.rtc.rpc import RPCRemoteError
from node_agent.tensor_codec import encode_tensor
from tests.processes import wait_until_async

CLEAN_CODES = {"unknown_expert", "unknown_method", "bad_request", "bad_tensor"}


def _random_value(rng: random.Random, depth: int = 0):
    """An arbitrary msgpack-able structure (the same kinds as the hypothesis strategies)."""
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.random() < 0.5
    if choice == 2:
        return rng.randint(-(2**63), 2**64 - 1)
    if choice == 3:
        return rng.choice([0.0, -1.5, float("nan"), float("inf"), 1e308])
    if choice == 4:
        return rng.choice(["", "float32", "none", "blockwise8", "ffn.0", "x" * 50])
    if choice == 5:
        return rng.randbytes(rng.randrange(40))
    if choice == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if choice == 7:
        keys = ["dtype", "shape", "comp", "data", "scales", "low", "scale", "uid", "inputs", "grads", "fid"]
        return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}
    header = encode_tensor(torch.ones(rng.randrange(3), 8))
    header[rng.choice(list(header))] = _random_value(rng, depth + 1)
    return header


def _hostile_bodies(count: int) -> list:
    rng = random.Random(11)
    good = encode_tensor(torch.ones(2, 8))
    bodies = [
        {"uid": "ffn.0", "inputs": [{**good, "dtype": ["float32"]}]},
        {"uid": "ffn.0", "inputs": [{**good, "dtype": {"x": 1}}]},
        {"uid": "ffn.0", "inputs": [{**good, "comp": "blockwise8", "scales": 12}]},
        {"uid": "ffn.0", "inputs": [{**good, "data": [1, 2]}]},
        {"uid": "ffn.0", "inputs": [encode_tensor(torch.ones(0, 8))]},  # empty batch
        {"uid": "ffn.0", "inputs": [good], "reply_compression": ["none"]},
        {"uid": "ffn.0", "grads": [good], "fid": 7},
    ]
    for _ in range(count):
        body = {"uid": "ffn.0"}
        for name in rng.sample(["inputs", "grads", "fid", "keep", "reply_compression"], rng.randrange(1, 4)):
            body[name] = [_random_value(rng)] if rng.random() < 0.6 else _random_value(rng)
        bodies.append(body)
    return bodies


async def test_hostile_requests_get_clean_errors_and_the_server_keeps_serving(
    make_expert_server, make_caller
):
    server = await make_expert_server("ffn.0", hidden_dim=8)
    caller = await make_caller()
    handle = ExpertHandle("ffn.0", server.dht.node_id, server.dht.endpoint)

    async def attack() -> list[str]:
        link = await caller.pool.connect(handle.node_id, handle.endpoint)
        codes = []
        for method in ("forward", "backward"):
            for body in _hostile_bodies(150):
                try:
                    await link.rpc.call(method, body, timeout=10)
                    codes.append("ok")
                except RPCRemoteError as exc:
                    codes.append(exc.code)
        return codes

    codes = await asyncio.wrap_future(caller.run(attack()))
    assert set(codes) - {"ok"} <= CLEAN_CODES, {c for c in codes if c not in CLEAN_CODES}
    assert codes.count("ok") < len(codes) / 4
    x = torch.randn(3, 8)
    (out,) = await asyncio.wrap_future(caller.forward(handle, [x], timeout=10, keep_graph=False))
    assert torch.allclose(out, server.backends["ffn.0"].module(x).detach(), atol=1e-6)


async def test_unfinished_messages_drop_the_connection_and_free_memory(make_expert_server, make_caller):
    server = await make_expert_server("ffn.1", hidden_dim=8)
    attacker, honest = await make_caller(), await make_caller()
    handle = ExpertHandle("ffn.1", server.dht.node_id, server.dht.endpoint)
    await asyncio.wrap_future(honest.forward(handle, [torch.randn(2, 8)], timeout=10))
    assert server.pool is not None
    limit = server.pool.options.max_partial_bytes

    async def send_unfinished(messages: int, size: int) -> bool:
        """`messages` messages of `size` bytes, each without its last (FIN) frame; True once dropped."""
        link = await attacker.pool.connect(handle.node_id, handle.endpoint)
        channel = link.rpc.channel
        for call_id in range(1, messages + 1):
            frames = list(encode_frames(FrameKind.REQUEST, call_id, bytes(size), 64 * 1024))
            for frame in frames[:-1]:
                while channel.bufferedAmount > 1 << 20:
                    if link.rpc.closed:
                        return True
                    await asyncio.sleep(0.01)
                if link.rpc.closed:
                    return True
                channel.send(frame)
        try:
            return await wait_until_async(lambda: link.rpc.closed, timeout=10)
        except TimeoutError:
            return False

    size = 4 * 1024 * 1024
    attack = asyncio.wrap_future(attacker.run(send_unfinished(limit // size + 8, size)))
    while not attack.done():  # an honest caller keeps calling meanwhile
        x = torch.randn(2, 8)
        (out,) = await asyncio.wrap_future(honest.forward(handle, [x], timeout=10, keep_graph=False))
        assert out.shape == (2, 8)
        assert server.pool._total_budget.used <= limit
        await asyncio.sleep(0.05)
    assert await attack, "the server kept a connection holding more than its byte bound"
    await wait_until_async(lambda: server.pool._total_budget.used == 0, timeout=5)
    assert all(link.rpc.held_bytes == 0 for link in server.pool.links)
    (out,) = await asyncio.wrap_future(honest.forward(handle, [torch.randn(2, 8)], timeout=10))
    assert out.shape == (2, 8)


async def test_too_many_concurrent_calls_are_answered_busy(make_expert_server, make_caller):
    server = await make_expert_server("ffn.2", hidden_dim=8)
    caller = await make_caller()
    handle = ExpertHandle("ffn.2", server.dht.node_id, server.dht.endpoint)
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    original = server.handle

    async def slow_handle(method, body):
        await release.wait()
        return await original(method, body)

    assert server.pool is not None
    server.pool.handler = slow_handle  # links made from now on hold every call until released
    limit = server.pool.options.max_serving

    async def flood() -> list[str]:
        link = await caller.pool.connect(handle.node_id, handle.endpoint)
        body = {"uid": "ffn.2", "inputs": [encode_tensor(torch.ones(1, 8))]}
        calls = [asyncio.ensure_future(link.rpc.call("forward", body, timeout=20)) for _ in range(limit + 5)]
        # the last five are answered `busy` at once, so by then the first `limit` are all being served
        await wait_until_async(lambda: sum(call.done() for call in calls) >= 5, timeout=15)
        loop.call_soon_threadsafe(release.set)
        outcomes = []
        for call in calls:
            try:
                await call
                outcomes.append("ok")
            except RPCRemoteError as exc:
                outcomes.append(exc.code)
        return outcomes

    outcomes = await asyncio.wrap_future(caller.run(flood()))
    assert outcomes.count("busy") == 5 and outcomes.count("ok") == limit
