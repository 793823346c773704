"""Trained prompts as artifacts: the folded tensors plus what it takes to predict with them.

Every run writes `prompt/` into its output dir:
- `softprompt.safetensors`: the method's folded tensors (`folded_state()`: P-tuning's encoder and prefix
  tuning's MLP computed away), never a backbone weight; empty for `hard_prompt`;
- `softprompt.json`: the format version, the method and its resolved config, the backbone config and
  identity (with the fingerprint of its frozen weights), the family, the task pieces needed to predict
  (template, verbalizer or target spec and decoding, max_length, text fields, columns, demonstrations),
  the prompt length, init and the run's val/test metrics.

`load(path)` rebuilds the frozen backbone through the loader and in-process cache that training uses,
refuses a backbone whose fingerprint differs from the artifact's (unless `force=True`), rebuilds the
method in its folded form and the objective, and returns a `Predictor`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.backbones.loading import Backbone, fingerprint
from softprompt.data import PromptDataModule
from softprompt.data.datamodule import tokenizer_identity
from softprompt.data.sampling import longest_first_shard
from softprompt.errors import SoftPromptError
from softprompt.methods import build_method
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.init import InitContext
from softprompt.methods.layout import prompt_template
from softprompt.methods.objectives import build_objective
from softprompt.methods.scoring import Batch
from softprompt.precision import MIXED_BACKBONE_DTYPES, backbone_dtype, trainer_precision, uses_fsdp

log = logging.getLogger("softprompt")

FORMAT = "softprompt-artifact"
FORMAT_VERSION = 1
ARTIFACT_DIR = "prompt"  # in a run's output dir
TENSORS_FILE = "softprompt.safetensors"
SPEC_FILE = "softprompt.json"
# The task config a prediction needs (the data source and splits are left out).
TASK_KEYS = ("name", "type", "metric", "loss", "template", "text_fields", "columns", "labels", "verbalizer",
             "max_length", "target_prefix", "max_target_length", "generation")
# The folded form of every method: no prompt encoder or MLP, and a cheap placeholder init that
# `load_folded_state` replaces (a data-dependent init such as `vocab` would need the training split).
PLAIN_FORM = {"encoder": "none", "reparam": "none", "match_embedding_std": False, "zero_init": False}
PLACEHOLDER_INIT = "random_uniform"
DEFAULT_BATCH_SIZE = 64


class ArtifactError(SoftPromptError):
    """An artifact cannot be read, does not fit the backbone, or cannot answer the request."""


# -- saving ------------------------------------------------------------------------------------------
def folded_tensors(module: SoftPromptModule) -> dict[str, torch.Tensor]:
    """The module's folded tensors as contiguous CPU tensors, computed in eval mode (no encoder dropout)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            state = module.folded_state()
    finally:
        module.train(was_training)
    return {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}


def artifact_spec(module: SoftPromptModule, job: Mapping[str, Any], summary: Mapping[str, Any], backbone: Backbone,
                  demonstration_ids: Sequence[int], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """softprompt.json: everything but the tensors. `job` is the resolved run config, `summary` metrics.json."""
    method, task, trainer = job["method"], job["task"], job["trainer"]
    precision = trainer_precision(trainer)
    backbone_cfg = {**job["backbone"],
                    "dtype": backbone_dtype(precision, str(job["backbone"]["dtype"]), uses_fsdp(trainer))}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": {"name": module.method_name, "config": dict(method)},
        "num_virtual_tokens": int(getattr(module, "num_virtual_tokens", 0)),
        "init": getattr(module, "init", None),
        "tensors": {key: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                    for key, t in tensors.items()},
        "backbone": {"name": backbone.name, "source": backbone.source, "revision": backbone.revision,
                     "family": backbone.family, "fingerprint": summary["backbone_fingerprint_start"],
                     "tokenizer": tokenizer_identity(backbone.tokenizer), "config": backbone_cfg},
        "precision": precision,
        "task": {key: task[key] for key in TASK_KEYS if key in task},
        "prompt_template": prompt_template(method, task["template"]),
        "inputs": {"padding_side": job["data"]["padding_side"], "batch_size": int(job["data"]["eval_batch_size"]),
                   "num_demonstrations": int(method.get("num_demonstrations") or 0),
                   "demonstration_separator": str(method.get("demonstration_separator", "\n\n")),
                   "demonstration_ids": [int(i) for i in demonstration_ids]},
        "metrics": {"selection_metric": summary["selection_metric"], "val": summary["val"], "test": summary["test"],
                    "steps": summary["steps"], "best_step": summary["best_step"]},
        "run": {key: summary.get(key) for key in ("seed", "fold", "num_folds", "lr", "best_checkpoint", "tags",
                                                  "overrides")},
    }


