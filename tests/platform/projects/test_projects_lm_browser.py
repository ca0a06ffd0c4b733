"""A language-model project created in a real browser: the form's figures follow the typing (the built JS),
the page states the model's scale, and the swarm page charts bits per byte instead of accuracy."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from accounts.models import User
from projects.models import Project
from swarm.models import Node, TrainingMetric
from tests.e2e.test_admin_and_mobile_pages import read_db, shot
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


def trainer_reports(project: Project, owner: User) -> None:
    """20 training points and 4 validation points of one run, as the metrics API stores them."""
    node = Node.objects.create(
        project=project, user=owner, public_key="6" * 64, node_id="7" * 40, role="trainer"
    )
    start = time.time() - 60
    rows = [
        TrainingMetric(project=project, node=node, run="run1", kind=kind, step=step, loss=3.0, accuracy=0.4,
                       bits_per_byte=bpb, samples_per_s=100.0, experts_answered=4, experts_failed=0,
                       timestamp=datetime.fromtimestamp(start + step, tz=UTC))
        for step in range(20)
        for kind, bpb in (("train", 6.0 - step * 0.1), ("eval", 6.2 - step * 0.1))
        if kind == "train" or step % 5 == 4
    ]  # fmt: skip
    TrainingMetric.objects.bulk_create(rows)


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
            shot(page, "lm-project-form")

            page.click("form.project-form button[type=submit]")
            page.wait_for_url(f"{portal_url}/projects/byte-lm-in-the-browser/")
            expect(page.locator("[data-field=total-parameters]")).to_have_text("8.6 billion")
            expect(page.locator("[data-field=volunteer]")).to_contain_text("hosts 4 experts by default")
            expect(page.locator("[data-field=lm-shape]")).to_contain_text("4 blocks")
            shot(page, "lm-project-page")

            swarm_page = f"{portal_url}/projects/byte-lm-in-the-browser/swarm/"
            page.goto(swarm_page)
            page.wait_for_selector("[data-live-swarm][data-live-state=live]", timeout=15_000)
            expect(page.locator('[data-part="chart-bpb"] .u-title')).to_have_text("Bits per byte")
            expect(page.locator('[data-live-stat-detail="bpb"]')).to_have_text("training bits per byte")
            assert page.locator('[data-part="chart-accuracy"]').count() == 0

            # A trainer's run: training bits per byte at every step, validation every 5 steps.
            read_db(lambda: trainer_reports(Project.objects.get(slug="byte-lm-in-the-browser"), researcher))
            page.goto(swarm_page)
            page.wait_for_selector("[data-live-swarm][data-live-state=live]", timeout=15_000)
            legend = '[data-part="chart-bpb"] .u-legend .u-series th'
            expect(page.locator(legend)).to_have_count(3)
            assert page.locator(legend).all_text_contents()[1:] == [
                "train · run run1 · 77777777",
                "validation · run run1 · 77777777",
            ]
            assert page.locator('[data-part="chart-loss"] .u-legend .u-series').count() == 2, "train only"
            expect(page.locator('[data-live-stat="bpb"]')).to_have_text("4.100")
            expect(page.locator('[data-live-stat-detail="bpb"]')).to_have_text(
                "training bits per byte; validation 4.300 at step 19"
            )
            shot(page, "lm-swarm-page")
        finally:
            browser.close()
