"""Stratified, deterministic k-fold splits; grouped as well where the task names a group column (no group in both
the training part and the validation fold)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from softprompt.data.validation import DataError


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


def _group_counts(labels: Sequence[int], groups: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(each example's group index into the sorted distinct groups, examples per group and class)."""
    keys, group_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    classes, label_of = np.unique(np.asarray(labels), return_inverse=True)
    counts = np.zeros((len(keys), len(classes)), dtype=np.int64)
    np.add.at(counts, (group_of.ravel(), label_of.ravel()), 1)
    return group_of.ravel(), counts


def grouped_folds(labels: Sequence[int], groups: Sequence, num_folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each of `num_folds` folds, whole groups each: disjoint, covering, stratified as far as whole
    groups allow, deterministic in `seed` (the same rule as `stratified_folds`: np.random.default_rng(seed)).

    The groups (sorted by their text, then shuffled) go largest first, ties in shuffled order; each goes to the fold
    where it least raises sum over folds and classes of (fold's count of the class / class total)^2, ties to the
    smaller fold, then the lower index. Integer arithmetic throughout, so every process and platform agrees.
    """
    group_of, counts = _group_counts(labels, groups)
    order = np.random.default_rng(seed).permutation(len(counts))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    totals = counts.sum(axis=0).tolist()
    scale = math.prod(totals)
    weights = [(scale // total) ** 2 for total in totals]  # 1 / total^2, scaled to integers
    fold_counts = [[0] * len(totals) for _ in range(num_folds)]
    fold_of_group = np.empty(len(counts), dtype=np.int64)
    for group in order.tolist():
        row = counts[group].tolist()
        weighted = [w * r for w, r in zip(weights, row, strict=True)]
        best = min(range(num_folds), key=lambda f: (sum(w * n for w, n in zip(weighted, fold_counts[f], strict=True)),
                                                    sum(fold_counts[f]), f))
        fold_of_group[group] = best
        fold_counts[best] = [n + r for n, r in zip(fold_counts[best], row, strict=True)]
    assignment = fold_of_group[group_of]
    return [np.flatnonzero(assignment == k) for k in range(num_folds)]


def train_val_indices(labels: Sequence[int], num_folds: int, fold: int, seed: int,
                      groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training part and validation fold of the train split: stratified by `labels`, grouped by `groups` if given."""
    folds = stratified_folds(labels, num_folds, seed) if groups is None else \
        grouped_folds(labels, groups, num_folds, seed)
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


def check_grouped_folds(labels: Sequence[int], groups: Sequence, num_folds: int, seed: int, where: str,
                        label_names: list[str] | None, grouped_by: str) -> None:
    """Grouped folds can be cut: at least one group per fold and, for a classification task, each label in groups
    enough to reach every fold, and reaching every fold `grouped_folds` cuts. `grouped_by` says, in messages, which
    setting groups them."""
    _, counts = _group_counts(labels, groups)
    if len(counts) < num_folds:
        raise DataError("cv.num_folds", num_folds, f"the {where} has {len(counts)} groups, fewer than the {num_folds} "
                        f"folds (folds are grouped by {grouped_by}); lower cv.num_folds or add groups")
    if label_names is None:
        return
    labels = np.asarray(labels)
    present = np.unique(labels)
    holders = (counts > 0).sum(axis=0)
    for label, spread in zip(present.tolist(), holders.tolist(), strict=True):
        if spread < num_folds:
            raise DataError("cv.num_folds", num_folds, f"label {label_names[label]!r} occurs in {spread} groups of the "
                            f"{where}, fewer than the {num_folds} folds, so some folds would hold none of it (folds "
                            f"are grouped by {grouped_by}); lower cv.num_folds to {spread} or less, or add "
                            "groups with that label")
    folds = grouped_folds(labels, groups, num_folds, seed)
    for label, spread in zip(present.tolist(), holders.tolist(), strict=True):
        empty = [k for k, fold in enumerate(folds) if not np.any(labels[fold] == label)]
        if empty:
            raise DataError("cv.num_folds", num_folds, f"label {label_names[label]!r} occurs in {spread} groups of the "
                            f"{where}, but the grouped folds leave fold {empty[0]} without it (whole groups cannot "
                            "spread it wider); lower cv.num_folds or add groups with that label")
