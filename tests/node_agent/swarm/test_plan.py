"""How the launcher splits a grid between servers."""

from __future__ import annotations

import pytest

from node_agent.moe.uids import expand_patterns
from node_agent.swarm.plan import split_grid


def test_rows_when_servers_divide_the_first_dimension():
    assert split_grid("ffn", (4, 4), 2) == ["ffn.[0:2].[0:4]", "ffn.[2:4].[0:4]"]


def test_uneven_split_covers_every_cell_once():
    patterns = split_grid("ffn", (3, 3), 2)
    hosted = [uid for pattern in patterns for uid in expand_patterns(pattern)]
    assert sorted(hosted) == sorted(expand_patterns("ffn.[0:3].[0:3]"))
    assert len(hosted) == 9


def test_replicas_survive_one_server_loss():
    patterns = split_grid("ffn", (4, 2), 4, replicas=2)
    every_cell = set(expand_patterns("ffn.[0:4].[0:2]"))
    for dead in range(4):
        alive = {uid for i, p in enumerate(patterns) if i != dead for uid in expand_patterns(p)}
        assert alive == every_cell


def test_bad_plans():
    with pytest.raises(ValueError):
        split_grid("ffn", (2,), 3)
    with pytest.raises(ValueError):
        split_grid("ffn", (4, 4), 0)
    with pytest.raises(ValueError):
        split_grid("ffn", (4, 4), 2, replicas=3)
