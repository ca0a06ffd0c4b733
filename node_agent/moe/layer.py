"""`RemoteMixtureOfExperts`: a decentralized MoE layer whose experts live on volunteers' machines.

Learning@home (Ryabinin & Gusev 2020, sections 3.1-3.2): a gating network scores every coordinate of
the expert grid; beam search over DHT prefixes finds each sample's `k_best` live experts; they are called in
parallel over WebRTC and the layer goes on once every sample has `k_min` answers (waiting at most
`timeout_after_k_min` more, `forward_timeout` in all). Experts that fail, time out or return anomalies are
masked out and the softmax runs over those that answered. Backward goes only to experts that answered
forward (their servers apply their optimiser step then), with its own `backward_k_min` / `backward_timeout`.

The decisions live in `node_agent.moe.masking` (sans-IO); this module is the thin adapter that submits calls
to the `ExpertCaller` and feeds the outcomes and the clock into them. `LocalMixtureOfExperts` is the same
layer with in-process experts: the baseline for benchmarks and the reference for tests.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from node_agent.moe.api import (
    ExpertError,
    ExpertHandle,
    ExpertTimeoutError,
    ExpertUnavailableError,
)
from node_agent.moe.beam_search import ExpertSearcher, FoundExpert, dht_prefix_fetcher
from node_agent.moe.masking import (
    QuorumPolicy,
    QuorumTracker,
    combine_outputs,
    expert_logits,
    find_anomaly,
    masked_softmax,
)
from node_agent.moe.reliability import FailureKind, ReliabilityTracker

__all__ = [
    "CallStats",
    "LocalMixtureOfExperts",
    "RemoteMixtureOfExperts",
    "RoutedOutputs",
    "TooFewExpertsError",
]

logger = logging.getLogger(__name__)


class TooFewExpertsError(ExpertError):
    """Some samples got fewer than `k_min` (or `backward_k_min`) answers and zero outputs are not allowed."""


@dataclass(slots=True)
class CallStats:
    """Expert calls since the last `take_stats()`: answered, failed, and how many failures were anomalies.

    `anomalies` counts replies masked for their content or form (NaN/inf, wrong shape, malformed, a remote
    error), as opposed to timeouts and unreachable peers; every anomaly is also counted as failed.
    """

    forward_answered: int = 0
    forward_failed: int = 0
    backward_answered: int = 0
    backward_failed: int = 0
    anomalies: int = 0
    searches: int = 0

    @property
    def answered(self) -> int:
        return self.forward_answered + self.backward_answered

    @property
    def failed(self) -> int:
        return self.forward_failed + self.backward_failed

    def add(self, other: CallStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass(frozen=True, slots=True)
class RoutedOutputs:
    """What one routed call returns: per-dimension gate scores `[B, n_d]`, expert outputs `[B, k, out]`
    (zeros where masked), `answered [B, k]`, chosen `coords [B, k, dims]`, `routed [B, k]` (slot had an
    expert at all; fewer than k live experts leave slots empty)."""

    grid_scores: list[torch.Tensor]
    outputs: torch.Tensor
    answered: torch.Tensor
    coords: torch.Tensor
    routed: torch.Tensor


@dataclass(slots=True)
class _Call:
    """One request to one expert replica: the samples it serves and their slots among the sample's k."""

    handle: ExpertHandle
    samples: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Plan:
    """Everything the autograd function needs besides tensors (routing, policies, where to report)."""

    layer: _GridMixtureBase
    calls: list[_Call]
    batch_size: int
    k: int
    # Decided outside the autograd Function (where grad mode is always off): servers keep the forward's
    # graph for a backward only when one can follow, so evaluation passes cost them no memory.
    keep_graph: bool = True
    answered: list[bool] = field(default_factory=list)