def save_artifact(directory: str | Path, module: SoftPromptModule, job: Mapping[str, Any],
                  summary: Mapping[str, Any], backbone: Backbone, demonstration_ids: Sequence[int] = ()) -> Path:
    """Write softprompt.safetensors and softprompt.json into `directory`; returns the directory."""
    tensors = folded_tensors(module)
    return write_artifact(directory, tensors, artifact_spec(module, job, summary, backbone, demonstration_ids,
                                                            tensors))


def write_artifact(directory: str | Path, tensors: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """softprompt.safetensors (`tensors`, contiguous) and softprompt.json (`spec`) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({key: t.contiguous() for key, t in tensors.items()}, directory / TENSORS_FILE,
              metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION), "method": spec["method"]["name"]})
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return directory


# -- loading -----------------------------------------------------------------------------------------
def artifact_dir(path: str | Path) -> Path:
    """The folder holding softprompt.json: `path` itself, its parent (the json file), or a run dir's prompt/."""
    path = Path(path).expanduser()
    for candidate in (path, path.parent if path.name == SPEC_FILE else None, path / ARTIFACT_DIR):
        if candidate is not None and (candidate / SPEC_FILE).is_file():
            return candidate
    raise ArtifactError(f"{path} holds no {SPEC_FILE} (give a run's {ARTIFACT_DIR}/ folder)")


def read_spec(directory: Path) -> dict[str, Any]:
    try:
        spec = json.loads((directory / SPEC_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{directory / SPEC_FILE} is not valid JSON ({error})") from None
    if spec.get("format") != FORMAT or not isinstance(spec.get("format_version"), int):
        raise ArtifactError(f"{directory / SPEC_FILE} is not a softprompt artifact")
    if spec["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{directory / SPEC_FILE} has format version {spec['format_version']}; this softprompt "
                            f"reads up to {FORMAT_VERSION}")
    task = spec.get("task")
    if isinstance(task, dict) and "loss" not in task:  # written before task.loss existed: those trained this way
        task["loss"] = "lm" if task.get("type") == "generation" else "verbalizer"
    return spec


def default_cache_dir() -> Path:
    """Where prepared offline assets live, as in conf/paths/default.yaml."""
    return Path(os.environ.get("SOFTPROMPT_CACHE") or Path.home() / ".cache" / "softprompt")


def check_fingerprint(spec: Mapping[str, Any], backbone: Backbone, force: bool) -> str:
    """The loaded backbone's fingerprint; a mismatch with the artifact's raises, or warns under `force`."""
    expected, found = spec["backbone"]["fingerprint"], fingerprint(backbone.model)
    if found != expected:
        message = (f"backbone {backbone.name} does not match the artifact: expected fingerprint {expected}, found "
                   f"{found} (its frozen weights differ from the ones the prompt was trained on)")
        if not force:
            raise ArtifactError(f"{message}; force=true loads it anyway")
        log.warning("%s; loading anyway (force=true)", message)
    return found


def plain_method_config(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method config of the folded form (see PLAIN_FORM)."""
    plain = {**method, **{key: value for key, value in PLAIN_FORM.items() if key in method}}
    if plain.get("init"):
        plain["init"] = PLACEHOLDER_INIT
    return plain


def _placeholder_init(backbone: Backbone, method: Mapping[str, Any]) -> InitContext:
    return InitContext(embeddings=backbone.model.get_input_embeddings().weight.detach(),
                       tokenizer=backbone.tokenizer, token_counts=None, label_token_ids=[],
                       generator=torch.Generator().manual_seed(0), init_range=float(method.get("init_range") or 0.5),
                       init_std=None, init_vocab_size=1, init_text=None)


def build_folded_module(spec: Mapping[str, Any], backbone: Backbone,
                        tensors: Mapping[str, torch.Tensor]) -> SoftPromptModule:
    """The method in its folded form with the artifact's tensors in, in eval mode."""
    objective = build_objective(spec["task"], FAMILY_ADAPTERS[backbone.family], backbone.tokenizer,
                                backbone.hidden_size)
    method = plain_method_config(spec["method"]["config"])
    module = build_method(method, backbone=backbone, objective=objective, optimizer={}, dropout=False,
                          init_context=lambda: _placeholder_init(backbone, method))
    expected = set(module.folded_state())
    if set(tensors) != expected:
        raise ArtifactError(f"{TENSORS_FILE} holds {sorted(tensors)}; {module.method_name} on this backbone stores "
                            f"{sorted(expected)}")
    module.load_folded_state(tensors)
    return module.eval()


def load(path: str | Path, force: bool = False, cache_dir: str | Path | None = None,
         device: str | torch.device = "cpu") -> Predictor:
    """A Predictor from an artifact folder (a run's `prompt/`, or the run dir itself).

    The backbone is rebuilt from the artifact's backbone config (offline assets from `cache_dir`, default
    `$SOFTPROMPT_CACHE` or ~/.cache/softprompt) and must have the fingerprint the prompt was trained on;
    `force=True` loads it anyway, with a warning.
    """
    directory = artifact_dir(path)
    spec = read_spec(directory)
    if not (directory / TENSORS_FILE).is_file():
        raise ArtifactError(f"{directory} has {SPEC_FILE} but no {TENSORS_FILE}")
    tensors = load_file(directory / TENSORS_FILE)
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    backbone = BACKBONES.get(spec["backbone"]["config"], cache, 1)
    if backbone.family != spec["backbone"]["family"]:
        raise ArtifactError(f"backbone {backbone.name} loads as a {backbone.family} model; the artifact was trained "
                            f"on a {spec['backbone']['family']} one")
    check_fingerprint(spec, backbone, force)
    module = build_folded_module(spec, backbone, tensors).to(device)
    return Predictor(module, input_datamodule(spec, backbone, cache), spec, directory)


def input_datamodule(spec: Mapping[str, Any], backbone: Backbone, cache_dir: Path) -> PromptDataModule:
    """A DataModule that renders new inputs exactly as the run rendered its splits (template, specials,
    truncation, demonstrations); it loads no data."""
    adapter, inputs = FAMILY_ADAPTERS[backbone.family], spec["inputs"]
    datamodule = PromptDataModule(spec["task"], {"padding_side": inputs["padding_side"]}, {}, spec["prompt_template"],
                                  backbone.tokenizer, cache_dir, seed=0,
                                  num_demonstrations=inputs["num_demonstrations"],
                                  demonstration_separator=inputs["demonstration_separator"],
                                  answer_token_id=adapter.answer_token_id(backbone.tokenizer),
                                  answer_must_end=adapter.answer_is_next_token)
    datamodule.demonstration_ids = list(inputs["demonstration_ids"])
    return datamodule


# -- predicting --------------------------------------------------------------------------------------
def _lookup(row: Mapping[str, Any], path: str) -> Any:
    """`row[path]`, or a nested value by a dotted column path (`pair.body`)."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


class Predictor:
    """Predictions from a loaded artifact: labels and probabilities, or generated text. Batched, eval mode,
    no gradients, longest inputs first (as the run evaluated its test split)."""

    def __init__(self, module: SoftPromptModule, datamodule: PromptDataModule, spec: Mapping[str, Any],
                 directory: Path | None = None, batch_size: int | None = None) -> None:
        self.module, self.datamodule, self.spec, self.directory = module, datamodule, spec, directory
        self.task = spec["task"]
        self.generation = self.task["type"] == "generation"
        self.labels = [] if self.generation else [str(x) for x in self.task["labels"]]
        self.text_fields = [str(f) for f in self.task["text_fields"]]
        self.batch_size = int(batch_size or spec["inputs"].get("batch_size") or DEFAULT_BATCH_SIZE)

    @property
    def method(self) -> str:
        return str(self.spec["method"]["name"])

    @property
    def device(self) -> torch.device:
        return next(self.module.backbone.parameters()).device

    def examples(self, texts: Sequence[str | Mapping[str, Any]]) -> list[dict[str, str]]:
        """Inputs as the template's fields: a string fills the single text field; a dict gives each field by
        its name or its dataset column (`task.columns`), or by `text` when there is one field."""
        return [self.example(item, index) for index, item in enumerate(texts)]

    def example(self, item: str | Mapping[str, Any], index: int) -> dict[str, str]:
        """One input as the template's fields (see `examples`); `index` names it in errors."""
        if isinstance(item, str):
            if len(self.text_fields) != 1:
                raise ArtifactError(f"input {index} is a string, but task {self.task['name']} has the text "
                                    f"fields {self.text_fields}: give a dict with each")
            item = {self.text_fields[0]: item}
        if not isinstance(item, Mapping):
            raise ArtifactError(f"input {index} is a {type(item).__name__}; give a string or a dict")
        columns = self.task.get("columns") or {}
        return {field: str(self._field(item, field, columns.get(field), index)) for field in self.text_fields}

    def _field(self, row: Mapping[str, Any], field: str, column: str | None, index: int) -> Any:
        names = [field, *([column] if column and column != field else []),
                 *(["text"] if len(self.text_fields) == 1 and field != "text" else [])]
        for name in names:
            with contextlib.suppress(KeyError):
                return _lookup(row, name)
        raise ArtifactError(f"input {index} has no {' or '.join(repr(n) for n in names)} key "
                            f"(its keys: {', '.join(map(str, row)) or 'none'})")

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The run's mixed precision, if it used one (the backbone is already in that dtype)."""
        dtype = MIXED_BACKBONE_DTYPES.get(str(self.spec.get("precision")))
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, dtype))

    def batches(self, texts: Sequence[str | Mapping[str, Any]]) -> Iterator[Batch]:
        """Padded batches on the module's device, longest inputs first; `row_index` is the input's position."""
        rows = self.datamodule.encode(self.examples(texts))
        order = longest_first_shard([len(r["input_ids"]) for r in rows])
        collate = self.datamodule.collator()
        for start in range(0, len(order), self.batch_size):
            batch = collate([rows[i] for i in order[start:start + self.batch_size]])
            yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def _per_input(self, texts: Sequence[str | Mapping[str, Any]], compute) -> list:
        results: list = [None] * len(texts)
        self.module.eval()
        with self._autocast():
            for batch in self.batches(texts):
                for row, value in zip(batch["row_index"].tolist(), compute(batch), strict=True):
                    results[row] = value
        return results

    def probabilities(self, texts: Sequence[str | Mapping[str, Any]]) -> list[list[float]]:
        """Per input, the label probabilities in label order (classification)."""
        if self.generation:
            raise ArtifactError(f"task {self.task['name']} is a generation task: it has no label probabilities; "
                                "use predict() for its generated text")
        return self._per_input(texts, lambda b: self.module.objective.outputs(self.module, b).float()
                               .softmax(-1).tolist())

    def score(self, texts: Sequence[str | Mapping[str, Any]]) -> list[dict[str, float]]:
        """Per input, {label: probability} (classification only)."""
        return [dict(zip(self.labels, p, strict=True)) for p in self.probabilities(texts)]

    def predict(self, texts: Sequence[str | Mapping[str, Any]]) -> list[str]:
        """Label names (classification) or generated strings with the task's decoding settings (generation)."""
        if self.generation:
            return self._per_input(texts, lambda b: self.module.objective.generate_texts(self.module, b))
        return [self.labels[_argmax(p)] for p in self.probabilities(texts)]

    def predict_records(self, texts: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One record per input: `row_index`, `prediction`, and `probabilities` {label: p} for classification."""
        if self.generation:
            return [{"row_index": i, "prediction": text} for i, text in enumerate(self.predict(texts))]
        return [{"row_index": i, "prediction": self.labels[_argmax(p)],
                 "probabilities": dict(zip(self.labels, p, strict=True))}
                for i, p in enumerate(self.probabilities(texts))]


def _argmax(values: Sequence[float]) -> int:
    """The first largest index, as the run's test predictions pick it."""
    return max(range(len(values)), key=values.__getitem__)
