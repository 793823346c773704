"""Greedy and beam search over a cached step function, independent of the model family.

The soft prompt lives in the step function (the family adapter's generation session), so the search
itself is plain. Beam search follows transformers' own semantics (top 2K candidates per step, scores
normalised by generated length ** length_penalty, the same early-stopping heuristic), so a hard
prompt decodes exactly as `model.generate` does (tests/objectives/test_generation.py checks this).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from softprompt.errors import ConfigError, require_positive_int

NEG_INF = -1.0e9


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int
    num_beams: int = 1  # 1 = greedy
    length_penalty: float = 1.0
    early_stopping: bool = False
    truncate_at: str | None = None  # predictions are cut at this string (applied to the decoded text)

    @classmethod
    def from_config(cls, cfg: Mapping) -> DecodingConfig:
        known = {"max_new_tokens", "num_beams", "length_penalty", "early_stopping", "truncate_at"}
        for key in cfg:
            if key not in known:
                raise ConfigError(f"task.generation.{key}", cfg[key], f"allowed keys: {', '.join(sorted(known))}")
        require_positive_int("task.generation.max_new_tokens", cfg.get("max_new_tokens"))
        require_positive_int("task.generation.num_beams", cfg.get("num_beams"))
        if not isinstance(cfg.get("early_stopping", False), bool):
            raise ConfigError("task.generation.early_stopping", cfg.get("early_stopping"), "must be true or false")
        truncate_at = cfg.get("truncate_at")
        if truncate_at is not None and (not isinstance(truncate_at, str) or not truncate_at):
            raise ConfigError("task.generation.truncate_at", truncate_at, "must be null or a non-empty string")
        try:
            penalty = float(cfg.get("length_penalty", 1.0))
        except (TypeError, ValueError):
            raise ConfigError("task.generation.length_penalty", cfg.get("length_penalty"),
                              "must be a number") from None
        return cls(int(cfg["max_new_tokens"]), int(cfg["num_beams"]), penalty, bool(cfg.get("early_stopping")),
                   truncate_at)

    def finish(self, text: str) -> str:
        """The prediction as scored: leading whitespace dropped, then cut at `truncate_at`."""
        text = text.lstrip()
        if self.truncate_at is not None:
            text = text.split(self.truncate_at, 1)[0]
        return text.strip()


class Session(Protocol):
    """A family's cached decoding state for one batch (see backbones/families.py)."""

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return the next-token logits (rows, vocab)."""

    def repeat(self, times: int) -> None:
        """Each row becomes `times` consecutive rows (beams)."""

    def select(self, rows: torch.Tensor) -> None:
        """Keep rows `rows`, in that order (beam reordering)."""


def _trim(sequences: torch.Tensor, eos_token_id: int) -> list[list[int]]:
    """Token lists cut before the first end-of-sequence token."""
    result = []
    for row in sequences.tolist():
        result.append(row[: row.index(eos_token_id)] if eos_token_id in row else row)
    return result


def greedy_search(first_logits: torch.Tensor, session: Session, eos_token_id: int,
                  max_new_tokens: int) -> list[list[int]]:
    """Argmax decoding; finished rows keep emitting end-of-sequence until every row is done."""
    tokens = first_logits.argmax(-1)
    finished = tokens == eos_token_id
    generated = [tokens]
    while len(generated) < max_new_tokens and not bool(finished.all()):
        tokens = session.step(tokens).argmax(-1)
        tokens = torch.where(finished, eos_token_id, tokens)
        finished |= tokens == eos_token_id
        generated.append(tokens)
    return _trim(torch.stack(generated, dim=1), eos_token_id)


def beam_search(first_logits: torch.Tensor, session: Session, eos_token_id: int,
                config: DecodingConfig) -> list[list[int]]:
    """Beam search with transformers' semantics; returns the best finished hypothesis per row."""
    beams, limit, penalty = config.num_beams, config.max_new_tokens, config.length_penalty
    batch, vocab = first_logits.shape
    device = first_logits.device
    keep = 2 * beams  # enough candidates that `beams` of them are still running after some finish
    session.repeat(beams)
    logits = first_logits.float().repeat_interleave(beams, dim=0)
    running = torch.full((batch, beams, limit), eos_token_id, dtype=torch.long, device=device)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = NEG_INF  # the beams start identical: expand only the first
    finished = running.clone()
    finished_scores = torch.full((batch, beams), NEG_INF, device=device)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    can_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
    in_top_beams = torch.arange(keep, device=device) < beams
    offsets = torch.arange(batch, device=device)[:, None] * beams
    for length in range(limit):
        scores = torch.log_softmax(logits, dim=-1).view(batch, beams, vocab) + running_scores[..., None]
        top_scores, top_index = scores.view(batch, -1).topk(keep)
        source_beam, token = top_index // vocab, top_index % vocab
        candidates = running.gather(1, source_beam[..., None].expand(-1, -1, limit)).clone()
        candidates[:, :, length] = token
        done = (token == eos_token_id) | (length + 1 == limit)
        no_continuation = bool(done.all())

        # Running beams: the best `beams` candidates that did not just finish.
        alive_scores = top_scores + done.float() * NEG_INF
        alive = alive_scores.topk(beams).indices
        running = candidates.gather(1, alive[..., None].expand(-1, -1, limit))
        running_scores = alive_scores.gather(1, alive)
        parents = (source_beam.gather(1, alive) + offsets).view(-1)

        # Finished hypotheses: only candidates ranked within the top `beams` may enter.
        normalised = top_scores / (length + 1) ** penalty
        blocked = ~(done & in_top_beams) | ~can_improve
        if config.early_stopping:
            blocked |= is_finished.all(-1, keepdim=True)
        normalised = normalised + blocked.float() * NEG_INF
        merged_scores = torch.cat([finished_scores, normalised], dim=1)
        best = merged_scores.topk(beams).indices
        finished = torch.cat([finished, candidates], dim=1).gather(1, best[..., None].expand(-1, -1, limit))
        is_finished = torch.cat([is_finished, done & in_top_beams & ~blocked], dim=1).gather(1, best)
        finished_scores = merged_scores.gather(1, best)

        # Stop when no running beam can beat the worst finished one (transformers' heuristic).
        best_running = running_scores[:, :1] / (length + 1) ** penalty
        worst_finished = torch.where(is_finished.all(-1, keepdim=True),
                                     finished_scores.min(-1, keepdim=True).values, torch.tensor(NEG_INF))
        can_improve &= (best_running > worst_finished).any(-1, keepdim=True)
        all_done = bool(is_finished.all()) and config.early_stopping
        if no_continuation or not bool(can_improve.any()) or all_done:
            break
        session.select(parents)
        logits = session.step(running[:, :, length].reshape(-1)).float()
    return _trim(finished[:, 0], eos_token_id)


def decode(first_logits: torch.Tensor, session: Session, eos_token_id: int, config: DecodingConfig
           ) -> list[list[int]]:
    if config.num_beams == 1:
        return greedy_search(first_logits, session, eos_token_id, config.max_new_tokens)
    return beam_search(first_logits, session, eos_token_id, config)
