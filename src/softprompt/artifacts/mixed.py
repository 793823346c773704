"""Mixed-prompt batches: several trained prompts on one frozen backbone, each row with its own prompt.

Lester et al. (2021) point out that prompt tuning lets one frozen model serve many tasks in one batch.
`load_many(paths)` loads each artifact as `softprompt.load` does (the same Predictor, the same checks)
and returns a `MixedPredictor`, whose rows each name their prompt. A row is rendered with its prompt's
template (and demonstrations) and scored with its prompt's verbalizer; all rows of a batch then run
through the backbone in one forward:

- input-level prompts (prompt tuning, folded P-tuning): every prompt's embeddings sit in one table and
  a row's slots point into its own prompt's part of it;
- attention-level prompts (prefix tuning, P-tuning v2): each row gets its own key/value prefix, padded
  to the batch's longest prefix; the padding columns are masked out (`PrefixKV.visible`), and a row's
  position ids start after its own prefix length, so it sees exactly what it sees alone;
- hard prompts (with or without demonstrations) add nothing to the forward.

Rows of generation prompts go in batches of their own (classification rows are scored in one forward,
generation rows decoded greedily step by step); beam search is refused (per-row prefixes do not follow
beam reordering). Prompts trained on different backbones (fingerprints), tokenizers or precisions are
refused before anything loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.ensemble import EnsembleError, check_vote, combine
from softprompt.artifacts.format import ArtifactError, artifact_dir, read_spec
from softprompt.artifacts.predictor import Predictor, _argmax, load
from softprompt.backbones.attention_prefix import PREFIX_KWARG, enable_prefix_injection, prefix_kv
from softprompt.backbones.families import PromptedInput, place_prompts
from softprompt.backbones.loading import fingerprint_algorithm
from softprompt.data.collate import PadCollator, insert_demonstrations
from softprompt.data.sampling import longest_first_shard
from softprompt.data.task import MIXTURE, parse_task
from softprompt.methods.base import Injection, SoftPromptMethod
from softprompt.objectives.decoding import DecodingConfig, decode
from softprompt.objectives.scoring import Batch

log = logging.getLogger("softprompt")

Input = str | Mapping[str, Any]
PromptRef = int | str


def injection_kind(module: SoftPromptMethod, name: str) -> Injection:
    """INPUT, ATTENTION or NONE (hard prompt): how the module's class declares it joins a mixed batch
    (`SoftPromptMethod.mixed_batch_kind`); a method injecting some other way is refused."""
    kind = type(module).mixed_batch_kind()
    if kind is None or (kind == Injection.NONE and module.position_offset):
        raise ArtifactError(f"prompt {name!r}: method {module.method_name} ({type(module).__qualname__}) injects its "
                            "prompt in a way mixed batches cannot reproduce row by row; predict with softprompt.load")
    return kind


def check_compatible(specs: Sequence[Mapping[str, Any]], names: Sequence[str], force: bool) -> None:
    """Refuse, before anything loads, prompts that cannot share one backbone forward."""
    first = specs[0]["backbone"]
    for spec, name in zip(specs[1:], names[1:], strict=True):
        other = spec["backbone"]
        # Fingerprints of two algorithms cannot be compared here; loading checks each against the one backbone.
        comparable = fingerprint_algorithm(other["fingerprint"]) == fingerprint_algorithm(first["fingerprint"])
        if comparable and other["fingerprint"] != first["fingerprint"]:
            message = (f"prompt {name!r} was trained on backbone {other['name']} with fingerprint "
                       f"{other['fingerprint']}, prompt {names[0]!r} on {first['name']} with fingerprint "
                       f"{first['fingerprint']}: a mixed batch runs every prompt on one backbone")
            if not force:
                raise ArtifactError(f"{message}; force=true mixes them anyway")
            log.warning("%s; mixing them anyway (force=true)", message)
        for key, what in (("family", "family"), ("tokenizer", "tokenizer")):
            if other[key] != first[key]:
                raise ArtifactError(f"prompt {name!r} uses the {what} {other[key]}, prompt {names[0]!r} "
                                    f"{first[key]}: a mixed batch needs one")
        if spec.get("precision") != specs[0].get("precision"):
            raise ArtifactError(f"prompt {name!r} ran under precision {spec.get('precision')}, prompt {names[0]!r} "
                                f"under {specs[0].get('precision')}: a mixed batch runs one precision")
    for spec, name in zip(specs, names, strict=True):
        if spec["task"]["type"] == MIXTURE:
            raise ArtifactError(f"prompt {name!r} was trained on the task mixture {spec['task']['name']}: mixed "
                                "batches take single-task prompts; softprompt.load(path, task=NAME) predicts for one "
                                "of its tasks")
        task = parse_task(spec["task"])
        beams = task.generation.get("num_beams", 1) if task.is_generation else 1
        if beams > 1:
            raise ArtifactError(f"prompt {name!r} decodes with task.generation.num_beams={beams}: mixed batches "
                                "decode greedily (per-row prompts do not follow beam reordering); use "
                                "softprompt.load for it")


class MixedPredictor:
    """Several prompts on one frozen backbone; every row names its prompt (an index, or a name from `names`).

    `predict`, `score`, `probabilities` and `predict_records` work as `Predictor`'s, plus `prompts`: one
    prompt per input, or a single one for all. `predict_each` / `score_each` run every input with every prompt.
    """

    def __init__(self, predictors: Sequence[Predictor], names: Sequence[str], batch_size: int | None = None) -> None:
        if len(predictors) != len(names) or not predictors:
            raise ArtifactError(f"give one name per prompt ({len(predictors)} prompts, {len(names)} names)")
        self.predictors, self.names = list(predictors), [str(n) for n in names]
        modules = [p.module for p in self.predictors]
        self.kinds = [injection_kind(m, n) for m, n in zip(modules, self.names, strict=True)]
        # The first prompt's backbone and family adapter serve every prompt (same fingerprint).
        self.backbone, self.adapter = modules[0].backbone, modules[0].adapter
        self.batch_size = int(batch_size or min(p.batch_size for p in self.predictors))
        if self.batch_size < 1:
            raise ArtifactError(f"batch_size={batch_size} is invalid: must be an integer >= 1")
        # Positions are mask-aware, so any side gives each row its own result; right suits every family.
        sides = {p.datamodule.data.padding_side for p in self.predictors}
        self.padding_side = sides.pop() if len(sides) == 1 else "right"
        self.collate = PadCollator(self.predictors[0].datamodule.tokenizer.pad_token_id, self.padding_side)
        device = self.predictors[0].device

        with torch.no_grad():
            # Input level: one embedding table; a row's slot s becomes s + its prompt's offset in it.
            tables, offsets, start = [], [], 0
            for module, kind in zip(modules, self.kinds, strict=True):
                offsets.append(start)
                if kind == Injection.INPUT:
                    tables.append(module.prompt_embeddings().detach())
                    start += len(tables[-1])
            self.prompt_table = torch.cat(tables).to(device) if tables else None
            self.slot_offsets = torch.tensor(offsets, device=device)
            self.position_offsets = torch.tensor([m.position_offset for m in modules], device=device)
            # Attention level: every prompt's (layers, 2, heads, P, head_dim) grid padded to the longest P;
            # `prefix_visible` marks each prompt's real columns (none for the other kinds).
            grids = {i: m.prefix_grid().detach() for i, m in enumerate(modules) if self.kinds[i] == Injection.ATTENTION}
            self.prefix_table = self.prefix_visible = None
            if grids:
                enable_prefix_injection(self.backbone)
                self.roles = modules[next(iter(grids))].geometry[0]
                shape = next(iter(grids.values())).shape
                width = max(g.shape[-2] for g in grids.values())
                self.prefix_table = torch.zeros(len(modules), *shape[:-2], width, shape[-1], device=device)
                self.prefix_visible = torch.zeros(len(modules), width, dtype=torch.bool, device=device)
                for i, grid in grids.items():
                    self.prefix_table[i, ..., :grid.shape[-2], :] = grid
                    self.prefix_visible[i, :grid.shape[-2]] = True

    # -- which prompt each row uses ----------------------------------------------------------------
    def prompt_index(self, ref: PromptRef, where: str = "prompt") -> int:
        """The index of a prompt given by index or name."""
        if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < len(self.names):
            return ref
        if isinstance(ref, str) and ref in self.names:
            return self.names.index(ref)
        raise ArtifactError(f"{where} is {ref!r}; allowed: an index 0..{len(self.names) - 1} or a name: "
                            f"{', '.join(self.names)}")

    def _prompt_of_rows(self, prompts: PromptRef | Sequence[PromptRef], count: int) -> list[int]:
        if isinstance(prompts, int | str):
            return [self.prompt_index(prompts, "prompts")] * count
        if len(prompts) != count:
            raise ArtifactError(f"prompts has {len(prompts)} entries for {count} inputs; give one per input "
                                "(or a single index or name for all)")
        return [self.prompt_index(ref, f"prompts[{i}]") for i, ref in enumerate(prompts)]

    def predictor(self, prompt: PromptRef) -> Predictor:
        """The single-prompt Predictor of one prompt (what `softprompt.load` returns for it)."""
        return self.predictors[self.prompt_index(prompt)]

    # -- batches -------------------------------------------------------------------------------------
    def batches(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]) -> Iterator[Batch]:
        """Padded batches on the device, longest first; classification and generation rows apart. `row_index`
        is the input's position, `prompt_index` its prompt."""
        of_row = self._prompt_of_rows(prompts, len(texts))
        rows: list[dict] = []
        for p, predictor in enumerate(self.predictors):
            mine = [i for i, q in enumerate(of_row) if q == p]
            examples = [predictor.example(texts[i], i) for i in mine]
            demonstrations = predictor.datamodule.demonstration_ids
            after_specials = len(predictor.datamodule.specials[0])
            for i, row in zip(mine, predictor.datamodule.encode(examples), strict=True):
                rows.append(insert_demonstrations({**row, "row_index": i}, demonstrations, after_specials))
        for generation in (False, True):
            group = [r for r in rows if self.predictors[of_row[r["row_index"]]].generation == generation]
            order = longest_first_shard([len(r["input_ids"]) for r in group])
            for start in range(0, len(order), self.batch_size):
                batch = self.collate([group[i] for i in order[start:start + self.batch_size]])
                batch["prompt_index"] = torch.tensor([of_row[i] for i in batch["row_index"].tolist()])
                yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # -- the mixed forward ---------------------------------------------------------------------------
    def prompted_inputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """(input embeddings, (batch, 1) position offsets, attention kwargs) with each row's own prompt in."""
        prompt = batch["prompt_index"]
        embeds = self.adapter.embed(self.backbone, batch["input_ids"])
        if self.prompt_table is not None:
            slots = batch["slot_ids"]
            slots = torch.where(slots >= 0, slots + self.slot_offsets[prompt][:, None], -1)
            embeds = place_prompts(embeds, self.prompt_table.to(embeds.dtype), slots)
        kwargs: dict[str, Any] = {}
        if self.prefix_table is not None:
            visible = self.prefix_visible[prompt]
            width = int(visible.sum(-1).max())  # this batch's longest prefix; 0: no attention-level row
            if width:
                grid = self.prefix_table[prompt][..., :width, :].movedim(0, 2)  # (layers, 2, batch, heads, P, hd)
                kwargs[PREFIX_KWARG] = prefix_kv(grid, self.roles, visible[:, :width])
        return embeds, self.position_offsets[prompt][:, None], kwargs

    def label_scores(self, batch: Batch) -> list[torch.Tensor]:
        """Per row, its prompt's label scores, from one backbone forward over the whole batch.

        Each prompt's scorer says what the backbone must read for its rows (the rows themselves, or each row
        once per verbalizer word for multi-token words); those inputs are stacked into one forward and each
        scorer gets its own rows' hidden states back.
        """
        groups, parts = [], []
        for p in batch["prompt_index"].unique().tolist():
            rows = (batch["prompt_index"] == p).nonzero()[:, 0]
            part = {key: batch[key][rows] for key in ("input_ids", "attention_mask", "slot_ids", "answer_index")}
            inputs = self.predictors[p].objective.scorer.model_inputs(part)
            groups.append((p, rows, part, inputs))
            parts.append({**inputs, "prompt_index": torch.full_like(inputs["answer_index"], p)})
        stacked = _stack(parts)
        embeds, offsets, kwargs = self.prompted_inputs(stacked)
        hidden = self.adapter.hidden_states(self.backbone, PromptedInput(embeds, stacked["attention_mask"], offsets,
                                                                         kwargs))
        scores: list[torch.Tensor | None] = [None] * len(batch["input_ids"])
        start = 0
        for p, rows, part, inputs in groups:
            size, width = inputs["input_ids"].shape
            module = self.predictors[p].module
            own = hidden[start:start + size, :width]  # its rows, without the other groups' extra columns
            start += size
            for row, value in zip(rows.tolist(), self.predictors[p].objective.scorer.scores_from_hidden(
                    part, own, module.adapter, module.backbone), strict=True):
                scores[row] = value
        return scores

    def generated_texts(self, batch: Batch) -> list[str]:
        """Per row, its prompt's greedy continuation, up to its prompt's max_new_tokens."""
        embeds, offsets, kwargs = self.prompted_inputs(batch)
        objectives = [self.predictors[p].objective for p in batch["prompt_index"].tolist()]
        longest = max(o.decoding.max_new_tokens for o in objectives)
        first, session = self.adapter.start_generation(self.backbone, PromptedInput(
            embeds, batch["attention_mask"], offsets, kwargs, batch["answer_index"]))
        # Greedy tokens do not depend on later steps, so cutting at a row's own limit is exact.
        tokens = decode(first.float(), session, objectives[0].eos_token_id, DecodingConfig(longest))
        return [o.texts([t[:o.decoding.max_new_tokens]])[0] for o, t in zip(objectives, tokens, strict=True)]

    @torch.no_grad()
    def outputs(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]) -> list[list[float] | str]:
        """Per input: its label probabilities (classification prompt) or generated text (generation prompt)."""
        results: list = [None] * len(texts)
        for module in (p.module for p in self.predictors):
            module.eval()
        with self.predictors[0]._autocast():  # one precision for all (check_compatible)
            for batch in self.batches(texts, prompts):
                rows = batch["row_index"].tolist()
                if self.predictors[int(batch["prompt_index"][0])].generation:
                    values = self.generated_texts(batch)
                else:
                    values = [s.float().softmax(-1).tolist() for s in self.label_scores(batch)]
                for row, value in zip(rows, values, strict=True):
                    results[row] = value
        return results

    # -- the Predictor-like API ------------------------------------------------------------------------
    def probabilities(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]) -> list[list[float]]:
        """Per input, its prompt's label probabilities in its label order (classification prompts only)."""
        of_row = self._prompt_of_rows(prompts, len(texts))
        for i, p in enumerate(of_row):
            if self.predictors[p].generation:
                raise ArtifactError(f"prompts[{i}] is {self.names[p]!r}, a generation prompt: it has no label "
                                    "probabilities; use predict() for its generated text")
        return self.outputs(texts, of_row)

    def score(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]) -> list[dict[str, float]]:
        """Per input, {label: probability} with its own prompt's labels."""
        of_row = self._prompt_of_rows(prompts, len(texts))
        return [dict(zip(self.predictors[p].labels, probs, strict=True))
                for p, probs in zip(of_row, self.probabilities(texts, of_row), strict=True)]

    def predict(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]) -> list[str]:
        """Per input, a label name of its prompt's task, or its generated text."""
        return [record["prediction"] for record in self.predict_records(texts, prompts)]

    def predict_records(self, texts: Sequence[Input], prompts: PromptRef | Sequence[PromptRef]
                        ) -> list[dict[str, Any]]:
        """One record per input: `row_index`, `prompt` (its name), `prediction`, and `probabilities` {label: p}
        for classification prompts."""
        of_row = self._prompt_of_rows(prompts, len(texts))
        records = []
        for i, (p, value) in enumerate(zip(of_row, self.outputs(texts, of_row), strict=True)):
            record = {"row_index": i, "prompt": self.names[p]}
            if isinstance(value, str):
                record["prediction"] = value
            else:
                labels = self.predictors[p].labels
                record.update(prediction=labels[_argmax(value)], probabilities=dict(zip(labels, value, strict=True)))
            records.append(record)
        return records

    def _each(self, texts: Sequence[Input]) -> tuple[list[Input], list[int]]:
        return [t for _ in self.names for t in texts], [p for p in range(len(self.names)) for _ in texts]

    def predict_each(self, texts: Sequence[Input]) -> dict[str, list[str]]:
        """{prompt name: its predictions for every input}, all prompts in the same mixed batches."""
        predictions = self.predict(*self._each(texts))
        return {name: predictions[p * len(texts):(p + 1) * len(texts)] for p, name in enumerate(self.names)}

    def score_each(self, texts: Sequence[Input]) -> dict[str, list[dict[str, float]]]:
        """{prompt name: {label: probability} for every input} (classification prompts only)."""
        scores = self.score(*self._each(texts))
        return {name: scores[p * len(texts):(p + 1) * len(texts)] for p, name in enumerate(self.names)}

    def ensemble(self, texts: Sequence[Input], vote: str = "mean") -> list[str]:
        """Per input, the label the prompts agree on (`vote`: mean or majority, see softprompt.artifacts.ensemble);
        every prompt sees every input, all in the same mixed batches."""
        return [record["prediction"] for record in self.ensemble_records(texts, vote)]

    def ensemble_records(self, texts: Sequence[Input], vote: str = "mean") -> list[dict[str, Any]]:
        """Per input: `prediction`, the mean `probabilities` {label: p}, the `votes` {label: n} and each prompt's
        own prediction (`members`: {name: label})."""
        check_vote(vote)
        labels = self.predictors[0].labels
        for name, predictor in zip(self.names, self.predictors, strict=True):
            if predictor.generation or predictor.labels != labels:
                found = "a generation prompt" if predictor.generation else f"labels {predictor.labels}"
                raise EnsembleError(f"prompt {name!r} cannot join an ensemble with prompt {self.names[0]!r}: it has "
                                    f"{found}, the ensemble needs one classification task with labels {labels}")
        texts = list(texts)
        probabilities = self.probabilities(*self._each(texts))
        members = [probabilities[p * len(texts):(p + 1) * len(texts)] for p in range(len(self.names))]
        return [{"row_index": row, "prediction": labels[c.label],
                 "probabilities": dict(zip(labels, c.probabilities, strict=True)),
                 "votes": dict(zip(labels, c.votes, strict=True)),
                 "members": {name: labels[_argmax(member[row])] for name, member in zip(self.names, members,
                                                                                     strict=True)}}
                for row, c in enumerate(combine(members, vote))]


