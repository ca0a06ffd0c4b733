"""Grid size is bounded by what a swarm can serve, and no view pays for every cell of a grid: a project
made before the limit (1024x1024x1024x1024) is served in bounded memory and bytes by the API, the swarm
page, the health page, the live snapshot and the observer."""

from __future__ import annotations

import secrets
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from live.selectors import snapshot_parts
from projects.forms import ProjectCreateForm
from projects.lifecycle import ProjectStatus
from projects.models import Project
from swarm.grids import Grids
from swarm.models import Node, NodeState, ProjectSwarm
from swarm.observations import observation_record
from swarm.probe_schedule import ProbeOutcome
from swarm.reconcile import cell_uid, grid_uids

pytestmark = pytest.mark.django_db
HUGE = "1024x1024x1024x1024"
HUGE_CELLS = 1024**4


def peak_mib(action: Callable[[], Any]) -> tuple[Any, float]:
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("shape", [HUGE, "512x512", "1024x65", "256x257"])
def test_the_form_and_the_service_refuse_a_grid_beyond_the_cell_limit(
    shape: str, project_fields: dict[str, Any], make_project: Any
) -> None:
    form = ProjectCreateForm(data={**project_fields, "grid_shape": shape})
    assert not form.is_valid() and "at most 65,536 cells" in str(form.errors["grid_shape"])
    with pytest.raises(ValidationError):
        make_project(grid_shape=shape)
    assert not Project.objects.filter(grid_shape=shape).exists()


def test_the_limit_comes_from_settings(project_fields: dict[str, Any], settings: Any) -> None:
    assert ProjectCreateForm(data={**project_fields, "grid_shape": "256x256"}).is_valid()
    settings.PROJECT_MAX_GRID_CELLS = 100
    assert not ProjectCreateForm(data={**project_fields, "grid_shape": "16x16"}).is_valid()


@pytest.fixture
def huge_project(researcher: Any, volunteer: Any) -> Project:
    """A project stored before grids were bounded (written straight to the table, as it was then)."""
    project = Project.objects.create(
        owner=researcher, title="Huge", slug="huge", grid_shape=HUGE, status=ProjectStatus.ACTIVE
    )
    ProjectSwarm.objects.create(
        project=project, coverage={"ffn.0.0.0.1": 2, "ffn.0.0.0.0": 0, "ffn.1023.1023.1023.1023": 1}
    )
    for _ in range(3):
        key = secrets.token_hex(32)
        Node.objects.create(
            project=project, user=volunteer, public_key=key, node_id=key[:40], state=NodeState.ONLINE
        )
    return project


def test_the_swarm_api_of_a_huge_grid_is_bounded(client: Any, huge_project: Project) -> None:
    response, peak = peak_mib(lambda: client.get("/api/v1/projects/huge/swarm"))
    assert response.status_code == 200 and len(response.content) < 64 * 1024 and peak < 16
    coverage = response.json()["coverage"]
    assert (
        coverage["total"] == HUGE_CELLS and coverage["covered"] == 2 and coverage["holes"] == HUGE_CELLS - 2
    )
    assert coverage["cells"] == {"ffn.0.0.0.1": 2, "ffn.1023.1023.1023.1023": 1}
    assert coverage["hole_uids"][:3] == ["ffn.0.0.0.0", "ffn.0.0.0.2", "ffn.0.0.0.3"]
    assert len(coverage["hole_uids"]) == 100 and coverage["holes_page"]["more"] is True
    last = client.get(f"/api/v1/projects/huge/swarm?holes_offset={HUGE_CELLS - 5}&holes_limit=5000").json()
    assert last["coverage"]["hole_uids"] == [
        cell_uid("ffn", (1024,) * 4, index) for index in range(HUGE_CELLS - 4, HUGE_CELLS - 1)
    ]
    assert last["coverage"]["holes_page"]["limit"] == 1000 and last["coverage"]["holes_page"]["more"] is False


def test_api_paging_refuses_nonsense(client: Any, huge_project: Project) -> None:
    for query in ("holes_offset=-1", "nodes_limit=abc", "cells_offset=1e9", f"holes_offset={'9' * 40}"):
        response = client.get(f"/api/v1/projects/huge/swarm?{query}")
        assert response.status_code == 400 and response.json()["error"] == "invalid"
    page = client.get("/api/v1/projects/huge/nodes?offset=1&limit=1").json()
    assert len(page["nodes"]) == 1 and page["nodes_page"] == {
        "offset": 1,
        "limit": 1,
        "count": 3,
        "more": True,
    }


def test_the_swarm_and_health_pages_of_a_huge_grid_are_bounded(
    client: Any, logged_in: Any, staff: Any, huge_project: Project
) -> None:
    page, peak = peak_mib(lambda: client.get("/projects/huge/swarm/"))
    text = page.content.decode()
    assert page.status_code == 200 and len(text) < 256 * 1024 and peak < 16
    assert f"2 of {HUGE_CELLS} cells served" in text and "ffn.0.0.0.0" in text
    health, peak = peak_mib(lambda: logged_in(staff).get("/swarm/health/"))
    assert health.status_code == 200 and f"2/{HUGE_CELLS}" in health.content.decode() and peak < 16


def test_the_live_snapshot_of_a_huge_grid_lists_covered_cells_only(huge_project: Project) -> None:
    parts, peak = peak_mib(lambda: snapshot_parts(project=huge_project))
    assert parts["coverage"]["cells"] == {"ffn.0.0.0.1": 2, "ffn.1023.1023.1023.1023": 1} and peak < 16


def test_the_observer_records_a_huge_grid_in_bounded_memory(huge_project: Project) -> None:
    node = Node.objects.filter(project=huge_project).first()
    uids = ("ffn.5.6.7.8", "ffn.1024.0.0.0", "ffn.x.0.0.0")
    announced = {node.node_id: set(uids)}
    probes = {node.node_id: ProbeOutcome("serving", uids, "", timezone.now().timestamp())}
    _, peak = peak_mib(
        lambda: observation_record(
            project_id=huge_project.pk, announced=announced, error="", now=timezone.now(), probes=probes
        )
    )
    swarm = ProjectSwarm.objects.get(project=huge_project)
    assert swarm.coverage == {"ffn.5.6.7.8": 1} and peak < 16
    assert huge_project.swarm_alerts.get(key="coverage:holes").message.startswith(f"{HUGE_CELLS - 1} of")


def test_coverage_helpers_agree_with_enumerating_a_small_grid() -> None:
    dims = (3, 5)
    every = grid_uids("ffn", dims)
    announced = {"a": {"ffn.0.1", "ffn.2.4", "ffn.3.0", "ffn.01.1"}, "b": {"ffn.2.4"}}
    grids = Grids(prefixes=("ffn",), dims=dims)
    covered = grids.coverage(announced)
    assert covered == {"ffn.0.1": 1, "ffn.2.4": 2}
    holes = [uid for uid in every if uid not in covered]
    for offset in range(len(every) + 1):
        for limit in (0, 1, 4, 20):
            assert grids.holes(covered, offset=offset, limit=limit) == holes[offset : offset + limit]
