"""A language model's coverage on the pages and the API: every block's grid counts, each block drawn."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Project
from swarm.models import Node
from swarm.observations import observation_record
from swarm.probe_schedule import ProbeOutcome

pytestmark = pytest.mark.django_db

BLOCK_1 = ["lm.b1.0.0", "lm.b1.0.1", "lm.b1.1.0", "lm.b1.1.1"]


@pytest.fixture
def project(make_project: Any) -> Project:
    """The project the swarm fixtures join: a language model of 2 blocks of 2x2 experts."""
    return make_project(
        title="Byte LM", task="lm", lm_blocks=2, lm_seq_len=64, lm_window=32, lm_heads=4, grid_shape="2x2"
    )


def observe_block_1_served(project: Project) -> Node:
    """The observer saw the joined node announce and serve block 1's cells and one of block 0's."""
    node = Node.objects.get()
    uids = (*BLOCK_1, "lm.b0.1.1")
    probes = {node.node_id: ProbeOutcome("serving", uids, "", time.time())}
    announced = {node.node_id: set(uids)}
    now = timezone.now()
    observation_record(project_id=project.pk, announced=announced, error="", now=now, probes=probes)
    return node


def test_the_swarm_page_counts_and_draws_every_block(
    client: Any, project: Project, joined: dict[str, Any]
) -> None:
    observe_block_1_served(project)
    text = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert 'data-stat="covered">5/8<' in text
    assert "Block 0's grid" not in text  # the note of when only block 0 counted
    blocks = re.findall(r'<figure class="coverage-block" data-grid="([^"]+)">', text)
    assert blocks == ["lm.b0", "lm.b1"]
    assert "block 0 <code" in text and "block 1 <code" in text
    cells = re.findall(r'class="cell cell-(\w+)" title="(lm\.b\d\.\d\.\d):', text)
    assert [uid for _, uid in cells] == [f"lm.b{b}.{r}.{c}" for b in (0, 1) for r in (0, 1) for c in (0, 1)]
    assert [kind for kind, _ in cells] == ["hole"] * 3 + ["one"] * 5
    assert "0 of 8 cells have two or more live replicas" in text


def test_the_api_and_the_health_page_count_every_block(
    client: Any, logged_in: Any, staff: Any, project: Project, joined: dict[str, Any]
) -> None:
    observe_block_1_served(project)
    coverage = client.get(f"/api/v1/projects/{project.slug}/swarm?holes_limit=2").json()["coverage"]
    assert (coverage["total"], coverage["covered"], coverage["holes"], coverage["announced"]) == (8, 5, 3, 5)
    assert list(coverage["cells"]) == ["lm.b0.1.1", *BLOCK_1]
    assert coverage["hole_uids"] == ["lm.b0.0.0", "lm.b0.0.1"] and coverage["holes_page"]["more"]
    page = logged_in(staff).get("/swarm/health/").content.decode()
    assert "5/8" in page and "<code>lm.b0.1.0</code>" in page
    assert "3 of 8 grid cells have no serving expert (in block 0)." in page


def test_a_classifier_keeps_one_unlabelled_grid(client: Any, make_project: Any) -> None:
    project = make_project(title="Digits", slug="digits")
    text = client.get(f"/projects/{project.slug}/swarm/").content.decode()
    assert re.findall(r'<figure class="coverage-block" data-grid="([^"]+)">', text) == ["ffn"]
    assert "block 0" not in text and text.count('class="cell cell-hole"') == 16