def _classify(error: BaseException) -> FailureKind:
    if isinstance(error, ExpertTimeoutError | TimeoutError | concurrent.futures.TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(error, ExpertUnavailableError):
        return FailureKind.UNAVAILABLE
    return FailureKind.PROTOCOL


def _gather(
    layer: _GridMixtureBase,
    calls: list[_Call],
    futures: list[concurrent.futures.Future | None],
    calls_of_sample: list[list[int]],
    policy: QuorumPolicy,
    expected_shapes: Callable[[int], list[tuple[int, ...]]],
    phase: str,
) -> tuple[list[list[torch.Tensor] | None], QuorumTracker]:
    """Wait for parallel expert calls as the quorum rules say; return usable replies (None: masked)."""
    clock = layer.clock
    tracker = QuorumTracker(calls_of_sample, len(futures), policy, clock())
    replies: list[list[torch.Tensor] | None] = [None] * len(futures)
    pending = {future: index for index, future in enumerate(futures) if future is not None}
    for index, future in enumerate(futures):
        if future is None:
            tracker.on_result(index, ok=False, now=clock())
    while pending and not tracker.is_done(clock()):
        wait_for = max(0.0, tracker.deadline() - clock())
        done, _ = concurrent.futures.wait(
            pending, timeout=wait_for, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for future in done:
            index = pending.pop(future)
            peer = calls[index].handle
            ok = False
            try:
                reply = future.result()
            except Exception as error:
                kind = _classify(error)
                logger.info("%s of expert %s at %s failed: %s", phase, peer.uid, peer.endpoint, error)
                layer.reliability.record_failure(peer.node_id, kind, time.monotonic())
                if kind is FailureKind.PROTOCOL:  # malformed or non-finite reply, or a remote error
                    layer.stats.anomalies += 1
            else:
                anomaly = find_anomaly(reply, expected_shapes(index))
                if anomaly is None:
                    replies[index] = list(reply)
                    ok = True
                    layer.reliability.record_success(peer.node_id, time.monotonic())
                else:
                    logger.warning(
                        "masking %s of expert %s at %s: %s", phase, peer.uid, peer.endpoint, anomaly
                    )
                    layer.reliability.record_failure(peer.node_id, FailureKind.ANOMALY, time.monotonic())
                    layer.stats.anomalies += 1
            tracker.on_result(index, ok=ok, now=clock())
    hard_timeout = clock() >= tracker.started_at + policy.timeout
    for future, index in pending.items():
        future.cancel()
        if hard_timeout:  # only a call that missed the hard limit counts against its peer
            layer.reliability.record_failure(
                calls[index].handle.node_id, FailureKind.TIMEOUT, time.monotonic()
            )
    return replies, tracker


class _RemoteMoECall(torch.autograd.Function):
    """Forward: call every routed expert in parallel. Backward: send gradients to those that answered.

    Returns `outputs [batch, k, out]` (zeros where masked) and `mask [batch, k]` (True: answered); the gating
    softmax and the mixing happen outside, in plain autograd, so the gate learns from answered experts only.
    """

    @staticmethod
    def forward(ctx, _dummy: torch.Tensor, x: torch.Tensor, plan: _Plan):
        layer = plan.layer
        x = x.detach()
        inputs = [x[call.samples] for call in plan.calls]
        futures = [
            layer.caller.forward(
                call.handle, [inp], timeout=layer.forward_policy.timeout, keep_graph=plan.keep_graph
            )
            for call, inp in zip(plan.calls, inputs, strict=True)
        ]
        calls_of_sample: list[list[int]] = [[] for _ in range(plan.batch_size)]
        for index, call in enumerate(plan.calls):
            for sample in call.samples:
                calls_of_sample[sample].append(index)
        replies, tracker = _gather(
            layer,
            plan.calls,
            futures,
            calls_of_sample,
            layer.forward_policy,
            lambda index: [(len(plan.calls[index].samples), layer.out_features)],
            "forward",
        )
        plan.answered = tracker.answered()
        layer.stats.forward_answered += sum(plan.answered)
        layer.stats.forward_failed += len(plan.answered) - sum(plan.answered)
        short = tracker.short_samples()
        if short and not layer.forward_policy.allow_zero_outputs:
            raise TooFewExpertsError(
                f"{len(short)} of {plan.batch_size} samples got fewer than "
                f"k_min={layer.forward_policy.k_min} "
                f"expert answers ({sum(plan.answered)} of {len(plan.calls)} calls answered)"
            )
        outputs = torch.zeros(plan.batch_size, plan.k, layer.out_features, dtype=x.dtype)
        mask = torch.zeros(plan.batch_size, plan.k, dtype=torch.bool)
        for call, reply in zip(plan.calls, replies, strict=True):
            if reply is not None:
                outputs[call.samples, call.slots] = reply[0].to(x.dtype)
                mask[call.samples, call.slots] = True
        ctx.plan = plan
        ctx.save_for_backward(x)
        ctx.mark_non_differentiable(mask)
        return outputs, mask

    @staticmethod
    def backward(ctx, grad_outputs: torch.Tensor, _grad_mask: torch.Tensor | None):
        plan: _Plan = ctx.plan
        layer = plan.layer
        (x,) = ctx.saved_tensors
        futures: list[concurrent.futures.Future | None] = []
        calls_of_sample: list[list[int]] = [[] for _ in range(plan.batch_size)]
        for index, (call, answered) in enumerate(zip(plan.calls, plan.answered, strict=True)):
            if not answered:
                futures.append(None)
                continue
            for sample in call.samples:
                calls_of_sample[sample].append(index)
            grad = grad_outputs[call.samples, call.slots].contiguous()
            futures.append(
                layer.caller.backward(
                    call.handle, [x[call.samples]], [grad], timeout=layer.backward_policy.timeout
                )
            )
        replies, tracker = _gather(
            layer,
            plan.calls,
            futures,
            calls_of_sample,
            layer.backward_policy,
            lambda index: [(len(plan.calls[index].samples), x.shape[1])],
            "backward",
        )
        n_answered = sum(1 for reply in replies if reply is not None)
        layer.stats.backward_answered += n_answered
        layer.stats.backward_failed += sum(plan.answered) - n_answered
        short = [s for s in tracker.short_samples() if calls_of_sample[s]]
        if short and not layer.backward_policy.allow_zero_outputs:
            raise TooFewExpertsError(
                f"{len(short)} of {plan.batch_size} samples got fewer than backward_k_min="
                f"{layer.backward_policy.k_min} gradient answers"
            )
        grad_x = torch.zeros_like(x)
        for call, reply in zip(plan.calls, replies, strict=True):
            if reply is not None:
                grad_x.index_add_(0, torch.tensor(call.samples), reply[0].to(x.dtype))
        return None, grad_x, None


class _GridMixtureBase(nn.Module):
    """Gating over a grid plus routing through the DHT and the parallel call; subclasses mix the outputs."""

    def __init__(
        self,
        *,
        in_features: int,
        grid_size: Sequence[int],
        uid_prefix: str,
        caller,
        searcher: ExpertSearcher | None = None,
        out_features: int | None = None,
        k_best: int = 4,
        k_min: int = 1,
        forward_timeout: float = 10.0,
        timeout_after_k_min: float = 1.0,
        backward_k_min: int = 1,
        backward_timeout: float = 10.0,
        allow_zero_outputs: bool = False,
        search_timeout: float = 10.0,
        beam_size: int | None = None,
        reliability: ReliabilityTracker | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if not grid_size or any(size <= 0 for size in grid_size):
            raise ValueError(f"grid_size must be non-empty positive sizes, got {grid_size}")
        if not 0 <= k_min <= k_best:
            raise ValueError(f"need 0 <= k_min <= k_best, got k_min={k_min}, k_best={k_best}")
        self.in_features = in_features
        self.out_features = out_features or in_features
        self.grid_size = tuple(int(size) for size in grid_size)
        self.uid_prefix = uid_prefix.rstrip(".")
        self.caller = caller
        self.searcher = searcher if searcher is not None else ExpertSearcher(dht_prefix_fetcher(caller.dht))
        self.k_best = k_best
        self.beam_size = beam_size
        self.search_timeout = search_timeout
        self.forward_policy = QuorumPolicy(k_min, timeout_after_k_min, forward_timeout, allow_zero_outputs)
        self.backward_policy = QuorumPolicy(
            backward_k_min, timeout_after_k_min, backward_timeout, allow_zero_outputs
        )
        self.reliability = reliability if reliability is not None else ReliabilityTracker()
        self._backward_trigger = torch.empty(0, requires_grad=True)  # not a parameter: never updated
        self.gate = nn.Linear(in_features, sum(self.grid_size))
        self.stats = CallStats()
        self.clock: Callable[[], float] = time.monotonic
        self._rng = random.Random(seed)
        self._stats_lock = threading.Lock()

    def take_stats(self) -> CallStats:
        """Counters since the previous call (for the metrics stream)."""
        with self._stats_lock:
            stats, self.stats = self.stats, CallStats()
        return stats

    def grid_scores(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.gate(x), list(self.grid_size), dim=-1))

    def _accept(self, uid: str, replicas: tuple[object, ...]) -> tuple[object, ...]:
        now = time.monotonic()
        return tuple(
            replica
            for replica in replicas
            if isinstance(replica, ExpertHandle) and not self.reliability.is_avoided(replica.node_id, now)
        )

    def find_experts(self, grid_scores: Sequence[torch.Tensor], k: int) -> list[list[FoundExpert]]:
        """Best `k` live, non-avoided experts per sample (searched through the DHT on the caller's loop)."""
        lists = [scores.detach().float().tolist() for scores in grid_scores]
        per_sample = [[lists[dim][b] for dim in range(len(lists))] for b in range(len(lists[0]))]
        coroutine = self.searcher.find_best_experts(
            self.uid_prefix, per_sample, k, self.beam_size, self._accept
        )
        self.stats.searches += 1
        try:
            return self.caller.run(coroutine).result(timeout=self.search_timeout)
        except concurrent.futures.TimeoutError as error:
            raise ExpertTimeoutError(f"expert search took longer than {self.search_timeout} s") from error
        except ExpertError:
            raise
        except Exception as error:  # a DHT failure: no experts can be found this step
            logger.warning("expert search failed: %r", error)
            raise ExpertUnavailableError(f"expert search failed: {error!r}") from error

    def plan_calls(self, found: list[list[FoundExpert]], k: int) -> tuple[_Plan, torch.Tensor, torch.Tensor]:
        """Group samples by chosen replica (one call per expert); build `[batch, k, dims]` coords and
        the `[batch, k]` mask of slots that got an expert at all."""
        calls: dict[ExpertHandle, _Call] = {}
        coords = torch.zeros(len(found), k, len(self.grid_size), dtype=torch.long)
        routed = torch.zeros(len(found), k, dtype=torch.bool)
        for sample, experts in enumerate(found):
            for slot, expert in enumerate(experts[:k]):
                handle = self._rng.choice(expert.replicas)
                assert isinstance(handle, ExpertHandle)
                call = calls.setdefault(handle, _Call(handle))
                call.samples.append(sample)
                call.slots.append(slot)
                coords[sample, slot] = torch.tensor(expert.coords)
                routed[sample, slot] = True
        return _Plan(self, list(calls.values()), len(found), k), coords, routed

    def call_experts(self, x: torch.Tensor, k: int) -> RoutedOutputs:
        """Score the grid, find each sample's `k` best live experts, call them; masked outputs."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input [batch, {self.in_features}], got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("input to the mixture of experts contains NaN or infinite values")
        scores = self.grid_scores(x)
        found = self.find_experts(scores, k)
        plan, coords, routed = self.plan_calls(found, k)
        plan.keep_graph = torch.is_grad_enabled()
        # The dummy requires grad so that backward reaches the experts (and their optimisers step on the
        # servers) even when `x` itself needs no gradient, e.g. a MoE layer right after the data.
        outputs, mask = _RemoteMoECall.apply(self._backward_trigger, x, plan)
        return RoutedOutputs(scores, outputs, mask, coords, routed)


class RemoteMixtureOfExperts(_GridMixtureBase):
    """Decentralized MoE: each sample goes to its `k_best` live experts; outputs mixed by masked softmax.

    Input and output are `[..., in_features]` -> `[..., out_features]` (leading axes are flattened into
    one batch). `caller` is an `ExpertCaller` (`node_agent.moe.client`); `searcher` an `ExpertSearcher`
    whose fetch reads the DHT (`node_agent.moe.layer.dht_searcher` builds one).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        routed = self.call_experts(flat, self.k_best)
        weights = masked_softmax(expert_logits(routed.grid_scores, routed.coords), routed.answered)
        return combine_outputs(routed.outputs, weights).reshape(*leading, self.out_features)


class LocalMixtureOfExperts(nn.Module):
    """The same mixture with in-process experts on a full grid: the local baseline and the test reference.

    `experts` maps a uid (`ffn.1.2`) to a module; the gate scores every cell exactly as the remote layer
    does, the top `k_best` cells present in `experts` are mixed by softmax over their summed scores.
    """

    cell_coords: torch.Tensor  # a buffer: [experts, dims] grid coordinates of `uids`

    def __init__(
        self,
        in_features: int,
        grid_size: Sequence[int],
        uid_prefix: str,
        experts: dict[str, nn.Module],
        k_best: int,
    ):
        super().__init__()
        from node_agent.moe.uids import parse_uid

        self.in_features = in_features
        self.grid_size = tuple(grid_size)
        self.uid_prefix = uid_prefix.rstrip(".")
        self.k_best = k_best
        self.gate = nn.Linear(in_features, sum(self.grid_size))
        self.uids = sorted(experts, key=lambda uid: parse_uid(uid)[1])
        self.experts = nn.ModuleList(experts[uid] for uid in self.uids)
        self.register_buffer(
            "cell_coords",
            torch.tensor([parse_uid(uid)[1] for uid in self.uids], dtype=torch.long),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        scores = list(torch.split(self.gate(flat), list(self.grid_size), dim=-1))
        cell_scores = sum(scores[dim][:, self.cell_coords[:, dim]] for dim in range(len(scores)))
        assert isinstance(cell_scores, torch.Tensor)  # a grid has at least one dimension
        k = min(self.k_best, len(self.uids))
        top = torch.topk(cell_scores.detach(), k, dim=1).indices  # [B, k] indices into self.experts
        coords = self.cell_coords[top]  # [B, k, dims]
        outputs = self._routed_outputs(flat, top)
        weights = masked_softmax(expert_logits(scores, coords), torch.ones_like(top, dtype=torch.bool))
        return combine_outputs(outputs, weights).reshape(*leading, outputs.shape[-1])

    def _routed_outputs(self, flat: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        """`[B, k, out]`: each expert runs only on the samples routed to it, as on a server (a language
        model routes thousands of tokens per step; running every expert on all of them would cost E/k
        times more)."""
        pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for index, expert in enumerate(self.experts):
            hit = top == index  # [B, k]; topk picks an expert at most once per sample
            rows = hit.any(dim=1).nonzero().squeeze(1)
            if rows.numel():
                pieces.append((rows, hit[rows].int().argmax(dim=1), expert(flat[rows])))
        out_features = pieces[0][2].shape[-1]
        outputs = flat.new_zeros(flat.shape[0], top.shape[1], out_features)
        for rows, slots, values in pieces:
            outputs = outputs.index_put((rows, slots), values.to(outputs.dtype))
        return outputs
