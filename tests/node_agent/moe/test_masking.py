"""The pure MoE masking rules: quorum timing, anomaly detection, masked softmax and mixing."""

from __future__ import annotations

import math

import pytest
import torch

from node_agent.moe.masking import (
    QuorumPolicy,
    QuorumTracker,
    combine_outputs,
    expert_logits,
    find_anomaly,
    masked_softmax,
)

POLICY = QuorumPolicy(k_min=1, timeout_after_k_min=0.5, timeout=10.0)


def test_all_calls_answering_finishes_immediately():
    tracker = QuorumTracker([[0, 1], [1, 2]], num_calls=3, policy=POLICY, now=0.0)
    for call in range(3):
        assert not tracker.is_done(0.1)
        tracker.on_result(call, ok=True, now=0.1)
    assert tracker.is_done(0.1)
    assert tracker.answered() == [True, True, True]
    assert tracker.short_samples() == []


def test_waits_timeout_after_k_min_once_every_sample_has_k_min():
    tracker = QuorumTracker([[0, 1], [1, 2]], num_calls=3, policy=POLICY, now=0.0)
    tracker.on_result(1, ok=True, now=1.0)  # call 1 serves both samples: quorum reached at t=1
    assert tracker.satisfied_at == 1.0
    assert tracker.deadline() == pytest.approx(1.5)
    assert not tracker.is_done(1.4)
    assert tracker.is_done(1.5)
    # the slow experts past the timeout are masked out
    assert tracker.answered() == [False, True, False]


def test_hard_timeout_without_quorum():
    tracker = QuorumTracker([[0], [1]], num_calls=2, policy=POLICY, now=0.0)
    tracker.on_result(0, ok=True, now=1.0)
    assert tracker.deadline() == 10.0
    assert not tracker.is_done(9.9)
    assert tracker.is_done(10.0)
    assert tracker.short_samples() == [1]


def test_fails_fast_when_a_sample_cannot_reach_k_min():
    tracker = QuorumTracker([[0, 1], [1, 2]], num_calls=3, policy=QuorumPolicy(2, 0.5, 10.0), now=0.0)
    tracker.on_result(2, ok=True, now=0.1)
    assert not tracker.is_done(0.1)
    tracker.on_result(0, ok=False, now=0.2)
    assert tracker.hopeless_samples() == [0]
    assert tracker.is_done(0.2)


def test_zero_outputs_allowed_waits_for_outcomes_not_k_min():
    policy = QuorumPolicy(k_min=1, timeout_after_k_min=0.0, timeout=10.0, allow_zero_outputs=True)
    tracker = QuorumTracker([[0], [1]], num_calls=2, policy=policy, now=0.0)
    tracker.on_result(0, ok=False, now=0.1)
    assert not tracker.is_done(0.1)  # sample 1 can still get an answer
    tracker.on_result(1, ok=True, now=0.2)
    assert tracker.is_done(0.2)
    assert tracker.short_samples() == [0]


def test_duplicate_outcomes_are_ignored():
    tracker = QuorumTracker([[0]], num_calls=1, policy=POLICY, now=0.0)
    tracker.on_result(0, ok=True, now=0.1)
    tracker.on_result(0, ok=False, now=0.2)
    assert tracker.answered() == [True]


def test_bad_call_index_is_rejected():
    with pytest.raises(ValueError, match="out of range"):
        QuorumTracker([[3]], num_calls=2, policy=POLICY, now=0.0)


@pytest.mark.parametrize(
    ("outputs", "reason"),
    [
        ([torch.ones(2, 3)], None),
        ([], "expected 1 output"),
        (["x"], "not a tensor"),
        ([torch.ones(2, 4)], "shape"),
        ([torch.ones(2, 3, dtype=torch.float64)], "dtype"),
        ([torch.tensor([[1.0, math.nan, 0.0]] * 2)], "NaN"),
        ([torch.tensor([[1.0, math.inf, 0.0]] * 2)], "NaN or infinite"),
    ],
)
def test_find_anomaly(outputs, reason):
    found = find_anomaly(outputs, [(2, 3)])
    if reason is None:
        assert found is None
    else:
        assert reason in found


def test_masked_softmax_renormalises_over_answered_experts():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(logits, mask)
    expected = torch.softmax(torch.tensor([1.0, 3.0]), dim=0)
    assert torch.allclose(weights[0], torch.tensor([expected[0], 0.0, expected[1]]))
    assert torch.equal(weights[1], torch.zeros(3))  # every expert missing: zeros, not NaN
    weights.sum().backward()
    assert torch.isfinite(logits.grad).all()
    logits.grad = None
    (masked_softmax(logits, mask) * torch.tensor([1.0, 5.0, 2.0])).sum().backward()
    assert logits.grad[0, 1] == 0  # the masked expert gets no gradient through the gate


def test_expert_logits_sum_grid_scores():
    scores = [torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])]
    coords = torch.tensor([[[1, 2], [0, 0]], [[0, 1], [1, 1]]])
    assert torch.equal(expert_logits(scores, coords), torch.tensor([[31.0, 10.0], [52.0, 53.0]]))
    with pytest.raises(ValueError):
        expert_logits(scores[:1], coords)


def test_combine_outputs():
    outputs = torch.arange(12.0).reshape(2, 2, 3)
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    combined = combine_outputs(outputs, weights)
    assert torch.allclose(combined[0], 0.25 * outputs[0, 0] + 0.75 * outputs[0, 1])
    assert torch.equal(combined[1], outputs[1, 0])
