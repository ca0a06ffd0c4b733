"""The language model's training loop: random byte windows, validation bits per byte, metrics, checkpoints.

Same contract as the classifier's `Trainer`: a step whose experts fail (too few answered, the search timed
out) is skipped, `max_failed_steps` failures in a row stop training (or, with `expert_wait_period`, a portal
trainer says it waits for experts and tries again; `ExpertFailures`), `stop` ends it after the current step,
checkpoints hold only the trainer's own parameters (remote experts keep theirs). Metrics events reuse
`MetricsEvent`: `loss` is the mean next-byte cross-entropy in nats (bits per byte = loss / ln 2),
`accuracy` the next-byte accuracy, `samples_per_s` tokens per second.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from node_agent.moe.api import ExpertError
from node_agent.training.checkpoints import save_checkpoint
from node_agent.training.metrics import MetricsEvent, MetricsStream, TrainingWindow, bits_per_byte
from node_agent.training.progress import ProgressBar
from node_agent.training.text import TextCorpus, evaluation_windows, sample_windows
from node_agent.training.trainer import ExpertFailures, TrainingError

__all__ = ["LMTrainConfig", "LMTrainResult", "LMTrainer", "bits_per_byte"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LMTrainConfig:
    steps: int | None = 300  # None: until stopped
    batch_size: int = 16
    learning_rate: float = 3e-3
    eval_every: int = 100
    log_every: int = 10
    eval_windows: int = 64
    eval_batch_size: int = 16
    max_failed_steps: int = 20
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0
    seed: int = 0
    progress: bool = False
    expert_wait_period: float = 0.0  # > 0: wait (and retry) instead of failing when no expert answers


@dataclass(slots=True)
class LMTrainResult:
    steps: int
    failed_steps: int
    final_loss: float
    val_bpb: float
    tokens_per_s: float
    experts_answered: int
    experts_failed: int
    stopped: bool = False
    #: Collaborative training: global steps taken, how many averaged with other trainers, the start epoch.
    global_steps: int = 0
    averaged_steps: int = 0
    start_epoch: int = 0
    #: Collaborative training: state averaging rounds (parameters and optimiser statistics) done / failed.
    state_rounds_completed: int = 0
    state_rounds_failed: int = 0


class LMTrainer:
    """Trains a `ByteTransformerLM` on `corpus`; `on_step(step)` runs after each step (tests kill servers)."""

    def __init__(
        self,
        model: nn.Module,
        corpus: TextCorpus,
        config: LMTrainConfig,
        metrics: MetricsStream | None = None,
        on_step: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.model = model
        self.corpus = corpus
        self.config = config
        self.metrics = metrics if metrics is not None else MetricsStream()
        self.on_step = on_step
        self.stop = stop if stop is not None else threading.Event()
        self.say = say if say is not None else logger.warning
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
        )
        self.seq_len = int(getattr(model, "config").seq_len)  # noqa: B009 (any LM with a config)
        self.eval_x, self.eval_y = evaluation_windows(corpus.validation, self.seq_len, config.eval_windows)
        #: Collaborative training (`training.collaborative`): steps when the trainers' batch is full.
        self.collaborative: Any = None
        #: Added to the data seed: collaborators start from the same weights (`--seed`) but draw their own
        #: windows, or they would all compute the same gradients.
        self.data_offset = 0
        self.step = 0
        self.failed_steps = 0
        self._answered_total = 0
        self._failed_total = 0

    def _take_expert_stats(self) -> tuple[int, int]:
        answered = failed = 0
        for layer in self.model.moe_layers():  # type: ignore[operator]
            stats = layer.take_stats()
            answered += stats.answered
            failed += stats.failed
        self._answered_total += answered
        self._failed_total += failed
        return answered, failed

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """One step (collaborative: one batch's clipped gradient added to the accumulated ones, and the
        optimiser steps when the trainers' batch is full); raises ExpertError if the swarm failed."""
        self.model.train()
        own = [p for p in self.model.parameters() if p.requires_grad]
        held = [p.grad for p in own]  # collaborative: the gradients accumulated since the last global step
        for parameter in own:
            parameter.grad = None
        try:
            logits = self.model(inputs)
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
            loss.backward()
        except BaseException:
            if self.collaborative is not None:  # a failed batch adds nothing
                for parameter, grad in zip(own, held, strict=True):
                    parameter.grad = grad
            raise
        nn.utils.clip_grad_norm_(own, 1.0)  # each batch's own gradient, with or without collaborators
        if self.collaborative is None:
            self.optimizer.step()
        else:
            for parameter, grad in zip(own, held, strict=True):
                if grad is not None and parameter.grad is not None:
                    parameter.grad.add_(grad)
                elif grad is not None:
                    parameter.grad = grad
            self.collaborative.step(len(inputs))
        accuracy = (logits.argmax(-1) == targets).float().mean().item()
        return loss.item(), accuracy

    @torch.no_grad()
    def evaluate(self, retries: int = 3) -> tuple[float, float]:
        """(mean cross-entropy in nats, next-byte accuracy) on the fixed validation windows."""
        self.model.eval()
        total, correct, count = 0.0, 0, 0
        for start in range(0, len(self.eval_x), self.config.eval_batch_size):
            x = self.eval_x[start : start + self.config.eval_batch_size]
            y = self.eval_y[start : start + self.config.eval_batch_size]
            for attempt in range(retries + 1):
                try:
                    logits = self.model(x)
                    break
                except ExpertError as error:
                    if attempt == retries:
                        raise TrainingError(f"evaluation failed {retries + 1} times: {error}") from error
                    logger.warning("evaluation chunk failed (%s); retrying", error)
            flat = logits.reshape(-1, logits.shape[-1])
            total += nn.functional.cross_entropy(flat, y.reshape(-1), reduction="sum").item()
            correct += int((flat.argmax(-1) == y.reshape(-1)).sum())
            count += y.numel()
        return total / count, correct / count

    def _emit_eval(self) -> MetricsEvent:
        loss, accuracy = self.evaluate()
        answered, failed = self._take_expert_stats()
        event = MetricsEvent("eval", self.step, loss, accuracy, 0.0, answered, failed, time.time())
        self.metrics.emit(event)
        logger.info("step %d: validation %.4f bits per byte", self.step, bits_per_byte(loss))
        return event

    def train(self) -> LMTrainResult:
        config = self.config
        generator = torch.Generator().manual_seed(config.seed + self.data_offset + self.step)
        progress = ProgressBar(config.steps) if config.progress else None
        failures = ExpertFailures(config.max_failed_steps, config.expert_wait_period, self.stop, self.say)
        window = TrainingWindow()
        trained_tokens = 0
        started = time.monotonic()
        while (config.steps is None or self.step < config.steps) and not self.stop.is_set():
            inputs, targets = sample_windows(self.corpus.train, config.batch_size, self.seq_len, generator)
            try:
                loss, accuracy = self.train_step(inputs, targets)
            except ExpertError as error:
                self.failed_steps += 1
                failures.failed(self.step + 1, error)
                continue
            failures.succeeded(self.step + 1)
            self.step += 1
            trained_tokens += targets.numel()
            window.add(loss, accuracy, targets.numel())
            if self.on_step is not None:
                self.on_step(self.step)
            if progress is not None:
                progress.update(self.step, loss=loss, bpb=bits_per_byte(loss))
            if self.step % config.log_every == 0 or self.step == config.steps or self.stop.is_set():
                answered, failed = self._take_expert_stats()
                self.metrics.emit(window.close(self.step, answered, failed))
            if config.eval_every and self.step % config.eval_every == 0 and self.step != config.steps:
                self._emit_eval()
            if config.checkpoint_dir and config.checkpoint_every and self.step % config.checkpoint_every == 0:
                save_checkpoint(config.checkpoint_dir, self.model, self.optimizer, self.step)
        elapsed = time.monotonic() - started
        stopped = self.stop.is_set()
        trained = [e for e in self.metrics.history if e.kind == "train"]
        final_loss = trained[-1].loss if trained else math.nan
        val_bpb = math.nan
        if not stopped:
            val_bpb = bits_per_byte(self._emit_eval().loss)
        if config.checkpoint_dir and self.step:
            save_checkpoint(config.checkpoint_dir, self.model, self.optimizer, self.step)
        return LMTrainResult(
            steps=self.step,
            failed_steps=self.failed_steps,
            final_loss=final_loss,
            val_bpb=val_bpb,
            tokens_per_s=trained_tokens / max(elapsed, 1e-9),
            experts_answered=self._answered_total,
            experts_failed=self._failed_total,
            stopped=stopped,
        )
