"""The live swarm page end to end: Daphne on the Redis channel layer, a real agent, the observer, Chromium.

A volunteer watches their project's swarm page; `node-agent join` (a real agent process serving an
expert) joins with the volunteer's code and heartbeats; its node appears in the graph and the table,
highlighted as theirs, without a reload. The swarm observer (`manage.py observe_swarm`) reads the DHT and
the heatmap fills in; the agent is stopped and the node goes offline. An admin watches the health page
meanwhile. Any JavaScript error on any page fails the test; screenshots land in test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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
from swarm.models import Node
from tests.processes import free_port, stop_process, wait_for_http

REPO_DIR = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_DIR / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "a-Strong-passphrase-42"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Short lifecycle thresholds so a stopped agent goes offline within the test.
FAST_SWARM = {
    "SWARM_ONLINE_WITHIN_S": "6",
    "SWARM_OFFLINE_AFTER_S": "10",
    "SWARM_OBSERVE_INTERVAL_S": "2",
    "SWARM_HEARTBEAT_INTERVAL_S": "2",
}

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def portal_env() -> dict[str, str]:
    env = dict(os.environ) | FAST_SWARM
    env["DJANGO_SETTINGS_MODULE"] = "config.settings_test"
    env["DATABASE_URL"] = database_url(connection.settings_dict)
    env["REDIS_URL"] = REDIS_URL
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_DIR / "platform"), str(REPO_DIR)])
    return env


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    stop_process(process, timeout=timeout)


class Daphne:
    """Daphne serving config.asgi with the Redis channel layer on a fixed port; can be restarted."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            self.process = subprocess.Popen(
                [*command, "config.asgi:application"],
                cwd=REPO_DIR / "platform", env=portal_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_http(f"{self.url}/healthz", process=self.process, log=self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, 10)


