"""Several references per source (task.references=grouped): rows sharing a source become one evaluation example with
all their references; BLEU is SacreBLEU's multi-reference corpus BLEU, ROUGE the best reference's F-measure."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasets import Dataset
from sacrebleu.metrics import BLEU
from torchmetrics.text import SacreBLEUScore
from torchmetrics.text.rouge import ROUGEScore

from softprompt.data.references import REFERENCES, group_references, reference_counts
from softprompt.objectives.bleu import bleu_from_sums, bleu_statistics
from softprompt.objectives.generation import TextMetrics


def sacrebleu(predictions: list[str], references: list[list[str]]) -> float:
    """SacreBLEU's corpus BLEU in [0, 1], no smoothing (as ours), a variable number of references per prediction."""
    width = max(len(refs) for refs in references)
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return BLEU(smooth_method="none").corpus_score(predictions, streams).score / 100


def grouped_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    metrics = TextMetrics(grouped=True)
    metrics.update(predictions[:1], references[:1])  # two updates, as two batches
    metrics.update(predictions[1:], references[1:])
    return {key: float(value) for key, value in metrics.compute_and_reset().items()}


PREDICTIONS = ["the cheap restaurant near the river serves french food",
               "a family friendly coffee shop in the city centre",
               "the golden curry is a highly rated indian place"]
REFERENCES_PER_SOURCE = [
    ["near the river there is a cheap restaurant that serves french food", "the cheap restaurant serves french food"],
    ["a coffee shop in the city centre , family friendly", "in the city centre is a family friendly coffee shop",
     "a coffee shop for families"],
    ["the golden curry is an indian place with high ratings"],
]


def test_grouped_bleu_is_sacrebleus_multi_reference_corpus_bleu():
    bleu = grouped_scores(PREDICTIONS, REFERENCES_PER_SOURCE)["bleu"]
    assert 0.2 < bleu < 1.0  # every n-gram order matches somewhere: a score that can be wrong
    assert bleu == pytest.approx(sacrebleu(PREDICTIONS, REFERENCES_PER_SOURCE), abs=1e-6)
    # With every order matched, SacreBLEU's default (exponential smoothing) gives the same number.
    streams = [[refs[k] if k < len(refs) else None for refs in REFERENCES_PER_SOURCE] for k in range(3)]
    assert bleu == pytest.approx(BLEU().corpus_score(PREDICTIONS, streams).score / 100, abs=1e-6)
    # Against the first reference only, the same predictions score lower.
    assert bleu > sacrebleu(PREDICTIONS, [refs[:1] for refs in REFERENCES_PER_SOURCE])


def test_grouped_bleu_matches_sacrebleu_on_random_corpora():
    rng = random.Random(0)
    words = ["the", "a", "cheap", "pub", "near", "river", "serves", "food", ",", ".", "family", "coffee", "shop",
             "city", "centre"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 14)))

    for _ in range(50):
        size = rng.randint(2, 8)
        predictions = [sentence() for _ in range(size)]
        references = [[sentence() for _ in range(rng.randint(1, 4))] for _ in range(size)]
        assert grouped_scores(predictions, references)["bleu"] == pytest.approx(
            sacrebleu(predictions, references), abs=1e-6)


def test_with_one_reference_each_our_statistics_give_torchmetrics_bleu():
    """Training and the report score every BLEU from bleu_statistics; with one reference each, torchmetrics'
    SacreBLEUScore (an independent implementation) must come out the same."""
    rng = random.Random(1)
    words = ["the", "a", "cheap", "pub", "near", "river", "serves", "food", ",", ".", "family", "coffee"]
    for _ in range(50):
        size = rng.randint(2, 8)
        predictions = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) for _ in range(size)]
        references = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(size)]
        statistics = [bleu_statistics(p, [r]) for p, r in zip(predictions, references, strict=True)]
        ours = bleu_from_sums(np.sum(statistics, axis=0))
        theirs = float(SacreBLEUScore()(predictions, [[r] for r in references]))
        assert float(ours) == pytest.approx(theirs, abs=1e-6)


def test_a_tie_in_reference_length_takes_the_shorter_reference_as_sacrebleu_does():
    """Six tokens, references of eight and four: both are two away. SacreBLEU takes four (no brevity penalty);
    torchmetrics' SacreBLEUScore takes the first listed (eight), which is why grouped BLEU is our own."""
    prediction = ["the cat sat on the mat"]
    references = [["the cat sat on the mat right now", "the cat sat down"]]
    expected = sacrebleu(prediction, references)
    assert grouped_scores(prediction * 2, references * 2)["bleu"] == pytest.approx(expected, abs=1e-6)
    assert float(SacreBLEUScore()(prediction, references)) < expected - 0.1


def test_grouped_rouge_is_the_best_references_f_measure_per_prediction():
    scores = grouped_scores(PREDICTIONS, REFERENCES_PER_SOURCE)
    single = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"))
    for key in ("rouge1", "rouge2", "rougeL"):
        best = [max(float(single(prediction, reference)[f"{key}_fmeasure"]) for reference in refs)
                for prediction, refs in zip(PREDICTIONS, REFERENCES_PER_SOURCE, strict=True)]
        assert scores[key] == pytest.approx(sum(best) / len(best), abs=1e-6)
        first = [float(single(p, refs[0])[f"{key}_fmeasure"]) for p, refs in zip(PREDICTIONS, REFERENCES_PER_SOURCE,
                                                                                 strict=True)]
        assert scores[key] >= sum(first) / len(first)


def test_rows_sharing_a_source_become_one_example_with_all_their_references():
    rows = Dataset.from_dict({
        "text": ["name[Aromi]", "name[Blue]", "name[Aromi]", "name[Aromi]", "name[Blue]", "name[Cotto]"],
        "target": ["Aromi one", "Blue one", "Aromi two", "Aromi three", "Blue two", "Cotto one"],
        "row_index": [0, 1, 2, 3, 4, 5]})
    grouped = group_references(rows, ["text"])
    assert grouped["text"] == ["name[Aromi]", "name[Blue]", "name[Cotto]"]  # as sources first appear
    assert grouped["row_index"] == [0, 1, 5] and grouped["target"] == ["Aromi one", "Blue one", "Cotto one"]
    assert grouped[REFERENCES] == [["Aromi one", "Aromi two", "Aromi three"], ["Blue one", "Blue two"], ["Cotto one"]]
    assert reference_counts(grouped) == {"sources": 3, "references": 6}


def test_a_source_is_every_text_field_together():
    rows = Dataset.from_dict({"premise": ["a", "a", "b"], "hypothesis": ["x", "y", "x"], "target": ["1", "2", "3"]})
    assert group_references(rows, ["premise", "hypothesis"])[REFERENCES] == [["1"], ["2"], ["3"]]
    assert group_references(rows, ["premise"])[REFERENCES] == [["1", "2"], ["3"]]
