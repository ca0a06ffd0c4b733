"""The live listing end to end: Daphne, a real browser running the built JS, and a second browser.

One browser watches /projects/; another (a researcher) creates and pauses a project through the forms;
the first sees the card appear and its badge change without reloading.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accounts.models import User
from tests.processes import serving_portal

REPO_DIR = Path(__file__).resolve().parents[3]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "a-Strong-passphrase-42"

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def portal_url(celery_worker_env: Callable[[], dict[str, str]], tmp_path: Path) -> Iterator[str]:
    """Daphne serving config.asgi on a free port, on this test's database."""
    # Test settings, so Daphne understands the fast password hashes the fixtures wrote.
    env = celery_worker_env() | {"DJANGO_SETTINGS_MODULE": "config.settings_test"}
    with serving_portal("daphne", cwd=REPO_DIR / "platform", env=env, log=tmp_path / "daphne.log") as url:
        yield url


def card_shape(page) -> dict:
    return page.eval_on_selector(
        "[data-slug=seen-live]",
        """card => ({
            elements: [card, ...card.querySelectorAll("*")]
                .map((e) => `${e.tagName}.${e.className.replace(" flash", "")}`),
            text: card.innerText.replace(/\\s+/g, " ").trim(),
            href: card.querySelector("h3 a").getAttribute("href"),
        })""",
    )


def test_listing_updates_live_in_the_browser(portal_url: str, researcher: User) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            viewer = browser.new_page()
            viewer.goto(f"{portal_url}/projects/")
            viewer.wait_for_selector("[data-live-indicator][data-state=live]", timeout=15_000)

            author = browser.new_context().new_page()
            author.goto(f"{portal_url}/accounts/login/")
            author.fill("input[name=username]", researcher.email)
            author.fill("input[name=password]", PASSWORD)
            author.click("form button[type=submit]")
            author.goto(f"{portal_url}/projects/new/")
            author.fill("input[name=title]", "Seen live")
            author.fill("input[name=grid_shape]", "8x8")
            author.click("form.project-form button[type=submit]")
            author.wait_for_url(f"{portal_url}/projects/seen-live/")

            card = viewer.wait_for_selector("[data-slug=seen-live]", timeout=15_000)
            assert "grid 8x8" in card.inner_text()
            author.click("button:text('Pause')")
            viewer.wait_for_selector("[data-slug=seen-live] .badge-paused", timeout=15_000)
            # The card added live is the server's own card: the same elements, classes and text.
            live_card = card_shape(viewer)
            viewer.reload()
            assert card_shape(viewer) == live_card
            assert live_card["href"] == "/projects/seen-live/"
        finally:
            browser.close()
