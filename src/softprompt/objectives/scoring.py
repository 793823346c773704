"""Verbalizer scoring: label scores at the answer position, computing only the rows needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from softprompt.config.precision import full_precision

Batch = dict[str, torch.Tensor]


class LabelScorer:
    """Scores labels from their verbalizer words.

    A word's score is the mean log-probability of its tokens (teacher-forced); a label's score is
    the mean over its words. With one single-token word per label this reduces to the label rows'
    logits (the softmax normaliser is shared, so cross-entropy and argmax are unchanged).
    """

    def __init__(self, label_token_ids: Sequence[Sequence[Sequence[int]]]) -> None:
        words = [(label, list(tokens)) for label, per_label in enumerate(label_token_ids) for tokens in per_label]
        self.num_labels = len(label_token_ids)
        self.word_label = torch.tensor([label for label, _ in words])
        self.max_word_length = max(len(tokens) for _, tokens in words)
        self.one_word_per_label = len(words) == self.num_labels
        width = self.max_word_length
        self.word_tokens = torch.tensor([t + [0] * (width - len(t)) for _, t in words])
        # Each label's first word: the label text that task.loss=lm trains on.
        self.first_word = torch.tensor([[label for label, _ in words].index(label) for label in range(self.num_labels)])
        self.word_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for _, t in words], dtype=torch.bool)

    def scores(self, batch: Batch, hidden_fn: Callable[[Batch], torch.Tensor], adapter, model) -> torch.Tensor:
        """(batch, num_labels) scores; `hidden_fn` runs the backbone (with the method's prompt)."""
        return self.scores_from_hidden(batch, hidden_fn(self.model_inputs(batch)), adapter, model)

    def model_inputs(self, batch: Batch) -> Batch:
        """What the backbone reads to score `batch`: the batch itself, or, with multi-token words, each row once
        per word with the word's leading tokens after the answer position (scored teacher-forced)."""
        if self.max_word_length == 1:
            return batch
        num_words, width = self.word_tokens.shape
        # task_ids: a mixture's rows keep their task (a method may pick its prompt by it).
        expanded = {key: batch[key].repeat_interleave(num_words, dim=0)
                    for key in ("input_ids", "attention_mask", "slot_ids", "answer_index", "task_ids") if key in batch}
        fill = {"input_ids": 0, "attention_mask": 0, "slot_ids": -1}
        for key, value in fill.items():
            expanded[key] = torch.nn.functional.pad(expanded[key], (0, width - 1), value=value)
        row_tokens, row_mask, positions, rows = self._word_rows(batch)
        fed = row_mask[:, 1:]  # tokens 1.. are fed as inputs at positions answer+1..
        fed_positions = positions[:, 1:]
        expanded["input_ids"][rows.expand_as(fed_positions)[fed], fed_positions[fed]] = row_tokens[:, :-1][fed]
        expanded["attention_mask"][rows.expand_as(fed_positions)[fed], fed_positions[fed]] = 1
        return expanded

    def scores_from_hidden(self, batch: Batch, hidden: torch.Tensor, adapter, model) -> torch.Tensor:
        """(batch, num_labels) scores from the backbone's hidden states for `model_inputs(batch)`."""
        tokens = self.word_tokens.to(hidden.device)
        if self.max_word_length == 1:
            answer_hidden = adapter.answer_hidden(hidden, batch)
            if self.one_word_per_label:
                return adapter.row_logits(model, answer_hidden, tokens[:, 0]).float()
            word_scores = adapter.vocab_log_probs(model, answer_hidden)[:, tokens[:, 0]]
        else:
            word_scores = self._multi_token_word_scores(batch, hidden, adapter, model)
        return self._aggregate(word_scores, self.word_label.to(hidden.device))

    def _word_rows(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """Per expanded row (example x word): its word's tokens and mask, the positions predicting them, the row."""
        device = batch["input_ids"].device
        num_words, width = self.word_tokens.shape
        word_of_row = torch.arange(num_words, device=device).repeat(len(batch["input_ids"]))
        row_tokens, row_mask = self.word_tokens.to(device)[word_of_row], self.word_mask.to(device)[word_of_row]
        answer_index = batch["answer_index"].repeat_interleave(num_words, dim=0)
        positions = answer_index[:, None] + torch.arange(width, device=device)  # where each word token is predicted
        return row_tokens, row_mask, positions, torch.arange(len(word_of_row), device=device)[:, None]

    def _word_token_log_probs(self, batch: Batch, hidden: torch.Tensor, adapter, model
                              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, words, width) full-vocabulary log-probabilities of each word's tokens, teacher-forced (`hidden`
        is for `model_inputs(batch)`), and the mask of real tokens."""
        row_tokens, row_mask, positions, rows = self._word_rows(batch)
        safe_positions = positions.clamp(max=hidden.shape[1] - 1)
        gathered = hidden[rows, safe_positions]  # (rows, width, d)
        log_probs = adapter.vocab_log_probs(model, gathered)
        token_log_probs = log_probs.gather(-1, row_tokens[..., None]).squeeze(-1)
        shape = (len(batch["input_ids"]), *self.word_tokens.shape)
        return token_log_probs.view(shape), row_mask.view(shape)

    def _multi_token_word_scores(self, batch: Batch, hidden: torch.Tensor, adapter, model) -> torch.Tensor:
        """Each word's mean token log-probability, teacher-forced (`hidden` is for `model_inputs(batch)`)."""
        token_log_probs, mask = self._word_token_log_probs(batch, hidden, adapter, model)
        return (token_log_probs * mask).sum(-1) / mask.sum(-1)

    def lm_loss_from_hidden(self, batch: Batch, hidden: torch.Tensor, adapter, model) -> torch.Tensor:
        """Lester et al.'s objective (task.loss=lm): the full-vocabulary LM loss on each example's label text (its
        label's first word), teacher-forced, averaged over tokens; `hidden` is for `model_inputs(batch)`."""
        gold = self.first_word.to(hidden.device)[batch["labels"]]
        if self.max_word_length == 1:
            log_probs = adapter.vocab_log_probs(model, adapter.answer_hidden(hidden, batch))
            return torch.nn.functional.nll_loss(log_probs, self.word_tokens.to(hidden.device)[gold, 0])
        token_log_probs, mask = self._word_token_log_probs(batch, hidden, adapter, model)
        rows = torch.arange(len(gold), device=hidden.device)
        own, own_mask = token_log_probs[rows, gold], mask[rows, gold]
        return -(own * own_mask).sum() / own_mask.sum()

    def _aggregate(self, word_scores: torch.Tensor, word_label: torch.Tensor) -> torch.Tensor:
        if self.one_word_per_label:
            return word_scores
        totals = torch.zeros(len(word_scores), self.num_labels, device=word_scores.device, dtype=word_scores.dtype)
        totals.index_add_(1, word_label, word_scores)
        counts = torch.bincount(word_label, minlength=self.num_labels).to(word_scores.dtype)
        return totals / counts


class PooledHeadScorer:
    """Encoders without an LM head: a trainable linear head on the masked mean of the final hidden
    states (P-tuning v2's setting for encoders). The head belongs to the method module."""

    def __init__(self, head: torch.nn.Linear) -> None:
        self.head = head

    def scores(self, batch: Batch, hidden_fn: Callable[[Batch], torch.Tensor], adapter, model) -> torch.Tensor:
        return self.scores_from_hidden(batch, hidden_fn(batch), adapter, model)

    def model_inputs(self, batch: Batch) -> Batch:
        return batch

    def scores_from_hidden(self, batch: Batch, hidden: torch.Tensor, adapter, model) -> torch.Tensor:
        hidden = hidden.float()  # pooled and scored in fp32 whatever the backbone's dtype
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        with full_precision(pooled):
            return self.head(pooled)
