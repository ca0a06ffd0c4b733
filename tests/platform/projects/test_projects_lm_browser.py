"""A language-model project created in a real browser: the form's figures follow the typing (the built JS),
the page states the model's scale, and the swarm page charts bits per byte instead of accuracy."""

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
    env = celery_worker_env() | {"DJANGO_SETTINGS_MODULE": "config.settings_test"}
    with serving_portal("daphne", cwd=REPO_DIR / "platform", env=env, log=tmp_path / "daphne.log") as url:
        yield url


def test_a_language_model_is_created_with_live_figures(portal_url: str, researcher: User) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{portal_url}/accounts/login/")
            page.fill("input[name=username]", researcher.email)
            page.fill("input[name=password]", PASSWORD)
            page.click("form button[type=submit]")
            page.goto(f"{portal_url}/projects/new/")
            page.wait_for_selector("[data-model-figures][data-live=true]", timeout=15_000)
            figure = lambda name: page.locator(f'[data-model-figures] [data-figure="{name}"]')  # noqa: E731
            expect(page.locator('[data-field-name="lm_blocks"]')).to_be_hidden()
            expect(figure("grids")).to_have_text("1 grid of 256 experts")  # the 16x16 default

            page.check("input[name=task][value=lm]")
            expect(page.locator('[data-field-name="lm_blocks"]')).to_be_visible()
            expect(page.locator('[data-field-name="dataset"]')).to_be_hidden()
            page.fill("input[name=title]", "Byte LM in the browser")
            page.fill("input[name=hidden_size]", "1024")
            page.fill("input[name=lm_blocks]", "4")
            page.fill("input[name=lm_heads]", "6")  # 1024 is no multiple of 6: the figures say so
            expect(figure("problem")).to_contain_text("not a multiple of 6 heads")
            page.fill("input[name=lm_heads]", "8")
            expect(figure("problem")).to_be_hidden()
            expect(figure("grids")).to_have_text("4 grids of 256 experts")
            expect(figure("total-experts")).to_have_text("1024")
            expect(figure("total-parameters")).to_have_text("8.6 billion")
            expect(figure("memory-per-expert")).to_contain_text("128.1 MiB")
            expect(figure("volunteer")).to_contain_text("hosts 4 experts by default, 512.4 MiB")
            page.fill("input[name=grid_shape]", "16x")
            expect(figure("problem")).to_contain_text("Invalid grid shape")
            page.fill("input[name=grid_shape]", "16x16")

            page.click("form.project-form button[type=submit]")
            page.wait_for_url(f"{portal_url}/projects/byte-lm-in-the-browser/")
            expect(page.locator("[data-field=total-parameters]")).to_have_text("8.6 billion")
            expect(page.locator("[data-field=volunteer]")).to_contain_text("hosts 4 experts by default")
            expect(page.locator("[data-field=lm-shape]")).to_contain_text("4 blocks")

            page.goto(f"{portal_url}/projects/byte-lm-in-the-browser/swarm/")
            page.wait_for_selector("[data-live-swarm][data-live-state=live]", timeout=15_000)
            expect(page.locator('[data-part="chart-bpb"] .u-title')).to_have_text("Bits per byte")
            expect(page.locator('[data-live-stat-detail="bpb"]')).to_have_text("training bits per byte")
            assert page.locator('[data-part="chart-accuracy"]').count() == 0
        finally:
            browser.close()
