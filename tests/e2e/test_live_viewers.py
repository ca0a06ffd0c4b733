"""Live swarm viewers against a real portal process (`python -m live.serve`, as deployed), over real sockets.

What a browser sees is decided by Daphne as much as by the consumer: a refusal before `accept` becomes a
bare HTTP 403 (a browser reports close code 1006 and cannot tell it from an overloaded portal). Here a
real WebSocket client checks that every refusal arrives as its own close code, that a viewer over the
process's cap is told to come back later (4503), and that the tuned write path delivers a snapshot and
then the diffs of real heartbeats in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Role, User
from config.env import database_url
from projects import services as project_services
from projects.models import Project
from swarm import services as swarm_services
from tests.processes import serving_portal

REPO_DIR = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
MAX_VIEWERS = 3

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[str]:
    """`python -m live.serve` on the test database and Redis, with a cap of MAX_VIEWERS viewers."""
    env = dict(os.environ) | {
        "DJANGO_SETTINGS_MODULE": "config.settings_test",
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": REDIS_URL,
        "LIVE_MAX_VIEWERS": str(MAX_VIEWERS),
        "PYTHONPATH": os.pathsep.join([str(REPO_DIR / "platform"), str(REPO_DIR)]),
    }
    with serving_portal("live.serve", cwd=REPO_DIR / "platform", env=env, log=tmp_path / "portal.log") as url:
        yield url


def make_project(slug: str, join_policy: str = "open") -> Project:
    owner = User.objects.create_user(f"{slug}@example.org", "a-Strong-passphrase-42", role=Role.RESEARCHER)
    return project_services.project_create(
        owner=owner, launch=True, title=slug.title(), slug=slug, description="", expert_architecture="ffn",
        hidden_size=16, grid_shape="2x2", optimizer="adam", learning_rate=0.001, dataset="digits",
        join_policy=join_policy,
    )  # fmt: skip


def ws_url(portal: str, slug: str) -> str:
    return portal.replace("http://", "ws://") + f"/ws/live/projects/{slug}/"


async def close_code(url: str) -> int | None:
    """Connect like a browser; the close code the server ends the socket with before sending anything."""
    import websockets

    async with websockets.connect(url, origin="http://127.0.0.1", open_timeout=30) as ws:
        try:
            message = await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        raise AssertionError(f"expected a refusal, got {message[:200]!r}")


def test_refusals_reach_a_real_client_as_close_codes_and_viewers_get_their_diffs(portal: str) -> None:
    import websockets

    sys.path.insert(0, str(REPO_DIR / "tests" / "platform" / "live"))
    from live_agents import SimulatedNode, http_poster

    public = make_project("open-swarm")
    private = make_project("closed-swarm", join_policy="approval")
    volunteer = User.objects.create_user("vol@example.org", "a-Strong-passphrase-42", display_name="Vol")
    _, code = swarm_services.join_code_create(project=public, user=volunteer, now=timezone.now())
    node = SimulatedNode(post=http_poster(portal)).join(code)

    async def scenario() -> None:
        assert await close_code(ws_url(portal, private.slug)) == 4403
        assert await close_code(ws_url(portal, "no-such-swarm")) == 4404
        viewers = [
            await websockets.connect(ws_url(portal, public.slug), origin="http://127.0.0.1", open_timeout=30)
            for _ in range(MAX_VIEWERS)
        ]
        try:
            snapshots = [json.loads(await asyncio.wait_for(v.recv(), 30)) for v in viewers]
            assert {(s["type"], s["seq"]) for s in snapshots} == {("swarm.snapshot", 1)}
            assert [n["node_id"] for n in snapshots[0]["nodes"]] == [node.node_id]
            # One more than the cap: "come back later", which the page retries, not "access denied".
            assert await close_code(ws_url(portal, public.slug)) == 4503

            await asyncio.to_thread(node.heartbeat, experts=["ffn.0.0"], samples_per_s=50.0)
            for viewer in viewers:
                seq = 1
                while True:
                    message = json.loads(await asyncio.wait_for(viewer.recv(), 30))
                    assert message["seq"] == seq + 1
                    seq = message["seq"]
                    diffs = message["diffs"] if message["type"] == "swarm.batch" else [message]
                    if any(d.get("type") == "node.upsert" and d["node"]["state"] == "online" for d in diffs):
                        break
        finally:
            for viewer in viewers:
                await viewer.close()
        # The viewers' slots came back: a new one is admitted.
        again = await websockets.connect(ws_url(portal, public.slug), origin="http://127.0.0.1")
        try:
            assert json.loads(await asyncio.wait_for(again.recv(), 30))["type"] == "swarm.snapshot"
        finally:
            await again.close()

    asyncio.run(scenario())
