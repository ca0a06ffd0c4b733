"""The training loop: mini-batches from a registered dataset, periodic evaluation, metrics, checkpoints.

Expert failures are expected (volunteers vanish): a step whose MoE call fails (too few experts answered,
the search timed out) is logged and skipped, and after `max_failed_steps` failures in a row training stops,
or, with `expert_wait_period` set (a portal trainer), says that it waits for experts and tries again that
often. With `steps=None` it trains until its `stop` event is set (the CLI sets it on SIGINT/SIGTERM); a
stopped run skips the final evaluation but still saves its checkpoint. Remote experts update themselves on
backward (Learning@home section 3.2); the trainer's optimiser covers only its own parameters (local layers
and gating networks).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from node_agent.moe.api import ExpertError
from node_agent.training.checkpoints import save_checkpoint
from node_agent.training.datasets import Dataset, iterate_batches
from node_agent.training.metrics import MetricsEvent, MetricsStream, TrainingWindow
from node_agent.training.progress import ProgressBar

__all__ = ["ExpertFailures", "TrainConfig", "TrainResult", "Trainer", "TrainingError"]

logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the swarm failed `max_failed_steps` steps in a row)."""


class ExpertFailures:
    """Steps in a row whose experts failed, for every trainer: after `max_failed_steps` of them training
    stops (TrainingError), or, with `wait_period` > 0 (a portal trainer on a project whose volunteers may
    all be away), it says that it waits for experts and pauses that long before each next try."""

    def __init__(
        self,
        max_failed_steps: int,
        wait_period: float,
        stop: threading.Event,
        say: Callable[[str], None],
    ) -> None:
        self.max_failed_steps = max_failed_steps
        self.wait_period = wait_period
        self.stop = stop
        self.say = say
        self.consecutive = 0
        self.waited = False

    def failed(self, step: int, error: ExpertError) -> None:
        """Step `step` failed: log it; stop training, or wait, once too many failed in a row."""
        self.consecutive += 1
        log = logger.info if self.waited else logger.warning  # while waiting, `say` speaks for them
        log("step %d failed (%s); skipping the batch", step, error)
        if self.consecutive < self.max_failed_steps:
            return
        if self.wait_period <= 0:
            raise TrainingError(f"{self.consecutive} steps in a row failed; last: {error}") from error
        self.say(
            f"waiting for experts to come online: {self.consecutive} steps in a row found too few answering "
            f"({error}); trying again in {self.wait_period:.0f}s"
        )
        self.waited = True
        self.stop.wait(self.wait_period)

    def succeeded(self, step: int) -> None:
        """Step `step` trained: say so if the trainer was waiting for experts."""
        if self.waited:
            self.say(f"experts answer: training (step {step})")
            self.waited = False
        self.consecutive = 0


@dataclass(slots=True)
class TrainConfig:
    steps: int | None = 300  # None: until stopped
    batch_size: int = 64
    learning_rate: float = 3e-3
    eval_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 256
    aux_loss_weight: float = 0.01
    max_failed_steps: int = 20
    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 0  # 0: only at the end (when checkpoint_dir is set)
    seed: int = 0
    progress: bool = False
    expert_wait_period: float = 0.0  # > 0: wait (and retry) instead of failing when no expert answers


@dataclass(slots=True)
class TrainResult:
    steps: int
    failed_steps: int
    final_loss: float
    final_accuracy: float
    samples_per_s: float
    experts_answered: int
    experts_failed: int
    history: list[MetricsEvent] = field(default_factory=list)
    stopped: bool = False  # ended by its stop event, not by reaching its step count
    #: Collaborative training: global steps taken, and how many of them averaged with other trainers.
    global_steps: int = 0
    averaged_steps: int = 0
    #: The epoch a collaborative trainer started from (> 0: it loaded the newest state from a peer).
    start_epoch: int = 0
    #: Collaborative training: rounds that averaged parameters and optimiser statistics, and failed ones.
    state_rounds_completed: int = 0
    state_rounds_failed: int = 0


