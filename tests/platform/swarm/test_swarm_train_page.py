"""The owner's Train page: a POST creates a one-time trainer code and shows the exact command (the Join page's
builder and template pieces, ending in `node-agent train`); only the project's managers get it; the owner's
trainer joins without approval; a spent trainer code says how to restart the trainer. Real views and URLs."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from node_agent.identity import Identity
from projects.models import Project
from swarm import services
from swarm.models import CodePurpose, JoinCode, Node, NodeState
from swarm.views import TORCH_CPU_INDEX
from tests.platform.swarm.test_swarm_join_check import AGENT, check, shown

pytestmark = pytest.mark.django_db


def test_the_owner_gets_a_train_command_with_a_fresh_code(
    logged_in: Any, researcher: Any, project: Project, wheel_settings: Any
) -> None:
    owner = logged_in(researcher)
    detail = owner.get(project.get_absolute_url()).content.decode()
    assert f'href="/projects/{project.slug}/train/" data-train-button' in detail
    offer = owner.get(f"/projects/{project.slug}/train/")
    assert offer.status_code == 200 and "data-train-create" in offer.content.decode()
    assert not JoinCode.objects.exists()  # a GET creates nothing
    page = owner.post(f"/projects/{project.slug}/train/").content.decode()
    row = JoinCode.objects.get()
    assert row.purpose == CodePurpose.TRAIN and row.user == researcher
    cpu, gpu = shown(page, "data-join-command"), shown(page, "data-join-command-gpu")
    code = cpu.rsplit(" ", 1)[1]
    wheel = next(wheel_settings.glob("*.whl")).name
    for command in (cpu, gpu):
        check_step, venv, install, train = command.split(" && ")
        assert (
            check_step.endswith(f"/api/v1/agent/join-check {code}")
            and venv == "python3 -m venv colearn-agent"
        )
        assert install.endswith(f"/agent/{wheel}")
        assert train == f"colearn-agent/bin/node-agent train --portal http://testserver --join-code {code}"
    assert f"--extra-index-url {TORCH_CPU_INDEX} " in cpu and "--extra-index-url" not in gpu
    assert "node-agent train --portal http://testserver</code> without a code" in page
    assert "data-copy-target" in page and "SHA256SUMS" in page
    assert check(code).json()["ok"] is True


def test_only_the_projects_managers_may_train_it(
    logged_in: Any, client: Any, volunteer: Any, staff: Any, project: Project, make_project: Any,
    wheel_settings: Any,
) -> None:  # fmt: skip
    assert client.get(f"/projects/{project.slug}/train/").status_code == 302  # log in first
    stranger = logged_in(volunteer)
    assert "data-train-button" not in stranger.get(project.get_absolute_url()).content.decode()
    assert stranger.get(f"/projects/{project.slug}/train/").status_code == 403
    assert stranger.post(f"/projects/{project.slug}/train/").status_code == 403
    with pytest.raises(PermissionDenied):
        services.join_code_create(
            project=project, user=volunteer, now=timezone.now(), purpose=CodePurpose.TRAIN
        )
    assert not JoinCode.objects.exists()
    assert logged_in(staff).post(f"/projects/{project.slug}/train/").status_code == 200
    paused = make_project(title="Paused", launch=True)
    paused.status = "paused"
    paused.save()
    page = logged_in(paused.owner).post(f"/projects/{paused.slug}/train/").content.decode()
    assert "activate or resume it to train" in page and JoinCode.objects.count() == 1


def test_the_owners_trainer_joins_an_approval_project_at_once_and_a_spent_code_says_how_to_restart(
    researcher: Any, make_project: Any, signed_post: Any, wheel_settings: Any
) -> None:
    gated = make_project(title="Gated", join_policy="approval")
    _, code = services.join_code_create(
        project=gated, user=researcher, now=timezone.now(), purpose=CodePurpose.TRAIN
    )
    assert signed_post("/api/v1/agent/join", Identity.generate(), {"code": code, **AGENT}).status_code == 201
    assert Node.objects.get(project=gated).state == NodeState.REGISTERED
    answer = check(code).json()
    assert answer["error"] == "code_used"
    assert "run `node-agent train --portal http://testserver` without a code" in answer["detail"]


def test_server_rendered_charts_draw_a_line_per_run() -> None:
    from swarm.charts import split_runs, time_polylines

    points = [("a/r1", 10, 1), ("b/", 10, 2), ("a/r1", 20, 3), ("a/r2", 10, 4), ("b/", 20, 5), ("b/", 10, 6)]
    assert split_runs(points) == [[1, 3], [2, 5], [4], [6]], (
        "a new run id, or a fall of the step, is a new line"
    )
    lines = time_polylines(
        [[(0.0, 1.0), (10.0, 0.0)], [(5.0, 0.5)], [(10.0, 1.0), (20.0, 0.5)]], width=20, height=10
    )
    assert lines == ["3.0,3.0 10.0,7.0", "10.0,3.0 17.0,5.0"], (
        "one shared time and value scale; lone points drawn none"
    )
    assert time_polylines([[(0.0, float("nan"))]]) == []


def test_an_own_text_language_model_tells_its_owner_to_add_text(
    logged_in: Any, researcher: Any, project: Project, wheel_settings: Any
) -> None:
    owner = logged_in(researcher)
    assert "data-own-text" not in owner.post(f"/projects/{project.slug}/train/").content.decode()
    Project.objects.filter(pk=project.pk).update(task="lm", lm_corpus="python-stdlib")
    assert "data-own-text" not in owner.post(f"/projects/{project.slug}/train/").content.decode()
    Project.objects.filter(pk=project.pk).update(lm_corpus="own")
    page = owner.post(f"/projects/{project.slug}/train/").content.decode()
    assert "data-own-text" in page and "<code>--text PATH</code>" in page
