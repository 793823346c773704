"""Corpus BLEU with several references per prediction, as SacreBLEU computes it (`task.references: grouped`).

Per prediction: 13a tokenisation, 1- to 4-gram matches clipped by the largest count of that n-gram in any one
reference, the prediction's n-gram totals, its length and the closest reference length (ties: the shorter, as
SacreBLEU breaks them; torchmetrics' SacreBLEUScore takes the first). Corpus BLEU is computed from the sums of these
ten statistics: geometric mean of the four precisions times the brevity penalty, no smoothing, in [0, 1].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.text.bleu import _count_ngram
from torchmetrics.functional.text.sacre_bleu import _SacreBLEUTokenizer

ORDER = 4  # n-grams up to 4
_TOKENIZE = _SacreBLEUTokenizer("13a", False)


def closest_reference_length(length: int, reference_lengths: Sequence[int]) -> int:
    """The reference length nearest the prediction's; of two equally near, the shorter (SacreBLEU's rule)."""
    return min(reference_lengths, key=lambda n: (abs(length - n), n))


def bleu_statistics(prediction: str, references: Sequence[str]) -> list[float]:
    """[matches for n = 1..4, totals for n = 1..4, prediction length, closest reference length]."""
    tokens = _TOKENIZE(prediction) if prediction else []
    counts = _count_ngram(tokens, ORDER)
    best: Counter = Counter()
    lengths = []
    for reference in references:
        reference_tokens = _TOKENIZE(reference) if reference else []
        lengths.append(len(reference_tokens))
        best |= _count_ngram(reference_tokens, ORDER)  # max count over the references
    matches, totals = [0.0] * ORDER, [0.0] * ORDER
    for ngram, count in counts.items():
        totals[len(ngram) - 1] += count
        matches[len(ngram) - 1] += min(count, best[ngram])
    return [*matches, *totals, float(len(tokens)), float(closest_reference_length(len(tokens), lengths))]


def bleu_from_sums(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU (4-grams, no smoothing) from summed statistics (..., 10) (`bleu_statistics`' order)."""
    matches, totals, pred_len, ref_len = sums[..., :4], sums[..., 4:8], sums[..., 8], sums[..., 9]
    with np.errstate(divide="ignore", invalid="ignore"):
        precisions = np.where(totals > 0, matches / np.where(totals > 0, totals, 1), 0.0)
        geometric = np.exp(np.mean(np.log(np.where(precisions > 0, precisions, 1.0)), axis=-1))
        penalty = np.where(pred_len > ref_len, 1.0, np.exp(1 - ref_len / np.where(pred_len > 0, pred_len, np.nan)))
    score = np.where((matches.min(axis=-1) > 0) & (pred_len > 0), penalty * geometric, 0.0)
    return np.nan_to_num(score)


class MultiReferenceBLEU(Metric):
    """Corpus BLEU over predictions with a list of references each; the statistics' sums sync across processes."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(2 * ORDER + 2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        for prediction, refs in zip(predictions, references, strict=True):
            self.sums += torch.tensor(bleu_statistics(prediction, refs), dtype=torch.float64, device=self.sums.device)

    def compute(self) -> torch.Tensor:
        return torch.tensor(float(bleu_from_sums(self.sums.cpu().numpy())), dtype=torch.float32)
