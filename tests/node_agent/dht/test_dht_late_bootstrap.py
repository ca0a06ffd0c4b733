"""A node whose initial peers are all down at start (``require_initial_peer=False``) over real UDP: it starts,
keeps pinging them with backoff, joins once one comes up, and joins through peers it is given later."""

from __future__ import annotations

import time

import pytest

from node_agent.dht import DHTBootstrapError, DHTNode
from node_agent.identity import Identity
from tests.processes import free_port, wait_until_async

FAST = {"rejoin_min_interval": 0.2, "rejoin_max_interval": 1.0, "bootstrap_timeout": 0.5, "rpc_timeout": 0.5}


async def test_by_default_a_node_with_no_answering_peer_fails_to_start() -> None:
    with pytest.raises(DHTBootstrapError, match="none of the 1 initial peers answered"):
        await DHTNode.create([f"127.0.0.1:{free_port()}"], bootstrap_timeout=0.5)


async def test_a_node_started_before_its_bootstrap_joins_when_it_comes_up() -> None:
    port = free_port()
    identity = Identity.generate()
    node = await DHTNode.create(
        [f"127.0.0.1:{port}/{identity.node_id.hex()}"], require_initial_peer=False, **FAST
    )
    bootstrap: DHTNode | None = None
    try:
        assert not node.joined
        bootstrap = await DHTNode.create(listen=f"127.0.0.1:{port}", identity=identity)
        await wait_until_async(lambda: node.joined, timeout=15, what="the node joined")
        assert await node.store("late", b"value", time.time() + 60)
        assert (await bootstrap.get("late"))[None].value == b"value"
    finally:
        await node.shutdown()
        if bootstrap is not None:
            await bootstrap.shutdown()


async def test_set_initial_peers_joins_through_the_new_peers() -> None:
    node = await DHTNode.create([f"127.0.0.1:{free_port()}"], require_initial_peer=False, **FAST)
    live = await DHTNode.create()
    try:
        assert not node.joined
        await node.set_initial_peers([live.endpoint])
        await wait_until_async(lambda: node.joined, timeout=15, what="the node joined")
        assert await node.store("moved", b"value", time.time() + 60)
        assert (await live.get("moved"))[None].value == b"value"
    finally:
        await node.shutdown()
        await live.shutdown()
