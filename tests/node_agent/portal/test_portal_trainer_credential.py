"""A portal trainer speaks with its joined identity and carries its credential, so busy gated servers rank it
as credentialed (ahead of unknown keys during an offer flood), not as a stranger."""

from __future__ import annotations

import asyncio
from pathlib import Path

from local_portal import LocalPortal

from node_agent.cli.train import _portal_caller
from node_agent.dht import DHTNode
from node_agent.identity import Identity
from node_agent.portal.gate import CredentialPolicy
from node_agent.portal.state import AGENT_STATE_FILE, AgentState, save_agent_state
from node_agent.rtc.admission import Tier
from node_agent.rtc.config import RTCOptions
from node_agent.rtc.pool import ConnectionPool
from node_agent.training.session import SessionConfig
from tests.node_agent.rtc.handlers import echo


async def test_portal_trainer_is_admitted_as_credentialed(local_portal: LocalPortal, tmp_path: Path) -> None:
    identity = Identity.load_or_create(tmp_path / "identity.key")
    state = AgentState(
        portal_url=local_portal.url,
        project="demo",
        credential=local_portal.credential_for(identity.public_key_bytes),
        config=local_portal.config(),
    )
    save_agent_state(tmp_path / AGENT_STATE_FILE, state)
    server_dht = await DHTNode.create(listen="127.0.0.1:0")
    policy = CredentialPolicy("demo", local_portal.identity.public_key_bytes)
    server = await ConnectionPool.create(server_dht, echo, RTCOptions.for_loopback(), credentials=policy)
    session = SessionConfig(initial_peers=[server_dht.endpoint], rtc_loopback_only=True)
    caller = await asyncio.to_thread(_portal_caller, session, state, identity)
    try:
        assert caller.dht.node_id == identity.node_id
        link = await asyncio.wrap_future(
            caller.run(caller.pool.connect(server_dht.node_id, server_dht.endpoint))
        )
        assert link is not None
        inbound = server._inbound[identity.node_id]
        assert [accepted.tier for accepted in inbound] == [Tier.CREDENTIALED]
    finally:
        await asyncio.to_thread(caller.stop)
        await server.close()
        await server_dht.shutdown()
