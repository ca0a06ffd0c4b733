"""The tensors of hivemind's averaging benchmark (shared by bench_averaging.py and its hivemind reference run;
imports nothing from this project so that the reference can run in hivemind's own environment)."""

from __future__ import annotations

import argparse

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


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """hivemind's benchmark_averaging.py flags and defaults, for both runs (its underscore spellings too)."""
    parser.add_argument("--num-peers", "--num_peers", type=int, default=16)
    parser.add_argument("--target-group-size", "--target_group_size", type=int, default=4)
    parser.add_argument("--num-rounds", "--num_rounds", type=int, default=5)
    parser.add_argument("--hid-size", "--hid_size", type=int, default=256)
    parser.add_argument("--num-layers", "--num_layers", type=int, default=3)
    parser.add_argument("--min-matchmaking-time", "--min_matchmaking_time", type=float, default=5.0)
    parser.add_argument("--round-timeout", "--round_timeout", type=float, default=15.0)
    parser.add_argument("--request-timeout", "--request_timeout", type=float, default=1.0)
    parser.add_argument("--spawn-dtime", "--spawn_dtime", type=float, default=0.1)
