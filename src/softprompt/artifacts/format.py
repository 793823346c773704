"""The artifact format: a run's `prompt/` folder, written atomically and read back with checks.

- `softprompt.safetensors`: the method's folded tensors (`folded_state()`: P-tuning's encoder and prefix
  tuning's MLP computed away), never a backbone weight; empty for `hard_prompt`;
- `softprompt.json`: the format version, the method and its resolved config, the backbone config and
  identity (with the fingerprint of its frozen weights), the family, the task pieces needed to predict
  (template, verbalizer or target spec and decoding, max_length, text fields, columns, demonstrations),
  the prompt length, init and the run's val/test metrics.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from softprompt.backbones.loading import Backbone
from softprompt.config.precision import backbone_dtype, trainer_precision, uses_fsdp
from softprompt.data.datamodule import tokenizer_identity
from softprompt.errors import SoftPromptError
from softprompt.methods import method_config
from softprompt.methods.base import SoftPromptModule
from softprompt.methods.layout import prompt_template

FORMAT = "softprompt-artifact"
FORMAT_VERSION = 2  # 2: the whole task config, and every method setting (typed configs)
ARTIFACT_DIR = "prompt"  # in a run's output dir
TENSORS_FILE = "softprompt.safetensors"
SPEC_FILE = "softprompt.json"


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
    settings = method_config(method)
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
        # What the run asked for: `auto` is resolved again for the machine that loads the prompt.
        "precision_requested": (summary.get("precision") or {}).get("requested", precision),
        # Where the training data came from is not needed to predict (and may name private files).
        "task": {**task, "source": {}, "splits": {}},
        "prompt_template": prompt_template(settings, task["template"]),
        "inputs": {"padding_side": job["data"]["padding_side"], "batch_size": int(job["data"]["eval_batch_size"]),
                   "num_demonstrations": settings.num_demonstrations,
                   "demonstration_separator": settings.demonstration_separator,
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


# -- reading -----------------------------------------------------------------------------------------
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
    return upgrade_v1(spec) if spec["format_version"] == 1 else spec


# Settings format version 1 did not store, and the only values version-1 runs could have had.
V1_TASK = {"source": {}, "splits": {}}
V1_METHOD = {"encoder": "none", "encoder_hidden": None, "encoder_dropout": 0.0, "match_embedding_std": False,
             "template": None}


def upgrade_v1(spec: dict[str, Any]) -> dict[str, Any]:
    """A version-1 spec in version 2's shape: v1 kept only the task keys a prediction needs and left out
    settings a method did not name; the values filled in are the ones those runs used."""
    task, method = spec["task"], spec["method"]["config"]
    generation = task.get("type") == "generation"
    task.setdefault("loss", "lm" if generation else "verbalizer")  # task.loss came later; runs trained this way
    task.setdefault("prompt_init", "vocab" if generation else "class_labels")
    for key, value in V1_TASK.items():
        task.setdefault(key, value)
    spec["backbone"]["config"].setdefault("attention", "sdpa")  # v1 ran PyTorch's SDPA as it chose
    inputs = spec["inputs"]
    method.setdefault("num_demonstrations", inputs["num_demonstrations"])
    method.setdefault("demonstration_separator", inputs["demonstration_separator"])
    if method.get("slots") in ("front", "template"):  # input-level methods: keys only P-tuning's preset named
        for key, value in V1_METHOD.items():
            method.setdefault(key, value)
    spec["format_version"] = FORMAT_VERSION
    return spec


def default_cache_dir() -> Path:
    """Where prepared offline assets live, as in conf/paths/default.yaml."""
    return Path(os.environ.get("SOFTPROMPT_CACHE") or Path.home() / ".cache" / "softprompt")


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """The folded tensors of an artifact folder."""
    if not (directory / TENSORS_FILE).is_file():
        raise ArtifactError(f"{directory} has {SPEC_FILE} but no {TENSORS_FILE}")
    return load_file(directory / TENSORS_FILE)
