"""Shared fixtures: a bootstrap DHT node, an expert server and a trainer-side caller, all on 127.0.0.1.

Everything is real: UDP DHT sockets, aiortc peer connections with loopback host candidates, the batching
runtime. Other MoE tests reuse these (`bootstrap_node`, `make_expert_server`, `make_caller`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from node_agent.dht import DHTNode
from node_agent.moe.client import ExpertCaller
from node_agent.moe.server.backend import ExpertBackend, OptimizerConfig, create_backends
from node_agent.moe.server.server import ExpertServer, ServerOptions
from node_agent.moe.uids import expand_pattern
from node_agent.rtc.config import RTCOptions

LOOPBACK_RTC = RTCOptions.for_loopback(connect_timeout=5.0)


def make_backends(
    pattern: str, expert_class: str = "ffn", hidden_dim: int = 16, lr: float = 0.01, seed: int = 0
) -> dict[str, ExpertBackend]:
    """Backends for every uid of `pattern`: seeded weights, plain SGD, no clipping (comparable in tests)."""
    optimizer = OptimizerConfig(name="sgd", lr=lr, clip_grad_norm=None)
    return create_backends(expand_pattern(pattern), expert_class, hidden_dim, optimizer, seed=seed)


@pytest.fixture
def backends_factory() -> Callable[..., dict[str, ExpertBackend]]:
    """`backends_factory("ffn.[0:4]", expert_class="ffn", hidden_dim=16, lr=0.01, seed=0)`."""
    return make_backends


@pytest.fixture
async def bootstrap_node() -> AsyncIterator[DHTNode]:
    node = await DHTNode.create(listen="127.0.0.1:0")
    yield node
    await node.shutdown()


@pytest.fixture
async def make_expert_server(bootstrap_node: DHTNode) -> AsyncIterator[Callable]:
    """`await make_expert_server("ffn.[0:2].[0:2]", expert_class="ffn", hidden_dim=16, **server_options)`."""
    started: list[tuple[ExpertServer, DHTNode]] = []

    async def make(
        pattern: str,
        expert_class: str = "ffn",
        hidden_dim: int = 16,
        backends: dict[str, ExpertBackend] | None = None,
        **options: object,
    ) -> ExpertServer:
        dht = await DHTNode.create(initial_peers=[bootstrap_node.endpoint], listen="127.0.0.1:0")
        server_options = ServerOptions(**{"max_wait": 0.002, "stats_period": 3600.0, **options})  # type: ignore[arg-type]
        server = await ExpertServer.create(
            dht,
            backends or make_backends(pattern, expert_class, hidden_dim),
            server_options,
            LOOPBACK_RTC,
        )
        started.append((server, dht))
        return server

    yield make
    for server, dht in started:
        with contextlib.suppress(Exception):
            await server.shutdown()
        await dht.shutdown()


@pytest.fixture
async def make_caller(bootstrap_node: DHTNode) -> AsyncIterator[Callable[..., Awaitable[ExpertCaller]]]:
    """`await make_caller(compression="none")` -> a started ExpertCaller bootstrapped from `bootstrap_node`.

    The caller blocks while it starts, so it starts in a worker thread: the test's own loop (running the
    bootstrap node and servers) must keep turning. Tests compare remote results with local modules
    exactly, so callers here send uncompressed tensors unless a test asks otherwise (the library default
    is `blockwise8`).
    """
    callers: list[ExpertCaller] = []

    async def make(**kwargs: object) -> ExpertCaller:
        kwargs.setdefault("rtc_options", LOOPBACK_RTC)
        kwargs.setdefault("compression", "none")
        caller = await asyncio.to_thread(ExpertCaller.start_caller, [bootstrap_node.endpoint], **kwargs)
        callers.append(caller)
        return caller

    yield make
    for caller in callers:
        await asyncio.to_thread(caller.stop)
