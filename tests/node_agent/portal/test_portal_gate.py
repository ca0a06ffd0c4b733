"""A gated project's DHT peers refuse expert announcements without a valid portal credential.

Real DHT nodes on 127.0.0.1: three gated peers, an honest credentialed server, attackers (client-mode,
so they store nothing themselves) and a gated reader. The portal's own DHT node publishes the
revocation list with the portal identity.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from node_agent.dht import DHTNode, DHTRecordRefused, DHTValidationError, owner_subkey
from node_agent.dht.endpoints import parse_endpoint
from node_agent.dht.records import key_id
from node_agent.identity import Identity
from node_agent.moe.announce import (
    MAX_ANNOUNCE_TTL,
    announce_experts,
    announcement_value,
    live_replicas,
    prefix_key,
    uid_key,
)
from node_agent.moe.beam_search import ExpertSearcher, dht_prefix_fetcher
from node_agent.moe.client import get_experts
from node_agent.portal.gate import (
    CredentialPolicy,
    RevocationWatcher,
    fetch_revocations,
    install_credential_checks,
)
from node_agent.portal.revocations import revocation_list_value, revocations_key
from node_agent.portal.tokens import issue_credential

PROJECT = "demo"
PORTAL = Identity.generate()


def credential(identity: Identity, *, cid: str = "cid-ok", project: str = PROJECT, ttl: float = 600.0,
               portal: Identity = PORTAL, issued: float | None = None) -> str:  # fmt: skip
    return issue_credential(
        portal,
        cid=cid,
        project=project,
        user=1,
        node_public_key=identity.public_key_bytes,
        now=time.time() if issued is None else issued,
        ttl=ttl,
    )


def gated(node: DHTNode) -> CredentialPolicy:
    policy = CredentialPolicy(PROJECT, PORTAL.public_key_bytes)
    install_credential_checks(node, policy)
    return policy


class GatedSwarm:
    def __init__(self) -> None:
        self.nodes: list[DHTNode] = []
        self.gated: list[tuple[DHTNode, CredentialPolicy]] = []

    async def start(self, count: int = 3) -> None:
        first = await DHTNode.create(listen="127.0.0.1:0")
        self.gated.append((first, gated(first)))
        self.nodes.append(first)
        for _ in range(count - 1):
            await self.add(client_mode=False)

    async def add(self, *, identity: Identity | None = None, client_mode: bool, gate: bool = True) -> DHTNode:
        node = await DHTNode.create(
            initial_peers=[self.nodes[0].endpoint],
            listen="127.0.0.1:0",
            identity=identity,
            client_mode=client_mode,
        )
        if gate:
            self.gated.append((node, gated(node)))
        self.nodes.append(node)
        return node

    @property
    def bootstrap(self) -> str:
        return self.nodes[0].endpoint

    async def visible(self, reader: DHTNode, uid: str) -> list[bytes]:
        found = await reader.get(uid_key(uid), latest=True)
        return [handle.node_id for handle in live_replicas(uid, found)]

    async def close(self) -> None:
        await asyncio.gather(*(node.shutdown() for node in self.nodes))


@pytest.fixture
async def swarm() -> AsyncIterator[GatedSwarm]:
    gated_swarm = GatedSwarm()
    await gated_swarm.start()
    yield gated_swarm
    await gated_swarm.close()


async def test_credentialed_announcements_are_stored_and_forged_ones_refused(swarm: GatedSwarm) -> None:
    honest_identity = Identity.generate()
    honest = await swarm.add(identity=honest_identity, client_mode=False)
    reader = await swarm.add(client_mode=True)
    honest_token = credential(honest_identity)
    assert all(await announce_experts(honest, ["ffn.0.0"], ttl=60, credential=honest_token))
    assert await swarm.visible(reader, "ffn.0.0") == [honest.node_id]

    # Each attacker has its own key: peers stop listening to a node after repeated invalid records.
    attacks = {
        "missing": lambda me: None,
        "forged": lambda me: credential(me, portal=Identity.generate()),
        "other_project": lambda me: credential(me, project="another"),
        "expired": lambda me: credential(me, issued=time.time() - 700, ttl=600),
        "stolen": lambda me: honest_token,  # a valid credential, but issued to another node key
    }
    for index, (name, make_token) in enumerate(attacks.items()):
        identity = Identity.generate()
        attacker = await swarm.add(identity=identity, client_mode=True, gate=False)
        uid = f"ffn.1.{index}"
        results = await announce_experts(attacker, [uid], ttl=60, credential=make_token(identity))
        assert not any(results), f"{name}: a gated peer accepted the announcement"
        assert await swarm.visible(reader, uid) == [], name
        await attacker.shutdown()


async def test_revoked_credentials_are_refused_once_the_portal_publishes_the_list(swarm: GatedSwarm) -> None:
    portal_node = await swarm.add(identity=PORTAL, client_mode=False)
    volunteer_identity = Identity.generate()
    volunteer = await swarm.add(identity=volunteer_identity, client_mode=False)
    reader = await swarm.add(client_mode=True)
    token = credential(volunteer_identity, cid="cid-banned")
    assert any(await announce_experts(volunteer, ["ffn.0.1"], ttl=60, credential=token))

    # Somebody other than the portal cannot publish (or erase) the list.
    impostor = await swarm.add(client_mode=True, gate=False)
    fake = revocation_list_value([], time.time() + 5)
    assert not await impostor.store(revocations_key(PROJECT), fake, time.time() + 600)

    assert await portal_node.store(
        revocations_key(PROJECT), revocation_list_value(["cid-banned"], time.time()), time.time() + 600
    )
    fetched = await fetch_revocations(reader, swarm.gated[-1][1])
    assert fetched is not None and fetched.revoked == {"cid-banned"}
    watchers = [await RevocationWatcher.create(node, policy, period=3600) for node, policy in swarm.gated]
    try:
        assert all(policy.revoked == {"cid-banned"} for _, policy in swarm.gated)
        # The next announcement is refused by every gated peer, and the reader no longer trusts the old one.
        with pytest.raises(DHTValidationError, match="revoked"):  # its own node refuses first
            await announce_experts(volunteer, ["ffn.0.2"], ttl=60, credential=token)
        rogue = await swarm.add(identity=volunteer_identity, client_mode=True, gate=False)  # ignores the list
        assert not any(await announce_experts(rogue, ["ffn.0.2"], ttl=60, credential=token))
        assert await swarm.visible(reader, "ffn.0.1") == []
    finally:
        for watcher in watchers:
            await watcher.stop()


async def test_withdrawal_needs_the_credential_and_hides_the_owner(swarm: GatedSwarm) -> None:
    identity = Identity.generate()
    server = await swarm.add(identity=identity, client_mode=False)
    reader = await swarm.add(client_mode=True)
    token = credential(identity)
    assert all(await announce_experts(server, ["ffn.1.1"], ttl=60, credential=token))
    assert await swarm.visible(reader, "ffn.1.1") == [server.node_id]
    with pytest.raises(DHTRecordRefused, match="no credential"):  # its own gated node refuses first
        await announce_experts(server, ["ffn.1.1"], ttl=60, withdrawn=True)
    # A credential-less node cannot plant withdrawals in a gated swarm (not even its own), ...
    planter = await swarm.add(client_mode=True, gate=False)
    assert not any(await announce_experts(planter, ["ffn.1.2"], ttl=60, withdrawn=True))
    assert all(not node.core.store.get(key_id(uid_key("ffn.1.2")), time.time()) for node, _ in swarm.gated)
    # ... and nobody is blamed for that: the gated peers only dropped what their policy refuses.
    for node, _ in swarm.gated:  # a node that ignored the planter would drop its ping: a timeout
        host, port, _ = parse_endpoint(node.endpoint)
        await planter._call((host, port), "ping", {}, node.node_id, 1.0)
    assert any(await announce_experts(server, ["ffn.1.1"], ttl=60, withdrawn=True, credential=token))
    assert await swarm.visible(reader, "ffn.1.1") == []


async def test_withdrawal_floods_do_not_hide_credentialed_servers(swarm: GatedSwarm) -> None:
    """A rogue volunteer with a valid credential stores hundreds of padded withdrawals at the longest
    expiry allowed under the prefix keys beam search reads; before, answers listed the longest expiries
    first and were cut at one datagram, so readers no longer saw the real servers."""
    servers = []
    cells = {0: ["ffn.0.0", "ffn.0.1"], 1: ["ffn.1.2"], 2: ["ffn.2.3", "ffn.3.3"]}  # server -> uids
    for uids in cells.values():
        identity = Identity.generate()
        server = await swarm.add(identity=identity, client_mode=False)
        assert all(await announce_experts(server, uids, ttl=30, credential=credential(identity)))
        servers.append(server)
    rogue_identity = Identity.generate()
    rogue = await swarm.add(identity=rogue_identity, client_mode=True, gate=False)
    token = credential(rogue_identity, cid="cid-rogue")
    padded_endpoint = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
    now = time.time()
    flood = announcement_value(padded_endpoint, rogue.node_id, now, withdrawn=True, credential=token)
    for prefix in ("ffn.", "ffn.0.", "ffn.3."):  # one key at a time: all nodes share this test's one CPU
        items = [
            (prefix_key(prefix), owner_subkey(str(c), rogue.node_id), flood, now + MAX_ANNOUNCE_TTL - 5)
            for c in range(300)
        ]
        assert all(await rogue.store_many(items))
    assert (
        max(len(node.core.store.get(key_id(prefix_key("ffn.")), time.time())) for node in swarm.nodes) >= 300
    )
    # Without a credential, the same flood is not stored at all.
    outsider = await swarm.add(client_mode=True, gate=False)
    bare = announcement_value(padded_endpoint, outsider.node_id, now, withdrawn=True)
    assert not any(
        await outsider.store_many(
            [(prefix_key("ffn."), owner_subkey(str(c), outsider.node_id), bare, now + 500) for c in range(50)]
        )
    )

    reader = await swarm.add(client_mode=True)
    searcher = ExpertSearcher(dht_prefix_fetcher(reader))
    scores = [[[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]]
    found = await searcher.find_best_experts("ffn", scores, k=16)
    expected = {uid for uids in cells.values() for uid in uids}
    assert {expert.uid for expert in found[0]} == expected
    handles = await get_experts(reader, sorted(expected))
    owners = {
        uid: server.node_id for server, uids in zip(servers, cells.values(), strict=True) for uid in uids
    }
    assert [h.node_id if h else None for h in handles] == [owners[uid] for uid in sorted(expected)]
