"""Registry of small real datasets that ship with installed packages, so training needs no download.

Every dataset is tabular classification from scikit-learn's bundled copies (the UCI originals), split
deterministically into train and held-out test sets and standardised with the training set's statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["DATASETS", "Dataset", "available_datasets", "iterate_batches", "load_dataset"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A train/test split as float32 features and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.train_x.shape[1])


def _sklearn_loader(function_name: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, function_name)()
        return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)

    return load


DATASETS: dict[str, tuple[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "digits": (
        "8x8 handwritten digits, 1797 samples, 64 features, 10 classes",
        _sklearn_loader("load_digits"),
    ),
    "iris": ("iris flowers, 150 samples, 4 features, 3 classes", _sklearn_loader("load_iris")),
    "wine": ("wine cultivars, 178 samples, 13 features, 3 classes", _sklearn_loader("load_wine")),
    "breast_cancer": (
        "breast cancer diagnosis, 569 samples, 30 features, 2 classes",
        _sklearn_loader("load_breast_cancer"),
    ),
}


def available_datasets() -> dict[str, str]:
    """Name -> one-line description, for `--help` and the portal's project form."""
    return {name: description for name, (description, _) in DATASETS.items()}


def load_dataset(name: str, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Load, shuffle with `seed`, split off `test_fraction` (stratified per class) and standardise."""
    import torch  # here, not at module level: the CLI lists dataset names without loading torch

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    features, labels = DATASETS[name][1]()
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = max(1, round(len(members) * test_fraction))
        test_idx.append(members[:cut])
        train_idx.append(members[cut:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    mean = features[train].mean(axis=0)
    std = features[train].std(axis=0)
    std[std < 1e-6] = 1.0  # constant pixels (digits' borders) stay zero instead of dividing by zero
    scaled = (features - mean) / std
    return Dataset(
        name=name,
        train_x=torch.from_numpy(scaled[train].astype(np.float32)),
        train_y=torch.from_numpy(labels[train]),
        test_x=torch.from_numpy(scaled[test].astype(np.float32)),
        test_y=torch.from_numpy(labels[test]),
        num_classes=int(labels.max()) + 1,
    )


def iterate_batches(
    features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches, reshuffled every epoch; an epoch's last partial batch is dropped."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    import torch

    generator = torch.Generator().manual_seed(seed)
    count = len(features)
    batch_size = min(batch_size, count)
    while True:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]
