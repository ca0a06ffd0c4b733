"""The tensors of hivemind's averaging benchmark (shared by bench_averaging.py and its hivemind reference run;
imports nothing from this project so that the reference can run in hivemind's own environment)."""

from __future__ import annotations

import torch


def sample_tensors(hid_size: int, num_layers: int) -> list[torch.Tensor]:
    """13 tensors per layer, shaped as in hivemind's benchmark."""
    h = hid_size
    tensors: list[torch.Tensor] = []
    for _ in range(num_layers):
        tensors += [
            torch.randn(h, 3 * h),
            torch.randn(3 * h),
            torch.randn(3 * h),
            torch.randn(h, h),
            torch.ones(h),
            torch.zeros(h),
            torch.randn(h, 4 * h),
            torch.randn(4 * h),
            torch.ones(4 * h),
            torch.randn(2, h, h, 2),
            torch.randn(h),
            torch.randn(h),
            torch.randn(h),
        ]
    return tensors
