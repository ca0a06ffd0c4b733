"""Issue 13, points 8 and 9 in Chromium: confirmations, unban and restore, the health page's login and its
"connecting" indicator, the swarm header's live DHT age, no horizontal overflow at 390 px, charts inside
their cards, the Join page's copy button, and sign-up listing every password error at once.

One Daphne (Redis channel layer, like production) and one browser serve every check; any JavaScript error
or HTTP error on any page fails the test. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
from django.utils import timezone

from node_agent.identity import Identity
from projects.models import Project
from swarm.models import Node, NodeState, ProjectSwarm
from tests.e2e.test_swarm_page import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    PageErrors,
    make_project,
    make_user,
    portal_env,
)
from tests.processes import serving_portal

T = TypeVar("T")

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
#: Records the health indicators' every text from the first paint on, before any script of the page runs.
RECORD_INDICATORS = """
window.__indicatorTexts = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('[data-live-indicator]')) {
    const last = window.__indicatorTexts[window.__indicatorTexts.length - 1];
    if (el.textContent && el.textContent !== last) window.__indicatorTexts.push(el.textContent);
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def a_node(project: Project, owner, state: str = NodeState.REGISTERED) -> Node:
    """A node row as the join service leaves it (the page under test only reads it)."""
    identity = Identity.generate()
    key, node_id = identity.public_key_bytes.hex(), identity.node_id.hex()
    return Node.objects.create(
        project=project, user=owner, public_key=key, node_id=node_id, state=state, experts=["ffn.0.0"]
    )


def read_db(query: Callable[[], T]) -> T:
    """Run a database read off the thread where Playwright's sync API keeps its event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(query).result(timeout=30)


def node_state(node: Node) -> str:
    return read_db(lambda: Node.objects.get(pk=node.pk).state)


def project_status(project: Project) -> str:
    return read_db(lambda: Project.objects.get(pk=project.pk).status)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"pages-{name}.png"), full_page=True)


def overflow(page) -> int:
    """How far the page is wider than its viewport (0: nothing scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def log_in(context, base_url: str, email: str, errors: PageErrors):
    page = context.new_page()
    errors.watch(page)
    page.goto(f"{base_url}/accounts/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("form button[type=submit]")
    page.wait_for_load_state("networkidle")
    return page


def test_admin_confirmations_and_pages_that_fit_a_phone(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from swarm.wheel import build_agent_wheel

    researcher = make_user("rosa@example.org", "researcher")
    volunteer = make_user("vera@example.org")
    make_user("admin@example.org", is_staff=True, is_superuser=True)
    project = make_project(researcher, "phone-digits", grid="4x4")
    ProjectSwarm.objects.create(project=project, observed_at=timezone.now())
    node = a_node(project, volunteer)
    build_agent_wheel(out_dir=tmp_path / "wheels")
    env = portal_env() | {"AGENT_WHEEL_DIR": str(tmp_path / "wheels")}
    errors = PageErrors()
    with (
        serving_portal("daphne", cwd=Path(__file__).resolve().parents[2] / "platform", env=env,
                       log=tmp_path / "daphne.log") as url,
        sync_playwright() as playwright,
    ):  # fmt: skip
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            anonymous = browser.new_context(viewport=PHONE).new_page()
            errors.watch(anonymous)
            # The health page sends a visitor to the portal's own login, not Django admin's.
            anonymous.goto(f"{url}/swarm/health/")
            assert anonymous.url.startswith(f"{url}/accounts/login/?next=")

            # Sign-up: one submit lists every password problem together with the others.
            anonymous.goto(f"{url}/accounts/signup/")
            anonymous.fill("input[name=email]", "new@example.org")
            anonymous.fill("input[name=display_name]", "Newcomer")
            anonymous.fill("input[name=password]", "1234")
            anonymous.fill("input[name=password_confirm]", "1235")
            anonymous.click("form button[type=submit]")
            field_errors = anonymous.locator(".field-error").all_text_contents()
            assert any("too short" in e for e in field_errors) and any(
                "too common" in e for e in field_errors
            )
            assert any("entirely numeric" in e for e in field_errors)
            assert any("differ" in e for e in field_errors) and overflow(anonymous) <= 0
            shot(anonymous, "signup-errors-390")

            # The volunteer's Join page on a phone: the checksum wraps; the command has a copy button.
            phone = browser.new_context(viewport=PHONE, permissions=["clipboard-read", "clipboard-write"])
            vera = log_in(phone, url, volunteer.email, errors)
            vera.goto(f"{url}/projects/{project.slug}/join/")
            vera.click("[data-join-create]")
            vera.wait_for_selector("[data-join-command]")
            assert overflow(vera) <= 0, "the Join page scrolls sideways at 390 px"
            command = vera.locator("[data-join-command]").inner_text().strip()
            vera.click("[data-copy-target='#command-linux']")
            vera.wait_for_function(
                "document.querySelector(\"[data-copy-target='#command-linux']\").textContent === 'Copied'"
            )
            assert vera.evaluate("navigator.clipboard.readText()").strip() == command
            shot(vera, "join-390")

            # Staff at 390 px: the health page fits, says "connecting" first and never "lost" on a load.
            admin_phone = browser.new_context(viewport=PHONE)
            admin_phone.add_init_script(RECORD_INDICATORS)
            admin = log_in(admin_phone, url, "admin@example.org", errors)
            admin.goto(f"{url}/swarm/health/")
            admin.wait_for_selector(f"[data-project={project.slug}] [data-live-indicator][data-state=live]")
            texts = admin.evaluate("window.__indicatorTexts")
            assert texts[0] == "connecting…" and texts[-1] == "live", texts
            assert not any("lost" in t for t in texts), texts
            assert overflow(admin) <= 0, "the health page scrolls sideways at 390 px"
            shot(admin, "health-390")

            # Ban asks first; cancelling changes nothing, confirming bans; staff can unban.
            admin.click(f"tr[data-node-id='{node.node_id}'] a:has-text('Ban node')")
            admin.wait_for_selector("[data-confirm-submit]")
            assert overflow(admin) <= 0
            shot(admin, "confirm-ban-390")
            admin.click("text=Cancel")
            assert node_state(node) == NodeState.REGISTERED
            admin.click(f"tr[data-node-id='{node.node_id}'] a:has-text('Ban node')")
            admin.fill("input[name=reason]", "testing the confirmation")
            admin.click("[data-confirm-submit]")
            admin.wait_for_selector(f"tr[data-node-id='{node.node_id}'] a:has-text('Unban')")
            assert node_state(node) == NodeState.BANNED
            admin.click(f"tr[data-node-id='{node.node_id}'] a:has-text('Unban')")
            admin.click("[data-confirm-submit]")
            admin.wait_for_selector(f"tr[data-node-id='{node.node_id}'] a:has-text('Ban node')")
            assert node_state(node) == NodeState.OFFLINE

            # The owner archives (after a confirmation); only staff restore.
            desk = browser.new_context(viewport=DESKTOP)
            rosa = log_in(desk, url, researcher.email, errors)
            rosa.goto(f"{url}/projects/{project.slug}/")
            rosa.click("a:has-text('Archive')")
            rosa.wait_for_selector("[data-confirm-submit]")
            assert project_status(project) == "active"
            rosa.click("[data-confirm-submit]")
            rosa.wait_for_load_state("networkidle")
            assert project_status(project) == "archived"
            assert rosa.locator("a:has-text('Restore')").count() == 0
            admin.goto(f"{url}/projects/{project.slug}/")
            admin.click("a:has-text('Restore')")
            admin.click("[data-confirm-submit]")
            admin.wait_for_load_state("networkidle")
            assert project_status(project) == "paused"

            # The swarm page at desktop width: the header's DHT age moves on; charts stay in their cards.
            rosa.goto(f"{url}/projects/{project.slug}/swarm/")
            rosa.wait_for_selector("[data-live-status][data-state=live]", timeout=20_000)
            first = rosa.locator("[data-live-observed]").inner_text()
            time.sleep(2.5)
            rosa.wait_for_function(
                f"document.querySelector('[data-live-observed]').textContent !== {first!r}", timeout=10_000
            )
            spill = rosa.evaluate(
                """[...document.querySelectorAll('.live-chart')].map((card) => {
                  const box = card.getBoundingClientRect();
                  const plot = card.querySelector('.uplot').getBoundingClientRect();
                  return Math.max(plot.right - box.right, box.left - plot.left);
                })"""
            )
            assert len(spill) == 3 and max(spill) <= 0, spill
            assert overflow(rosa) <= 0
            shot(rosa, "swarm-desktop")
            rosa.set_viewport_size(PHONE)
            rosa.wait_for_timeout(500)
            assert overflow(rosa) <= 0, "the swarm page scrolls sideways at 390 px"
            shot(rosa, "swarm-390")
        finally:
            browser.close()
    assert not errors.errors, errors.errors
