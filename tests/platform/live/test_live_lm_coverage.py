"""A language model's coverage, live: every block's grid counts, through the real ASGI app and Redis.

A node joins through the join API and heartbeats through the telemetry API serving only block 1's cells;
the observer's reading of it (`observation_record`, with its probe's outcome) reaches a watching browser as
a `coverage.changed` diff with block 1's cells, and a fresh snapshot names both grids.
"""

from __future__ import annotations

import time

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from test_live_consumers import diffs_of, has_node, receive_until, watch

from projects.models import Project
from swarm import selectors
from swarm.models import Alert
from swarm.observations import observation_record
from swarm.probe_schedule import ProbeOutcome

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("redis_layer")]

BLOCK_1 = ["lm.b1.0.0", "lm.b1.0.1", "lm.b1.1.0", "lm.b1.1.1"]


@pytest.fixture
def project(make_project) -> Project:
    """A small language model: 2 blocks of 2x2 experts."""
    return make_project(
        title="Byte LM", task="lm", lm_blocks=2, lm_seq_len=64, lm_window=32, lm_heads=4, grid_shape="2x2"
    )


async def test_a_node_serving_only_block_1_makes_block_1_covered(project, volunteer, join_node) -> None:
    node = await database_sync_to_async(join_node)(project, volunteer)
    communicator = await watch(project.slug)
    try:
        snapshot = await communicator.receive_json_from(timeout=10)
        assert snapshot["project"]["grid"] == [2, 2]
        assert snapshot["project"]["grid_names"] == ["lm.b0", "lm.b1"]

        await database_sync_to_async(node.heartbeat)(experts=BLOCK_1, samples_per_s=40.0)
        await receive_until(communicator, has_node(node.node_id, "online"))
        serving = ProbeOutcome(state="serving", serving=tuple(BLOCK_1), reason="", at=time.time())
        await database_sync_to_async(observation_record)(
            project_id=project.pk,
            announced={node.node_id: set(BLOCK_1)},
            probes={node.node_id: serving},
            error="",
            now=timezone.now(),
        )
        got = await receive_until(
            communicator, lambda m: any(d["type"] == "coverage.changed" for d in diffs_of(m))
        )
        [diff] = [d for m in got for d in diffs_of(m) if d["type"] == "coverage.changed"]
        assert diff["coverage"]["cells"] == dict.fromkeys(BLOCK_1, 1)
    finally:
        await communicator.disconnect()

    summary = await database_sync_to_async(selectors.coverage_summary)(project=project)
    assert (summary["total"], summary["covered"], summary["holes"]) == (8, 4, 4)
    assert summary["hole_uids"] == ["lm.b0.0.0", "lm.b0.0.1", "lm.b0.1.0", "lm.b0.1.1"]
    alert = await database_sync_to_async(Alert.objects.get)(project=project, key="coverage:holes")
    assert alert.message == "4 of 8 grid cells have no serving expert (in block 0)."

    again = await watch(project.slug)
    try:
        snapshot = await again.receive_json_from(timeout=10)
        assert snapshot["coverage"]["cells"] == dict.fromkeys(BLOCK_1, 1)
    finally:
        await again.disconnect()
