"""live.stream: per-viewer seq and holding flushes back while a snapshot is read."""

from __future__ import annotations

import json

from live.stream import ViewerStream


def seqs(texts: list[str]) -> list[tuple[str, int]]:
    return [(json.loads(t)["type"], json.loads(t)["seq"]) for t in texts]


def test_flushes_wait_for_the_snapshot_then_follow_it_in_order() -> None:
    stream = ViewerStream()
    stream.begin_snapshot()
    assert stream.on_flush("node.upsert", '{"at":1}') == []
    assert stream.on_flush("swarm.batch", '{"diffs":[]}') == []
    sent = stream.on_snapshot('{"nodes":[]}')
    assert seqs(sent) == [("swarm.snapshot", 1), ("node.upsert", 2), ("swarm.batch", 3)]
    assert seqs(stream.on_flush("node.remove", '{"node_id":"a"}')) == [("node.remove", 4)]


def test_a_resync_snapshot_continues_the_count() -> None:
    stream = ViewerStream()
    stream.begin_snapshot()
    stream.on_snapshot("{}")
    stream.on_flush("node.upsert", "{}")
    stream.begin_snapshot()
    assert stream.on_flush("node.upsert", "{}") == []
    assert seqs(stream.on_snapshot("{}")) == [("swarm.snapshot", 3), ("node.upsert", 4)]


def test_too_many_held_flushes_ask_for_another_snapshot() -> None:
    stream = ViewerStream(max_held=3)
    stream.begin_snapshot()
    for _ in range(4):
        stream.on_flush("node.upsert", "{}")
    assert stream.overflowed
    stream.begin_snapshot()
    assert not stream.overflowed
