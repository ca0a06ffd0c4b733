"""Pure logic of a decentralized MoE call: when to stop waiting, what to mask, how to mix what answered.

Learning@home (Ryabinin & Gusev 2020, section 3.2) calls the k best experts of each sample in parallel and
goes on as soon as enough of them answered: experts that fail, time out or return garbage are excluded and
the gating softmax is taken over the ones that did answer. Everything here is sans-IO: the caller feeds call
outcomes and the current time `now` (seconds, any monotonic origin) and asks what to do next, so the rules
are unit-tested without sockets or clocks. `node_agent.moe.layer` is the thin adapter that talks to experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "QuorumPolicy",
    "QuorumTracker",
    "combine_outputs",
    "expert_logits",
    "find_anomaly",
    "masked_softmax",
]


@dataclass(frozen=True, slots=True)
class QuorumPolicy:
    """How long a parallel call to experts waits, and how many answers each sample needs.

    * `k_min`: answers a sample needs for the call to succeed.
    * `timeout_after_k_min`: once every sample has `k_min` answers, wait at most this much longer for the
      others (they improve the mixture but are not needed).
    * `timeout`: hard limit for the whole call, from its start.
    * `allow_zero_outputs`: if True, a sample with fewer than `k_min` answers is not an error; it is mixed
      from whatever answered (zeros if nothing did).
    """

    k_min: int
    timeout_after_k_min: float
    timeout: float
    allow_zero_outputs: bool = False

    def __post_init__(self) -> None:
        if self.k_min < 0:
            raise ValueError(f"k_min must be >= 0, got {self.k_min}")
        if self.timeout <= 0 or self.timeout_after_k_min < 0:
            raise ValueError("timeout must be > 0 and timeout_after_k_min >= 0")


class QuorumTracker:
    """Sans-IO state of one parallel call: which expert calls answered, and whether to keep waiting.

    `calls_of_sample[i]` lists the call indices sample `i` depends on (one call per expert sub-batch, so a
    call usually serves several samples). The call is finished when every call has an outcome, when the
    hard timeout passes, or `timeout_after_k_min` after every sample became satisfied; it fails early when a
    sample can no longer reach `k_min` (unless zero outputs are allowed).
    """

    def __init__(
        self, calls_of_sample: Sequence[Sequence[int]], num_calls: int, policy: QuorumPolicy, now: float
    ):
        for calls in calls_of_sample:
            for call in calls:
                if not 0 <= call < num_calls:
                    raise ValueError(f"call index {call} out of range [0, {num_calls})")
        self.policy = policy
        self.started_at = now
        self.calls_of_sample = [list(calls) for calls in calls_of_sample]
        self.num_calls = num_calls
        self.succeeded: list[bool | None] = [None] * num_calls  # None: still pending
        self.satisfied_at: float | None = None
        self._check_satisfied(now)

    # --- feeding outcomes -------------------------------------------------------------------------
    def on_result(self, call: int, ok: bool, now: float) -> None:
        """Record that call `call` finished (`ok=False`: failed, timed out or returned an anomaly)."""
        if self.succeeded[call] is not None:
            return  # a late duplicate outcome changes nothing
        self.succeeded[call] = ok
        self._check_satisfied(now)

    def _answers(self, sample: int) -> int:
        return sum(1 for call in self.calls_of_sample[sample] if self.succeeded[call])

    def _possible(self, sample: int) -> int:
        return sum(1 for call in self.calls_of_sample[sample] if self.succeeded[call] is not False)

    def _sample_satisfied(self, sample: int) -> bool:
        if self._answers(sample) >= self.policy.k_min:
            return True
        # Zero outputs allowed: a sample that cannot get more answers waits for nothing.
        return self.policy.allow_zero_outputs and all(
            self.succeeded[call] is not None for call in self.calls_of_sample[sample]
        )

    def _check_satisfied(self, now: float) -> None:
        if self.satisfied_at is None and all(map(self._sample_satisfied, range(len(self.calls_of_sample)))):
            self.satisfied_at = now

    # --- decisions --------------------------------------------------------------------------------
    @property
    def all_finished(self) -> bool:
        return all(outcome is not None for outcome in self.succeeded)

    def hopeless_samples(self) -> list[int]:
        """Samples that can no longer reach `k_min` even if every pending call succeeds."""
        return [i for i in range(len(self.calls_of_sample)) if self._possible(i) < self.policy.k_min]

    def deadline(self) -> float:
        """The time at which the call stops waiting even if calls are still pending."""
        hard = self.started_at + self.policy.timeout
        if self.satisfied_at is not None:
            return min(hard, self.satisfied_at + self.policy.timeout_after_k_min)
        return hard

    def is_done(self, now: float) -> bool:
        if self.all_finished or now >= self.deadline():
            return True
        return not self.policy.allow_zero_outputs and bool(self.hopeless_samples())

    def answered(self) -> list[bool]:
        """Per call: did it answer (pending calls count as not answered; they are masked out)."""
        return [bool(outcome) for outcome in self.succeeded]

    def short_samples(self) -> list[int]:
        """Samples with fewer than `k_min` answers right now: an error unless zero outputs are allowed."""
        return [i for i in range(len(self.calls_of_sample)) if self._answers(i) < self.policy.k_min]


def find_anomaly(
    outputs: Sequence[object], expected_shapes: Sequence[tuple[int, ...]], dtype: torch.dtype = torch.float32
) -> str | None:
    """Why an expert's reply cannot be used (wrong count, type, shape, dtype, NaN or inf), or None if fine.

    A volunteer's reply is untrusted input (Learning@home section 3.3): one NaN mixed into the batch would
    poison every parameter it reaches, so anything but finite tensors of the agreed shape is masked out.
    """
    if len(outputs) != len(expected_shapes):
        return f"expected {len(expected_shapes)} output tensors, got {len(outputs)}"
    for index, (tensor, shape) in enumerate(zip(outputs, expected_shapes, strict=True)):
        if not isinstance(tensor, torch.Tensor):
            return f"output {index} is {type(tensor).__name__}, not a tensor"
        if tuple(tensor.shape) != tuple(shape):
            return f"output {index} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
        if tensor.dtype != dtype:
            return f"output {index} has dtype {tensor.dtype}, expected {dtype}"
        if not bool(torch.isfinite(tensor).all()):
            return f"output {index} contains NaN or infinite values"
    return None


def expert_logits(grid_scores: Sequence[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Gating logit of each chosen expert: the sum of its per-dimension scores (Learning@home section 3.1).

    `grid_scores[d]` is `[batch, grid_size[d]]`; `coords` is `[batch, k, dims]` (long). Returns `[batch, k]`,
    differentiable w.r.t. the scores, so the gating network learns from the mixture.
    """
    batch, k, dims = coords.shape
    if dims != len(grid_scores):
        raise ValueError(f"coords have {dims} dimensions but there are {len(grid_scores)} score tensors")
    logits = torch.zeros(batch, k, dtype=grid_scores[0].dtype, device=grid_scores[0].device)
    for dim, scores in enumerate(grid_scores):
        logits = logits + torch.gather(scores, 1, coords[:, :, dim])
    return logits


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis among entries where `mask` is True; rows with no True entry become zeros.

    Masked entries get exactly zero weight and zero gradient, so a failed expert neither contributes to the
    output nor receives a gradient signal through the gate.
    """
    if logits.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ in shape")
    filled = logits.masked_fill(~mask, -math.inf)
    row_has_any = mask.any(dim=-1, keepdim=True)
    safe = torch.where(row_has_any, filled, torch.zeros_like(logits))
    weights = torch.softmax(safe, dim=-1)
    return torch.where(mask, weights, torch.zeros_like(weights))


def combine_outputs(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over experts: `outputs [batch, k, *f]`, `weights [batch, k]` -> `[batch, *f]`."""
    if outputs.shape[:2] != weights.shape:
        raise ValueError(f"outputs {tuple(outputs.shape)} do not match weights {tuple(weights.shape)}")
    expanded = weights.reshape(*weights.shape, *([1] * (outputs.dim() - 2)))
    return (outputs * expanded).sum(dim=1)
