""" "My nodes" updates live in Chromium: a node's heartbeat and the observer's probe (unreachable, with its
reason) reach the volunteer's open page without a reload; a visitor who is not signed in is refused (4403).

Daphne on the Redis channel layer, a node speaking the agent protocol over HTTP (signed heartbeats), and
the observer's record of a probe written by the same service the observer calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys

import pytest
from django.utils import timezone

from accounts.models import Role
from swarm import services as swarm_services
from swarm.models import Node
from swarm.observations import observation_record
from swarm.probe_schedule import ProbeOutcome
from tests.e2e.test_swarm_page import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO_DIR,
    PageErrors,
    log_in,
    make_project,
    make_user,
    shot,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
pytest_plugins = ["tests.e2e.test_swarm_page"]  # its `daphne` fixture

REASON = "no connection: signalling to 127.0.0.1:9 timed out"


@pytest.fixture
def redis_layer(settings) -> None:
    """This process broadcasts like the observer does: on the Redis layer Daphne listens to."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")],
                "prefix": os.environ["CHANNELS_PREFIX"],
            },
        }
    }


def test_my_nodes_follows_heartbeats_and_probes_live(daphne, redis_layer, monkeypatch) -> None:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls below are plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    sys.path.insert(0, str(REPO_DIR / "tests" / "platform" / "live"))
    from live_agents import SimulatedNode, http_poster

    project = make_project(make_user("rosa@example.org", Role.RESEARCHER), "my-nodes-live")
    volunteer = make_user("vera@example.org")
    _, code = swarm_services.join_code_create(project=project, user=volunteer, now=timezone.now())
    agent = SimulatedNode(post=http_poster(daphne.url)).join(code)
    errors = PageErrors()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = log_in(browser, daphne.url, volunteer, errors)
            page.goto(f"{daphne.url}/nodes/")
            card = f"[data-node-id='{agent.node_id}']"
            page.wait_for_selector(f"{card}[data-state=registered]")
            page.wait_for_selector("[data-live-indicator][data-state=live]", timeout=20_000)
            page.evaluate("window.loadedOnce = true")

            agent.heartbeat(experts=["ffn.0.0"], samples_per_s=5.0)
            page.wait_for_selector(f"{card}[data-state=online]", timeout=20_000)
            assert page.locator(f"{card} [data-field=heartbeat]").inner_text() in (
                "just now",
                "1 s ago",
                "2 s ago",
            )

            node = Node.objects.get(node_id=agent.node_id)
            probe = ProbeOutcome("unreachable", (), REASON, timezone.now().timestamp())
            in_thread(
                lambda: observation_record(
                    project_id=project.pk,
                    announced={node.node_id: {"ffn.0.0"}},
                    error="",
                    now=timezone.now(),
                    probes={node.node_id: probe},
                )
            )
            page.wait_for_selector(f"{card}[data-state=unreachable]", timeout=20_000)
            reach = page.locator(f"{card} [data-field=reach]")
            assert reach.text_content() == "Announced, unreachable"
            assert "badge-reach-unreachable" in (reach.get_attribute("class") or "")
            assert REASON in page.locator(f"{card} [data-field=probe]").inner_text()
            assert REASON in page.locator(f"{card} [data-field=state-text]").inner_text()
            assert page.evaluate("window.loadedOnce") is True  # no reload happened
            shot(page, "my-nodes-unreachable")
        finally:
            browser.close()
    assert errors.errors == []
    assert asyncio.run(anonymous_close_code(daphne.url)) == 4403


def in_thread(action) -> None:
    """Run `action` (which broadcasts with async_to_sync) off Playwright's event-loop thread."""
    from django.db import connection

    def run() -> None:
        try:
            action()
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(run).result(timeout=30)


async def anonymous_close_code(base_url: str) -> int | None:
    import websockets

    url = base_url.replace("http://", "ws://") + "/ws/my-nodes/"
    async with websockets.connect(url, origin="http://127.0.0.1", open_timeout=30) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 30)
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
    return None
