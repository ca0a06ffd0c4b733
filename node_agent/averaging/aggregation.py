"""What a reducer does with the contributions to one piece: screen them, then average (pure, no I/O).

Screening: a contribution with NaN or infinite values is refused; with at least `MIN_FOR_OUTLIERS`
contributions, one whose median distance to the others exceeds `outlier_factor` times the typical such
distance (with a floor relative to the values' size) is refused too: "far outside the others' range".
A refused sender is dropped from the rest of the round by its reducer and penalised by the averager.

Averaging: the weighted mean, or, with `clip_tau`, CenteredClip (Karimireddy et al. 2021, as used by BTARD,
arXiv 2106.11257): start at the median and move towards each contribution by at most `tau` per iteration,
so a few adversaries can pull the result only a bounded distance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

MIN_FOR_OUTLIERS = 3
RELATIVE_FLOOR = 1.0
CLIP_ITERATIONS = 10


@dataclass(slots=True)
class Screened:
    accepted: list[int]
    refused: dict[int, str] = field(default_factory=dict)


def screen(contributions: Mapping[int, torch.Tensor], outlier_factor: float) -> Screened:
    """Split senders into accepted and refused (sender -> reason) for one piece."""
    result = Screened([])
    finite: dict[int, torch.Tensor] = {}
    for sender, values in contributions.items():
        if bool(torch.isfinite(values).all()):
            finite[sender] = values
        else:
            result.refused[sender] = "non-finite values"
    if len(finite) < MIN_FOR_OUTLIERS or outlier_factor <= 0:
        result.accepted = sorted(finite)
        return result
    senders = sorted(finite)
    stacked = torch.stack([finite[s].float() for s in senders])
    # each contribution's typical distance to the others (median over its pairwise distances): cheap for
    # groups of a few peers, and an outlier is far from everyone while honest peers are close to most
    pairwise = torch.cdist(stacked[None], stacked[None])[0]
    scores = [float(row[torch.arange(len(senders)) != i].median()) for i, row in enumerate(pairwise)]
    # honest peers may agree almost exactly (e.g. after averaging together): a floor relative to the
    # values' own size keeps small honest differences from looking like outliers
    norms = stacked.norm(dim=1)
    scale = max(sorted(scores)[len(scores) // 2], RELATIVE_FLOOR * float(norms.median())) + 1e-6
    for sender, score in zip(senders, scores, strict=True):
        if score > outlier_factor * scale:
            result.refused[sender] = f"outlier: {score:.3g} from the others, typically {scale:.3g}"
        else:
            result.accepted.append(sender)
    return result


def weighted_mean(values: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    total = sum(weights)
    if total <= 0:
        raise ValueError("weights must add up to a positive number")
    result = torch.zeros_like(values[0], dtype=torch.float32)
    for value, weight in zip(values, weights, strict=True):
        result.add_(value.float(), alpha=weight / total)
    return result


def centered_clip(values: list[torch.Tensor], weights: list[float], tau: float) -> torch.Tensor:
    """Weighted CenteredClip around the coordinate-wise median; `tau` bounds each step's pull."""
    stacked = torch.stack([v.float() for v in values])
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    center = stacked.median(dim=0).values
    for _ in range(CLIP_ITERATIONS):
        deltas = stacked - center
        norms = deltas.norm(dim=1).clamp_min(1e-12)
        factors = torch.clamp(tau / norms, max=1.0) * w
        center = center + (deltas * factors[:, None]).sum(dim=0)
    return center


def aggregate(values: list[torch.Tensor], weights: list[float], clip_tau: float | None) -> torch.Tensor:
    if clip_tau is not None and len(values) >= MIN_FOR_OUTLIERS:
        return centered_clip(values, weights, clip_tau)
    return weighted_mean(values, weights)


def plausible_average(average: torch.Tensor, own: torch.Tensor, factor: float) -> bool:
    """Whether a reducer's answer could be an average that includes our own values.

    A reducer could answer anything; an honest average lies within a few times the scale of the values
    averaged, so an answer that is non-finite or `factor` times farther from ours than our values are
    large is refused (that part of ours stays local and the reducer is penalised).
    """
    if not bool(torch.isfinite(average).all()):
        return False
    if factor <= 0 or own.numel() == 0:
        return True
    own_f = own.float()
    distance = float((average.float() - own_f).norm())
    return bool(distance <= factor * (float(own_f.norm()) + 1e-3 * own_f.numel() ** 0.5))
