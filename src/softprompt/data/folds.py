"""Stratified, deterministic k-fold splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_folds(labels: Sequence[int], num_folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each of `num_folds` folds: disjoint, covering, stratified, deterministic in `seed`.

    Each class is shuffled, the classes are laid end to end and dealt round-robin, so every fold
    gets each class within one example of its share and fold sizes differ by at most one.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ordered = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    assignment = np.arange(len(ordered)) % num_folds
    return [np.sort(ordered[assignment == k]) for k in range(num_folds)]


def train_val_indices(labels: Sequence[int], num_folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    folds = stratified_folds(labels, num_folds, seed)
    train = np.sort(np.concatenate([f for k, f in enumerate(folds) if k != fold]))
    return train, folds[fold]


def stratified_sample(labels: Sequence[int], k: int, seed: int) -> np.ndarray:
    """k indices with class proportions kept (largest remainder), deterministic in `seed`, shuffled."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = k * counts / counts.sum()
    take = np.floor(quotas).astype(int)
    for index in np.argsort(-(quotas - take), kind="stable")[: k - take.sum()]:
        take[index] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(t, n), replace=False)
             for c, t, n in zip(classes, take, counts, strict=True)]
    return rng.permutation(np.concatenate(picks))