class Trainer:
    """Trains `model` on `dataset`; `on_step(step)` runs after every step (benchmarks kill servers there)."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        metrics: MetricsStream | None = None,
        on_step: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        say: Callable[[str], None] | None = None,
    ):
        self.model = model
        self.dataset = dataset
        self.config = config
        self.metrics = metrics if metrics is not None else MetricsStream()
        self.on_step = on_step
        self.stop = stop if stop is not None else threading.Event()
        self.say = say if say is not None else logger.warning
        own_parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(own_parameters, lr=config.learning_rate)
        #: Collaborative training (`node_agent.training.collaborative`): steps when the swarm's batch is full.
        self.collaborative: Any = None
        self.step = 0
        self.failed_steps = 0
        self._answered_total = 0
        self._failed_total = 0

    def _take_expert_stats(self) -> tuple[int, int]:
        answered = failed = 0
        for layer in getattr(self.model, "moe_layers", list)():
            stats = layer.take_stats()
            answered += stats.answered
            failed += stats.failed
        self._answered_total += answered
        self._failed_total += failed
        return answered, failed

    def train_step(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        """One optimiser step; returns the batch (loss, accuracy). Raises ExpertError if the swarm failed."""
        self.model.train()
        if self.collaborative is None:  # collaborative: gradients accumulate until the global step
            self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(features)
        loss = nn.functional.cross_entropy(logits, labels)
        auxiliary = getattr(self.model, "auxiliary_loss", lambda: None)()
        total = loss if auxiliary is None else loss + self.config.aux_loss_weight * auxiliary
        total.backward()
        if self.collaborative is None:
            self.optimizer.step()
        else:
            self.collaborative.step(len(labels))
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
        return loss.item(), accuracy

    @torch.no_grad()
    def evaluate(self, retries: int = 3) -> tuple[float, float]:
        """(loss, accuracy) on the held-out set; a chunk whose expert call fails is retried."""
        self.model.eval()
        losses, correct = 0.0, 0
        features, labels = self.dataset.test_x, self.dataset.test_y
        for start in range(0, len(features), self.config.eval_batch_size):
            chunk_x = features[start : start + self.config.eval_batch_size]
            chunk_y = labels[start : start + self.config.eval_batch_size]
            for attempt in range(retries + 1):
                try:
                    logits = self.model(chunk_x)
                    break
                except ExpertError as error:
                    if attempt == retries:
                        raise TrainingError(f"evaluation failed {retries + 1} times: {error}") from error
                    logger.warning("evaluation chunk failed (%s); retrying", error)
            losses += nn.functional.cross_entropy(logits, chunk_y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == chunk_y).sum())
        return losses / len(features), correct / len(features)

    def _emit_eval(self) -> MetricsEvent:
        loss, accuracy = self.evaluate()
        answered, failed = self._take_expert_stats()
        event = MetricsEvent("eval", self.step, loss, accuracy, 0.0, answered, failed, time.time())
        self.metrics.emit(event)
        logger.info("step %d: held-out loss %.4f, accuracy %.4f", self.step, loss, accuracy)
        return event

    def train(self) -> TrainResult:
        config = self.config
        batches = iterate_batches(self.dataset.train_x, self.dataset.train_y, config.batch_size, config.seed)
        progress = ProgressBar(config.steps) if config.progress else None
        failures = ExpertFailures(config.max_failed_steps, config.expert_wait_period, self.stop, self.say)
        window = TrainingWindow()
        started = time.monotonic()
        trained_samples = 0
        while (config.steps is None or self.step < config.steps) and not self.stop.is_set():
            features, labels = next(batches)
            try:
                loss, accuracy = self.train_step(features, labels)
            except ExpertError as error:
                self.failed_steps += 1
                failures.failed(self.step + 1, error)
                continue
            failures.succeeded(self.step + 1)
            self.step += 1
            trained_samples += len(labels)
            window.add(loss, accuracy, len(labels))
            if self.on_step is not None:
                self.on_step(self.step)
            if progress is not None:
                progress.update(self.step, loss=loss, acc=accuracy)
            if self.step % config.log_every == 0 or self.step == config.steps or self.stop.is_set():
                answered, failed = self._take_expert_stats()
                self.metrics.emit(window.close(self.step, answered, failed))
            if config.eval_every and self.step % config.eval_every == 0 and self.step != config.steps:
                self._emit_eval()
            if config.checkpoint_dir and config.checkpoint_every and self.step % config.checkpoint_every == 0:
                save_checkpoint(config.checkpoint_dir, self.model, self.optimizer, self.step)
        elapsed = time.monotonic() - started
        stopped = self.stop.is_set()
        # A stopped trainer ends at once: the held-out evaluation could wait on a swarm that is gone.
        trained = [e for e in self.metrics.history if e.kind == "train"]
        final_loss, final_accuracy = (
            (trained[-1].loss, trained[-1].accuracy) if trained else (math.nan, math.nan)
        )
        if not stopped:
            final = self._emit_eval()
            final_loss, final_accuracy = final.loss, final.accuracy
        if config.checkpoint_dir and self.step:
            save_checkpoint(config.checkpoint_dir, self.model, self.optimizer, self.step)
        return TrainResult(
            steps=self.step,
            failed_steps=self.failed_steps,
            final_loss=final_loss,
            final_accuracy=final_accuracy,
            samples_per_s=trained_samples / max(elapsed, 1e-9),
            experts_answered=self._answered_total,
            experts_failed=self._failed_total,
            history=list(self.metrics.history),
            stopped=stopped,
        )