def _stack(parts: Sequence[Batch]) -> Batch:
    """Batches of the same padding side, one after the other; shorter ones get masked columns on the right
    (after every real token: no real token attends to them)."""
    width = max(part["input_ids"].shape[1] for part in parts)
    fill = {"input_ids": 0, "attention_mask": 0, "slot_ids": -1}
    return {key: torch.cat([torch.nn.functional.pad(part[key], (0, width - part[key].shape[1]), value=fill[key])
                            if key in fill else part[key] for part in parts])
            for key in (*fill, "answer_index", "prompt_index")}


def load_many(paths: Sequence[str | Path] | Mapping[str, str | Path], force: bool = False,
              cache_dir: str | Path | None = None, device: str | torch.device = "cpu",
              batch_size: int | None = None) -> MixedPredictor:
    """A MixedPredictor over several artifacts (a list of paths, named by index, or {name: path}).

    All must have been trained on the same backbone weights (fingerprint), tokenizer and precision; a
    mismatch is refused in one line before anything loads (`force=True` mixes different fingerprints
    anyway, with a warning, and loads each as `softprompt.load(path, force=True)` would). `batch_size`
    defaults to the smallest of the artifacts' eval batch sizes.
    """
    if isinstance(paths, str | Path):
        raise ArtifactError(f"load_many takes several artifacts (a list of paths or a {{name: path}} dict), got "
                            f"the single path {str(paths)!r}; softprompt.load loads one")
    if isinstance(paths, Mapping):
        names, paths = [str(n) for n in paths], list(paths.values())
    else:
        paths = list(paths)
        names = [str(i) for i in range(len(paths))]
    if not paths:
        raise ArtifactError("load_many needs at least one artifact path")
    directories = [artifact_dir(p) for p in paths]
    check_compatible([read_spec(d) for d in directories], names, force)
    predictors = [load(d, force=force, cache_dir=cache_dir, device=device) for d in directories]
    return MixedPredictor(predictors, names, batch_size)
