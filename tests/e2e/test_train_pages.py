"""Issue 13 in Chromium: the owner's Train page (at 390 px, with its copy button), staff unbanning a user
after a confirmation, and the swarm page's charts drawing a series per trainer run (a restarted trainer
is a new series; a new run arriving live adds one without a reload).

One Daphne (Redis channel layer) and one browser serve every check; any JavaScript error or HTTP error on
any page fails the test. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.utils import timezone

from node_agent.identity import Identity
from node_agent.portal.client import PortalClient
from node_agent.portal.schemas import MetricPoint, MetricsBody
from swarm import services
from swarm.models import CodePurpose, Node, NodeState, ProjectSwarm, TrainingMetric, UserBan
from tests.e2e.test_admin_and_mobile_pages import DESKTOP, PHONE, a_node, log_in, overflow, read_db, shot
from tests.e2e.test_swarm_page import CHROMIUM, CHROMIUM_ARGS, PageErrors, make_project, make_user, portal_env
from tests.processes import serving_portal

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def trainer_run(node: Node, run: str, steps: range, start: float) -> None:
    """A trainer run's loss and accuracy as its metrics reports leave them (one point per 2 s)."""
    TrainingMetric.objects.bulk_create(
        TrainingMetric(
            project=node.project,
            node=node,
            run=run,
            step=step,
            loss=2.0 / step,
            accuracy=min(1.0, step / 60),
            samples_per_s=50.0,
            experts_answered=4,
            experts_failed=0,
            timestamp=datetime.fromtimestamp(start + 2 * i, tz=UTC),
        )
        for i, step in enumerate(steps)
    )


def report_live_run(url: str, project, owner) -> str:
    """A third trainer joins with a Train code and reports a run over the real metrics API."""
    identity = Identity.generate()
    code = services.join_code_create(
        project=project, user=owner, now=timezone.now(), purpose=CodePurpose.TRAIN
    )[1]
    client = PortalClient(url)
    credential = client.join(identity, code, "0.1.0", "Linux").data["credential"]
    now = time.time()
    points = [
        MetricPoint(run="live0run", step=step, loss=1.0 / step, accuracy=0.5, samples_per_s=10.0,
                    experts_answered=2, experts_failed=0, timestamp=now - 10 + step)
        for step in (2, 4, 6)
    ]  # fmt: skip
    client.metrics(
        identity, MetricsBody(credential=credential, node_id=identity.node_id.hex(), metrics=points)
    )
    return identity.node_id.hex()


def test_train_page_user_unban_and_a_chart_series_per_run(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from swarm.wheel import build_agent_wheel

    researcher = make_user("rosa@example.org", "researcher")
    volunteer = make_user("vera@example.org")
    make_user("admin@example.org", is_staff=True, is_superuser=True)
    project = make_project(researcher, "runs-digits", grid="2x2")
    ProjectSwarm.objects.create(project=project, observed_at=timezone.now())
    server = a_node(project, volunteer, NodeState.ONLINE)
    trainer = a_node(project, researcher, NodeState.OFFLINE)
    start = time.time() - 120
    trainer_run(trainer, "aaaa1111", range(10, 60, 10), start)
    trainer_run(
        trainer, "bbbb2222", range(10, 40, 10), start + 12
    )  # restarted: its steps count from 10 again
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
            # The owner's Train page on a phone: from the project page, a POST, the command, a copy button.
            phone = browser.new_context(viewport=PHONE, permissions=["clipboard-read", "clipboard-write"])
            rosa = log_in(phone, url, researcher.email, errors)
            rosa.goto(f"{url}/projects/{project.slug}/")
            rosa.click("[data-train-button]")
            rosa.wait_for_selector("[data-train-create]")
            assert rosa.locator("[data-join-command]").count() == 0, "a GET shows no code"
            rosa.click("[data-train-create]")
            rosa.wait_for_selector("[data-join-command]")
            command = rosa.locator("[data-join-command]").inner_text().strip()
            assert "--extra-index-url https://download.pytorch.org/whl/cpu " in command
            assert command.endswith(f"colearn-agent/bin/node-agent train --portal {url} --join-code "
                                    + rosa.locator("[data-join-code]").inner_text().strip())  # fmt: skip
            assert overflow(rosa) <= 0, "the Train page scrolls sideways at 390 px"
            rosa.click("[data-copy-target='#command-linux']")
            rosa.wait_for_function(
                "document.querySelector(\"[data-copy-target='#command-linux']\").textContent === 'Copied'"
            )
            assert rosa.evaluate("navigator.clipboard.readText()").strip() == command
            shot(rosa, "train-390")

            # Staff ban the volunteer (every node of theirs), then unban them, each after a confirmation.
            admin = log_in(browser.new_context(viewport=DESKTOP), url, "admin@example.org", errors)
            admin.goto(f"{url}/swarm/health/")
            admin.click(f"tr[data-node-id='{server.node_id}'] a:has-text('Ban user')")
            admin.click("[data-confirm-submit]")
            admin.click(f"tr[data-node-id='{server.node_id}'] a:has-text('Unban user')")
            admin.wait_for_selector("[data-confirm-submit]")
            assert read_db(lambda: UserBan.objects.filter(user=volunteer).exists()), "asking changes nothing"
            shot(admin, "confirm-unban-user")
            admin.click("[data-confirm-submit]")
            admin.wait_for_selector(f"tr[data-node-id='{server.node_id}'] a:has-text('Ban node')")
            assert not read_db(lambda: UserBan.objects.filter(user=volunteer).exists())
            assert read_db(lambda: Node.objects.get(pk=server.pk).state) == NodeState.OFFLINE

            # The swarm page: a loss and an accuracy series per trainer run, and a new run arrives live.
            desk = log_in(browser.new_context(viewport=DESKTOP), url, researcher.email, errors)
            desk.goto(f"{url}/projects/{project.slug}/swarm/")
            desk.wait_for_selector("[data-live-status][data-state=live]", timeout=20_000)
            desk.wait_for_function("document.querySelector('[data-live-swarm]').dataset.trainingRuns === '2'")
            legend = "[data-part='chart-loss'] .u-legend .u-series th"
            assert desk.locator(legend).all_text_contents()[1:] == [
                f"run aaaa11 · {trainer.node_id[:8]}", f"run bbbb22 · {trainer.node_id[:8]}"
            ]  # fmt: skip
            live_node = read_db(lambda: report_live_run(url, project, researcher))
            desk.wait_for_function("document.querySelector('[data-live-swarm]').dataset.trainingRuns === '3'")
            labels = desk.locator(legend).all_text_contents()
            assert labels[-1] == f"run live0r · {live_node[:8]}", labels
            assert desk.locator("[data-part='chart-accuracy'] .u-legend .u-series").count() == 4
            shot(desk, "swarm-runs")
        finally:
            browser.close()
    assert not errors.errors, errors.errors
