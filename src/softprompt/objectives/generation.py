"""Generation: teacher-forced loss on the target, decoding with the prompt in place, ROUGE and BLEU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.text.rouge import ROUGEScore
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.families import FamilyAdapter
from softprompt.errors import ConfigError
from softprompt.objectives.base import STAGES, Objective, PromptedModel
from softprompt.objectives.bleu import MultiReferenceBLEU
from softprompt.objectives.decoding import DecodingConfig
from softprompt.objectives.scoring import Batch


class TextMetrics(nn.Module):
    """ROUGE-1/2/L F-measure (no stemming) and corpus BLEU as SacreBLEU computes it (bleu.py; the report rebuilds the
    same BLEU from the predictions), in [0, 1]. `grouped`: each prediction has a list of references; ROUGE takes, per
    prediction and ROUGE variant, the F-measure of the reference that scores highest (torchmetrics'
    accumulate="best"), and BLEU clips n-grams by any one reference."""

    def __init__(self, grouped: bool = False) -> None:
        super().__init__()
        self.grouped = grouped
        self.rouge = ROUGEScore(rouge_keys=("rouge1", "rouge2", "rougeL"), accumulate="best")
        self.bleu = MultiReferenceBLEU()

    def update(self, predictions: list[str], references: Sequence[str] | Sequence[Sequence[str]]) -> None:
        if self.grouped:  # lists of references
            self.rouge.update(predictions, [list(refs) for refs in references])
            self.bleu.update(predictions, references)
            return
        self.rouge.update(predictions, references)
        self.bleu.update(predictions, [[r] for r in references])

    def compute_and_reset(self) -> dict[str, torch.Tensor]:
        rouge = self.rouge.compute()
        values = {key: rouge[f"{key}_fmeasure"] for key in ("rouge1", "rouge2", "rougeL")}
        values["bleu"] = self.bleu.compute()
        self.rouge.reset()
        self.bleu.reset()
        return values


class GenerationObjective(Objective):
    """Teacher-forced LM loss on the target tokens only; evaluation decodes with the prompt in place."""

    METRICS = ("rougeL", "rouge1", "rouge2", "bleu")
    LOSSES = ("lm",)

    def __init__(self, tokenizer: PreTrainedTokenizerBase, decoding: DecodingConfig,
                 adapter: type[FamilyAdapter], metric: str = "rougeL", prefix: str = "", grouped: bool = False) -> None:
        super().__init__(metric, prefix)
        if not adapter.generates:
            raise ConfigError("task.type", "generation", f"a {adapter.family} backbone has no decoder to generate "
                              "with; use a causal_lm or seq2seq backbone")
        if tokenizer.eos_token_id is None:
            raise ConfigError("backbone.name_or_path", tokenizer.name_or_path, "generation needs an eos token")
        self.tokenizer = tokenizer
        self.decoding = decoding
        self.eos_token_id = int(tokenizer.eos_token_id)
        # task.references=grouped: batches carry each source's references; predictions list them all.
        self.grouped = grouped
        self.metrics = nn.ModuleDict({stage: TextMetrics(grouped) for stage in STAGES})
        self.epoch_values: dict[str, dict[str, torch.Tensor]] = {}

    def outputs(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        return module.adapter.vocab_logits(module.backbone, module.target_hidden(batch)).float()

    @staticmethod
    def target_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy over the real target tokens (padding left out)."""
        mask = batch["target_mask"].bool()
        return F.cross_entropy(logits[mask], batch["target_ids"][mask])

    def loss(self, module: PromptedModel, batch: Batch) -> torch.Tensor:
        return self.target_loss(self.outputs(module, batch), batch)

    def evaluate(self, module: PromptedModel, batch: Batch, stage: str) -> list[dict[str, Any]]:
        size = len(batch["target_ids"])
        # One read of the source serves the teacher-forced loss and decoding (the prefill is shared).
        hidden, tokens = module.score_and_generate(batch, self.decoding, self.eos_token_id)
        logits = module.adapter.vocab_logits(module.backbone, hidden).float()
        self.log_loss(module, stage, self.target_loss(logits, batch), size)
        texts = self.texts(tokens)
        key, references = ("references", list(batch["references"])) if self.grouped else \
            ("reference", list(batch["target_text"]))
        self.metrics[stage].update(texts, references)
        return [{"row_index": row, "prediction": text, key: reference}
                for row, text, reference in zip(batch["row_index"].tolist(), texts, references, strict=True)]

    def generate_texts(self, module: PromptedModel, batch: Batch) -> list[str]:
        """The predictions as scored: decoded with the prompt in place, then cut by `DecodingConfig.finish`."""
        return self.texts(module.generate(batch, self.decoding, self.eos_token_id))

    def texts(self, tokens: Sequence[Sequence[int]]) -> list[str]:
        """Generated token ids as the predictions are scored: decoded, then cut by `DecodingConfig.finish`."""
        return [self.decoding.finish(text) for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    def end_epoch(self, module: PromptedModel, stage: str) -> None:
        values = self.epoch_values[stage] = self.metrics[stage].compute_and_reset()
        module.log_dict({f"{stage}/{self.prefix}{k}": v for k, v in values.items()}, prog_bar=stage == "val")

    def epoch_value(self, stage: str) -> torch.Tensor:
        return self.epoch_values[stage][self.metric]


