"""Metrics stream (JSON lines + callbacks) and safetensors checkpoints of the trainer's own state."""

from __future__ import annotations

import io
import json

import torch
from torch import nn

from node_agent.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from node_agent.training.metrics import JsonLinesSink, MetricsEvent, MetricsStream

EVENT = MetricsEvent("train", 10, 0.5, 0.75, 123.0, 40, 2, 1700000000.0)


def test_json_lines_format(tmp_path):
    path = tmp_path / "metrics.jsonl"
    buffer = io.StringIO()
    received = []
    stream = MetricsStream(JsonLinesSink(path), JsonLinesSink(buffer), received.append)
    stream.emit(EVENT)
    stream.emit(MetricsEvent("eval", 10, 0.4, 0.8, 0.0, 0, 0, 1700000001.0))
    stream.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "kind": "train",
        "step": 10,
        "loss": 0.5,
        "accuracy": 0.75,
        "samples_per_s": 123.0,
        "experts_answered": 40,
        "experts_failed": 2,
        "timestamp": 1700000000.0,
    }
    assert lines[1]["kind"] == "eval"
    assert buffer.getvalue().count("\n") == 2
    assert received == stream.history


def test_a_failing_sink_is_dropped_not_fatal(caplog):
    calls = []

    def broken(event):
        calls.append(event)
        raise OSError("portal down")

    stream = MetricsStream(broken)
    stream.emit(EVENT)
    stream.emit(EVENT)
    assert len(calls) == 1
    assert "metrics sink" in caplog.text
    assert len(stream.history) == 2


def test_checkpoint_round_trip_with_optimizer_state(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    saved = save_checkpoint(tmp_path, model, optimizer, step=7)
    assert latest_checkpoint(tmp_path) == saved.path and saved.step == 7

    clone = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    clone_optimizer = torch.optim.Adam(clone.parameters(), lr=0.5)
    assert load_checkpoint(saved.path, clone, clone_optimizer) == 7
    for a, b in zip(model.state_dict().values(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert clone_optimizer.param_groups[0]["lr"] == 0.01
    state = clone_optimizer.state_dict()["state"][0]
    assert torch.equal(state["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert latest_checkpoint(tmp_path / "missing") is None
