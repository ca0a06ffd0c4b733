"""The training loop on a local MoE: learns digits, streams metrics, checkpoints, matches the local layer."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from node_agent.training.checkpoints import latest_checkpoint, load_checkpoint
from node_agent.training.datasets import load_dataset
from node_agent.training.metrics import MetricsStream
from node_agent.training.models import MoEClassifier, build_local_moe, parse_grid
from node_agent.training.trainer import TrainConfig, Trainer


def ffn(uid: str) -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))


def test_local_moe_classifier_learns_digits(tmp_path):
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = MoEClassifier(data.num_features, data.num_classes, 32, build_local_moe(32, (3, 3), "ffn", ffn, 2))
    events = []
    config = TrainConfig(steps=120, eval_every=60, log_every=20, checkpoint_dir=tmp_path, checkpoint_every=60)
    result = Trainer(model, data, config, MetricsStream(events.append)).train()
    assert result.steps == 120 and result.failed_steps == 0
    assert result.final_accuracy > 0.9
    kinds = [(e.kind, e.step) for e in events]
    assert kinds.count(("train", 20)) == 1 and ("eval", 60) in kinds and kinds[-1] == ("eval", 120)
    assert all(e.samples_per_s > 0 for e in events if e.kind == "train")
    assert latest_checkpoint(tmp_path).name == "step-00000120.safetensors"
    restored = MoEClassifier(
        data.num_features, data.num_classes, 32, build_local_moe(32, (3, 3), "ffn", ffn, 2)
    )
    assert load_checkpoint(latest_checkpoint(tmp_path), restored) == 120
    with torch.no_grad():
        assert torch.equal(restored(data.test_x[:8]), model(data.test_x[:8]))


def test_a_trainer_without_a_step_count_trains_until_stopped(tmp_path):
    """steps=None: it trains until its stop event; the stopped run reports its last window, skips the final
    evaluation (the swarm may be gone) and still saves its checkpoint."""
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = MoEClassifier(data.num_features, data.num_classes, 32, build_local_moe(32, (2, 2), "ffn", ffn, 2))
    events = []
    stop = threading.Event()
    config = TrainConfig(steps=None, log_every=5, eval_every=0, checkpoint_dir=tmp_path, progress=True)
    trainer = Trainer(
        model, data, config, MetricsStream(events.append), lambda step: step == 7 and stop.set(), stop
    )
    result = trainer.train()
    assert result.stopped and result.steps == 7
    assert [(e.kind, e.step) for e in events] == [("train", 5), ("train", 7)]
    assert result.final_loss == events[-1].loss
    assert latest_checkpoint(tmp_path).name == "step-00000007.safetensors"


def test_local_mixture_mixes_top_k_by_softmax():
    torch.manual_seed(1)
    moe = build_local_moe(32, (2, 3), "ffn", ffn, 2)
    x = torch.randn(5, 32)
    scores = torch.split(moe.gate(x), (2, 3), dim=-1)
    expected = []
    for b in range(5):
        cells = sorted(
            ((scores[0][b, i] + scores[1][b, j], i * 3 + j) for i in range(2) for j in range(3)), reverse=True
        )[:2]
        weights = torch.softmax(torch.stack([c[0] for c in cells]), dim=0)
        outputs = [moe.experts[index](x[b : b + 1])[0] for _, index in cells]
        expected.append(weights[0] * outputs[0] + weights[1] * outputs[1])
    assert torch.allclose(moe(x), torch.stack(expected), atol=1e-5)


def test_parse_grid():
    assert parse_grid("4x4") == (4, 4)
    assert parse_grid("2,3,5") == (2, 3, 5)
    assert parse_grid("16") == (16,)
    with pytest.raises(ValueError):
        parse_grid("4x0")
    with pytest.raises(ValueError):
        parse_grid("axb")
