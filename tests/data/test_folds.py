"""Fold hygiene: disjoint, covering, stratified, deterministic; the test split stays out."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from softprompt.data.folds import stratified_folds, train_val_indices

LABELS = [0] * 53 + [1] * 31 + [2] * 16


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_folds_are_disjoint_covering_and_stratified(k):
    folds = stratified_folds(LABELS, k, seed=0)
    merged = np.concatenate(folds)
    assert len(merged) == len(set(merged.tolist())) == len(LABELS)  # disjoint and covering
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    totals = Counter(LABELS)
    for fold in folds:
        counts = Counter(LABELS[i] for i in fold)
        for label, total in totals.items():
            assert abs(counts[label] - total / k) <= 1


def test_folds_are_deterministic_in_cv_seed():
    assert all(np.array_equal(a, b) for a, b in zip(stratified_folds(LABELS, 5, 3), stratified_folds(LABELS, 5, 3),
                                                    strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(stratified_folds(LABELS, 5, 3),
                                                        stratified_folds(LABELS, 5, 4), strict=True))


def test_train_and_validation_partition_the_split():
    for fold in range(5):
        train, val = train_val_indices(LABELS, 5, fold, seed=0)
        assert not set(train) & set(val)
        assert sorted([*train, *val]) == list(range(len(LABELS)))
