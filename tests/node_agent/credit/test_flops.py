"""The portal's FLOPs model agrees with torch's own counter on the real expert modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from node_agent.credit.flops import TRANSFORMER_SEQ, sample_flops
from node_agent.moe.experts import TRANSFORMER_SAMPLE_SEQ, get_expert_class


@pytest.mark.parametrize("name", ["ffn", "transformer", "nop"])
def test_model_matches_counted_matmuls(name):
    hidden, batch = 32, 8
    expert_class = get_expert_class(name)
    module = expert_class.build(hidden)
    (x,) = expert_class.sample_input(batch, hidden)
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as forward:
        y = module(x)
    with FlopCounterMode(display=False) as backward:
        y.backward(torch.randn_like(y))
    counted_forward, counted_backward = forward.get_total_flops(), backward.get_total_flops()
    if name == "transformer":
        # torch's counter does not see CPU flash attention (scores and mix: 2 matmuls of S x S x d each)
        attention = 2 * (2 * TRANSFORMER_SAMPLE_SEQ**2 * hidden) * batch
        counted_forward, counted_backward = counted_forward + attention, counted_backward + 2 * attention
    model = sample_flops(name, hidden)
    assert (model.forward * batch, model.backward * batch) == (counted_forward, counted_backward)


def test_sequence_length_matches_the_expert_registry():
    assert TRANSFORMER_SEQ == TRANSFORMER_SAMPLE_SEQ


def test_pricing_does_not_load_torch():
    """The portal prices receipts on every heartbeat: importing the model must not import torch."""
    code = "import sys, node_agent.credit.flops, node_agent.credit.receipts; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="no FLOPs model"):
        sample_flops("mystery", 16)