@pytest.fixture
def daphne(tmp_path: Path) -> Iterator[Daphne]:
    server = Daphne(tmp_path / "daphne.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def portal_url(daphne: Daphne) -> str:
    return daphne.url


def make_user(email: str, role: str = Role.VOLUNTEER, **extra: object) -> User:
    return User.objects.create_user(
        email, PASSWORD, display_name=email.split("@")[0].title(), role=role, **extra
    )


def make_project(owner: User, slug: str, grid: str = "2x2") -> Project:
    return project_services.project_create(
        owner=owner, launch=True, title=slug.replace("-", " ").title(), slug=slug, description="Live test.",
        expert_architecture="ffn", hidden_size=16, grid_shape=grid, optimizer="adam", learning_rate=0.001,
        dataset="digits", join_policy="open",
    )  # fmt: skip


class PageErrors:
    """Collects uncaught exceptions and console errors from every page of a browser context."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page) -> None:
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        page.on("console", self._console(page))
        page.on("response", self._response)

    def _console(self, page):
        def record(msg) -> None:
            # Failed loads are judged by URL in _response (a missing favicon is not a page error).
            if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
                self.errors.append(f"{page.url}: console {msg.text}")

        return record

    def _response(self, response) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.errors.append(f"{response.status} for {response.url}")


def log_in(browser, base_url: str, user: User, errors: PageErrors):
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    errors.watch(page)
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=username]", user.email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_load_state("networkidle")
    return page


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"swarm-{name}.png"))
    page.screenshot(path=str(ARTIFACTS / f"swarm-{name}-full.png"), full_page=True)


def test_swarm_page_follows_a_real_agent_live(portal_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    researcher = make_user("rosa@example.org", Role.RESEARCHER)
    volunteer = make_user("vera@example.org")
    admin = make_user("admin@example.org", is_staff=True, is_superuser=True)
    project = make_project(researcher, "live-digits")
    _, code = swarm_services.join_code_create(project=project, user=volunteer, now=timezone.now())
    errors = PageErrors()
    env = portal_env()
    processes: list[subprocess.Popen] = []
    node_id = ""
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = log_in(browser, portal_url, volunteer, errors)
                page.goto(f"{portal_url}/projects/{project.slug}/swarm/")
                page.wait_for_selector("[data-live-status][data-state=live]", timeout=20_000)
                assert all(el.is_hidden() for el in page.locator("[data-live-fallback]").all())
                assert page.locator("[data-part=heatmap]").get_attribute("data-holes") == "4"
                health = log_in(browser, portal_url, admin, errors)
                health.goto(f"{portal_url}/swarm/health/")
                health.wait_for_selector(
                    f"[data-project={project.slug}] [data-live-indicator][data-state=live]"
                )

                agent_log = (tmp_path / "agent.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "node_agent",
                            "join",
                            portal_url,
                            code,
                            "--data-dir",
                            str(tmp_path / "agent"),
                            "--experts",
                            "1",
                            "--heartbeat-period",
                            "2",
                            "--listen",
                            "127.0.0.1:0",
                            "--rtc-loopback-only",
                            "--seed",
                            "1",
                        ],
                        cwd=REPO_DIR,
                        env=env,
                        stdout=agent_log,
                        stderr=subprocess.STDOUT,
                    )
                )
                row = page.wait_for_selector("[data-part=nodes] tr[data-state=online]", timeout=60_000)
                node_id = row.get_attribute("data-node-id")
                assert "is-mine" in (row.get_attribute("class") or ""), (
                    "the volunteer's own node is highlighted"
                )
                graph = page.locator("[data-part=graph]")
                assert node_id in (graph.get_attribute("data-graph-ids") or "").split()
                health.wait_for_function(
                    f"document.querySelector('[data-project={project.slug}] [data-stat=online]')"
                    ".textContent === '1'"
                )
                shot(page, "agent-online")

                observer_log = (tmp_path / "observer.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "manage.py", "observe_swarm", "--listen", "127.0.0.1:0"],
                        cwd=REPO_DIR,
                        env=env,
                        stdout=observer_log,
                        stderr=subprocess.STDOUT,
                    )
                )
                page.wait_for_function(
                    "Number(document.querySelector('[data-part=heatmap]').dataset.covered) >= 1",
                    timeout=60_000,
                )
                # Covered means serving: the observer's `info` probe reached the agent over WebRTC.
                page.wait_for_selector(
                    f"[data-part=nodes] tr[data-node-id='{node_id}'] td.reach[data-reach=serving]",
                    timeout=30_000,
                )
                shot(page, "heatmap-covered")

                stop(processes[0])
                page.wait_for_selector(
                    f"[data-part=nodes] tr[data-node-id='{node_id}'][data-state=offline]", timeout=60_000
                )
                assert f"{node_id}:offline" in (graph.get_attribute("data-graph-states") or "")
                page.wait_for_function(
                    "Number(document.querySelector('[data-part=heatmap]').dataset.covered) === 0",
                    timeout=60_000,
                )
                shot(page, "agent-offline")
                shot(health, "health")
            finally:
                browser.close()
    finally:
        for process in processes:
            stop(process)
    assert errors.errors == []
    assert Node.objects.get(node_id=node_id).state == "offline"


def test_the_replicas_panel_follows_heartbeats_and_its_ages_tick_without_a_reload(portal_url: str) -> None:
    """A server's heartbeat carrying replica states fills the panel live; the age then moves on its own."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(REPO_DIR / "tests" / "platform" / "live"))
    from live_agents import SimulatedNode, http_poster

    researcher = make_user("rosa@example.org", Role.RESEARCHER)
    volunteer = make_user("vera@example.org")
    project = make_project(researcher, "replicas-live")
    _, code = swarm_services.join_code_create(project=project, user=volunteer, now=timezone.now())
    server = SimulatedNode(post=http_poster(portal_url)).join(code)
    errors = PageErrors()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors.watch(page)
            page.goto(f"{portal_url}/projects/{project.slug}/swarm/")
            page.wait_for_selector("[data-live-status][data-state=live]", timeout=30_000)
            panel = page.locator("[data-part=replicas-panel]")
            assert panel.locator("[data-part=replicas-empty]").is_visible()
            assert "0 completed, 0 failed" in panel.locator("[data-part=replicas-summary]").inner_text()
            page.evaluate("() => { window.notReloaded = true; }")

            server.heartbeat(
                experts=["ffn.0.0", "ffn.0.1"],
                replica_states=[
                    {"uid": "ffn.0.0", "step": 120, "averaged_age_s": 1.0},
                    {"uid": "ffn.0.1", "step": 7, "averaged_age_s": None},
                ],
                averaging_rounds=(41, 2),
            )
            row = panel.locator("[data-part=replicas] tr[data-uid='ffn.0.0']")
            row.wait_for(timeout=15_000)
            assert "41 completed, 2 failed" in panel.locator("[data-part=replicas-summary]").inner_text()
            cells = row.locator("td")
            assert [cells.nth(i).inner_text() for i in range(3)] == ["ffn.0.0", "0", "120"]
            never = panel.locator("[data-part=replicas] tr[data-uid='ffn.0.1'] td").nth(3)
            assert never.inner_text() == "never (no other replica)"
            assert panel.locator("[data-part=replicas] tr").first.get_attribute("data-uid") == "ffn.0.1"
            # The age is computed in the browser from when the state was averaged: it ticks between
            # heartbeats (none is sent meanwhile).
            page.wait_for_function(
                """() => /^([3-9]|[1-9][0-9]) s ago$/.test(document.querySelector(
                    "[data-part=replicas] tr[data-uid='ffn.0.0'] td:last-child").textContent)""",
                timeout=15_000,
            )
            assert page.evaluate("() => window.notReloaded") is True
            panel.scroll_into_view_if_needed()
            shot(page, "replicas-live")
        finally:
            browser.close()
    assert errors.errors == []


def test_a_thousand_nodes_stay_readable(portal_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    researcher = make_user("rosa@example.org", Role.RESEARCHER)
    volunteer = make_user("vera@example.org")
    project = make_project(researcher, "big-swarm", grid="32x32")
    now = timezone.now()
    states = ["online"] * 700 + ["offline"] * 200 + ["unreachable"] * 100
    Node.objects.bulk_create(
        Node(
            project=project, user=volunteer, public_key=f"{i:064x}", node_id=f"{i:040x}", state=state,
            role="trainer" if i % 100 == 0 else "server", samples_per_s=float(i % 37) * 10,
            experts=[f"ffn.{i % 32}.{(i // 32) % 32}"], last_heartbeat_at=now,
        )
        for i, state in enumerate(states)
    )  # fmt: skip
    errors = PageErrors()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = log_in(browser, portal_url, volunteer, errors)
            started = time.monotonic()
            page.goto(f"{portal_url}/projects/{project.slug}/swarm/")
            page.wait_for_selector("[data-live-status][data-state=live]", timeout=30_000)
            graph = page.locator("[data-part=graph]")
            page.wait_for_function(
                "document.querySelector('[data-part=graph]').dataset.graphNodes !== undefined"
            )
            drawn, folded = (
                int(graph.get_attribute("data-graph-nodes")),
                int(graph.get_attribute("data-graph-folded")),
            )
            assert drawn + folded == 1000 and drawn <= 300
            assert page.locator("[data-part=nodes] tr").count() == 200
            assert "of 1000 nodes" in page.locator("[data-part=nodes-note]").inner_text()
            # The tab stays responsive: a round trip through the page's event loop is quick.
            page.evaluate("() => new Promise((resolve) => setTimeout(resolve, 0))")
            assert time.monotonic() - started < 60
            page.wait_for_timeout(1500)  # let the layout settle for the screenshot
            shot(page, "thousand-nodes")
            page.locator("[data-part=graph]").scroll_into_view_if_needed()
            shot(page, "thousand-nodes-graph")
        finally:
            browser.close()
    assert errors.errors == []


def test_the_page_says_when_the_connection_is_lost_and_recovers_by_itself(daphne: Daphne) -> None:
    from playwright.sync_api import sync_playwright

    researcher = make_user("rosa@example.org", Role.RESEARCHER)
    project = make_project(researcher, "flaky-portal")
    errors = PageErrors()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors.watch(page)
            page.goto(f"{daphne.url}/projects/{project.slug}/swarm/")
            page.wait_for_selector("[data-live-status][data-state=live]", timeout=20_000)
            daphne.stop()
            status = page.wait_for_selector("[data-live-status][data-state=lost]", timeout=20_000)
            assert "Connection lost" in status.inner_text()
            assert "is-stale" in (page.locator("[data-live-swarm]").get_attribute("class") or "")
            shot(page, "connection-lost")
            daphne.start()
            page.wait_for_selector("[data-live-status][data-state=live]", timeout=60_000)
        finally:
            browser.close()
    # A browser logs a failed WebSocket handshake while the portal is down; that is the outage itself.
    assert [e for e in errors.errors if "WebSocket" not in e] == []


def test_without_javascript_the_pages_show_server_figures_and_never_connecting(portal_url: str) -> None:
    from playwright.sync_api import sync_playwright

    researcher = make_user("rosa@example.org", Role.RESEARCHER)
    admin = make_user("admin@example.org", is_staff=True, is_superuser=True)
    project = make_project(researcher, "no-script")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
            page = context.new_page()
            page.goto(f"{portal_url}/accounts/login/")
            page.fill("input[name=username]", admin.email)
            page.fill("input[name=password]", PASSWORD)
            page.click("form button[type=submit]")
            page.goto(f"{portal_url}/projects/{project.slug}/swarm/")
            assert page.locator("[data-live-swarm]").is_hidden()
            assert "Connecting" not in page.inner_text("body")
            assert "needs JavaScript" in page.inner_text("body")
            assert page.locator("[data-live-fallback] [data-stat=covered]").is_visible()
            shot(page, "no-javascript")
            page.goto(f"{portal_url}/swarm/health/")
            assert page.locator(f"[data-project={project.slug}] [data-stat=online]").inner_text() == "0"
            assert page.locator("[data-live-indicator]").count() == 0
        finally:
            browser.close()
