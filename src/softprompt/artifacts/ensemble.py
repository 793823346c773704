"""Prompt ensembles (Lester et al. 2021, section 7): several prompts for one task, their label distributions
combined per input.

- `mean`: the mean of the members' label probabilities; the prediction is its argmax.
- `majority`: each member votes for its own argmax; the label with the most votes wins, a tie goes to the tied
  label with the highest mean probability (then the first label).

Used by `MixedPredictor.ensemble` (all members in the same mixed batches) and by softprompt-report's
`ensemble=` (the members' saved test predictions), so both combine exactly alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from softprompt.errors import SoftPromptError

VOTES = ("mean", "majority")


class EnsembleError(SoftPromptError):
    """Prompts that cannot be ensembled, or an unknown vote."""


@dataclass(frozen=True)
class Combined:
    """One input's ensemble: the winning label index, the mean probabilities and the votes per label."""

    label: int
    probabilities: list[float]
    votes: list[int]


def check_vote(vote: str) -> str:
    if vote not in VOTES:
        raise EnsembleError(f"vote={vote!r} is invalid: allowed: {', '.join(VOTES)}")
    return vote


def combine(members: Sequence[Sequence[Sequence[float]]], vote: str) -> list[Combined]:
    """`members[m][row]`: member m's label probabilities for each input (same rows, same label order)."""
    check_vote(vote)
    if not members:
        raise EnsembleError("an ensemble needs at least one member")
    rows = {len(member) for member in members}
    if len(rows) != 1:
        raise EnsembleError(f"ensemble members predicted different numbers of inputs: {sorted(rows)}")
    combined = []
    for per_member in zip(*members, strict=True):
        width = len(per_member[0])
        mean = [sum(p[k] for p in per_member) / len(per_member) for k in range(width)]
        votes = [0] * width
        for probabilities in per_member:
            votes[_argmax(probabilities)] += 1
        if vote == "mean":
            label = _argmax(mean)
        else:
            top = max(votes)
            label = max((k for k in range(width) if votes[k] == top), key=lambda k: (mean[k], -k))
        combined.append(Combined(label, mean, votes))
    return combined


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda k: (values[k], -k))
