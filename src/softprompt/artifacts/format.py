"""The artifact format: a run's `prompt/` folder, written atomically and read back with checks.

Written as a temporary sibling folder renamed into place, so a run killed at any moment leaves the old folder,
no folder, or the whole new one. Reading refuses, in one line naming the file, a spec that is not JSON, lacks or
contradicts a field, or comes from a newer format, and a tensors file whose sha256 is not the one the spec
records (truncated or edited) or whose tensors are not the ones the spec lists.

- `softprompt.safetensors`: the method's folded tensors (`folded_state()`: P-tuning's encoder and prefix
  tuning's MLP computed away), never a backbone weight; empty for `hard_prompt`;
- `softprompt.json`: the format version, the method and its resolved config, the backbone config and
  identity (with the fingerprint of its frozen weights), the family, the task pieces needed to predict
  (template, verbalizer or target spec and decoding, max_length, text fields, columns, demonstrations),
  the prompt length, init and the run's val/test metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from softprompt.artifacts.summary import RunSummary, read_summary
from softprompt.backbones.loading import Backbone
from softprompt.config.atomic import atomic_directory, atomic_write_bytes
from softprompt.config.precision import backbone_dtype, trainer_precision, uses_fsdp
from softprompt.data.datamodule import tokenizer_identity
from softprompt.data.task import MIXTURE, parse_task
from softprompt.errors import SoftPromptError
from softprompt.methods import MethodConfig, method_config
from softprompt.methods.base import SoftPromptMethod
from softprompt.methods.layout import prompt_template

FORMAT = "softprompt-artifact"
# 2: the whole task config, and every method setting (typed configs); 3: the tensors file's sha256;
# 4: generation tasks record task.references
FORMAT_VERSION = 4
DIGEST_KEY = "tensors_sha256"  # format 3 on: the sha256 of softprompt.safetensors, checked on every read
ARTIFACT_DIR = "prompt"  # in a run's output dir
TENSORS_FILE = "softprompt.safetensors"
SPEC_FILE = "softprompt.json"


class ArtifactError(SoftPromptError):
    """An artifact cannot be read, does not fit the backbone, or cannot answer the request."""


# -- saving ------------------------------------------------------------------------------------------
def folded_tensors(module: SoftPromptMethod) -> dict[str, torch.Tensor]:
    """The module's folded tensors as contiguous CPU tensors, computed in eval mode (no encoder dropout)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            state = module.folded_state()
    finally:
        module.train(was_training)
    return {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}


def without_sources(task: Mapping[str, Any]) -> dict[str, Any]:
    """The task config less where its data came from (each task's, for a mixture)."""
    if task["type"] == MIXTURE:
        return {**task, "tasks": {name: without_sources(node) for name, node in task["tasks"].items()}}
    return {**task, "source": {}, "splits": {}}


def artifact_spec(module: SoftPromptMethod, job: Mapping[str, Any], summary: RunSummary | Mapping[str, Any],
                  backbone: Backbone, demonstration_ids: Sequence[int], tensors: Mapping[str, torch.Tensor],
                  settings: MethodConfig | None = None) -> dict[str, Any]:
    """softprompt.json: everything but the tensors. `job` is the resolved run config, `summary` the run's (or
    metrics.json's content), `settings` the parsed method config (parsed from `job` when not given)."""
    method, task, trainer = job["method"], job["task"], job["trainer"]
    settings = settings if settings is not None else method_config(method)
    summary = summary if isinstance(summary, RunSummary) else read_summary(summary)
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
                     "family": backbone.family, "fingerprint": summary.backbone_fingerprint_start,
                     "tokenizer": tokenizer_identity(backbone.tokenizer), "config": backbone_cfg},
        "precision": precision,
        # What the run asked for: `auto` is resolved again for the machine that loads the prompt.
        "precision_requested": (summary.precision or {}).get("requested", precision),
        # Where the training data came from is not needed to predict (and may name private files).
        "task": without_sources(task),
        # A mixture's: each task's, by name.
        "prompt_template": ({name: prompt_template(settings, node["template"]) for name, node in task["tasks"].items()}
                            if task["type"] == MIXTURE else prompt_template(settings, task["template"])),
        "inputs": {"padding_side": job["data"]["padding_side"], "batch_size": int(job["data"]["eval_batch_size"]),
                   "num_demonstrations": settings.num_demonstrations,
                   "demonstration_separator": settings.demonstration_separator,
                   "demonstration_ids": [int(i) for i in demonstration_ids]},
        "metrics": {"selection_metric": summary.selection_metric, "val": summary.val, "test": summary.test,
                    "steps": summary.steps, "best_step": summary.best_step},
        "run": {key: getattr(summary, key) for key in ("seed", "fold", "num_folds", "lr", "best_checkpoint", "tags",
                                                  "overrides")},
    }


def run_artifact_files(module: SoftPromptMethod, job: Mapping[str, Any], summary: RunSummary, backbone: Backbone,
                       demonstration_ids: Sequence[int] = (), settings: MethodConfig | None = None) -> dict[str, bytes]:
    """A run's artifact (its folded tensors and spec) as {file name: bytes}, which the run commits together with its
    other results (training.results.write_run_results)."""
    tensors = folded_tensors(module)
    return artifact_files(tensors, artifact_spec(module, job, summary, backbone, demonstration_ids, tensors, settings))


def artifact_files(tensors: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> dict[str, bytes]:
    """{softprompt.safetensors: `tensors` (contiguous), softprompt.json: `spec` with the tensors file's sha256}."""
    # One metadata key: safetensors writes a metadata map in random order, and the same tensors must give the same
    # bytes (the sha256 in the spec; an exported and re-imported prompt gets the spec it had).
    about = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "method": spec["method"]["name"]},
                       sort_keys=True)
    data = save_safetensors({key: t.contiguous() for key, t in tensors.items()}, metadata={"softprompt": about})
    spec = {**spec, "format_version": FORMAT_VERSION, DIGEST_KEY: hashlib.sha256(data).hexdigest()}
    return {TENSORS_FILE: data, SPEC_FILE: (json.dumps(spec, indent=2) + "\n").encode("utf-8")}


def write_artifact(directory: str | Path, tensors: Mapping[str, torch.Tensor], spec: Mapping[str, Any]) -> Path:
    """softprompt.safetensors and softprompt.json (`artifact_files`) as the folder `directory`, atomically: built
    beside it, then renamed into place (replacing an old one)."""
    directory = Path(directory)
    with atomic_directory(directory) as building:
        for name, data in artifact_files(tensors, spec).items():  # the tensors file first
            atomic_write_bytes(building / name, data)
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
    """softprompt.json, upgraded to this format version and checked: every field a prediction reads is there,
    of its type, and agrees with the others."""
    path = directory / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); expected the {SPEC_FILE} a run writes") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        found = f"format {spec.get('format')!r}" if isinstance(spec, dict) else f"a JSON {type(spec).__name__}"
        raise ArtifactError(f"{path} is not a softprompt artifact spec: it holds {found}; expected an object with "
                            f"format {FORMAT!r}")
    version = spec.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{path}: format_version is {version!r}; expected an integer from 1 to {FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {version}, from a newer softprompt; this softprompt reads "
                            f"format versions 1 to {FORMAT_VERSION}: upgrade softprompt (pip install -U softprompt)")
    try:
        if version == 1:
            spec = upgrade_v1(spec)
        if version < 4:
            spec = upgrade_v3(spec)
    except (KeyError, TypeError, AttributeError) as error:
        raise ArtifactError(f"{path} lacks the field {error} that format_version {version} had; the file is "
                            "incomplete or was edited") from None
    check_spec(spec, path, version)
    spec["format_version"] = FORMAT_VERSION
    return spec


# Fields a prediction reads: (dotted name, type, what it holds).
REQUIRED_FIELDS = (
    ("method", dict, "the method and its config"), ("method.name", str, "the method's name"),
    ("method.config", dict, "the method's resolved config"), ("num_virtual_tokens", int, "the prompt length"),
    ("tensors", dict, "each tensor's shape and dtype"), ("backbone", dict, "the backbone"),
    ("backbone.name", str, "the backbone's name"), ("backbone.family", str, "the backbone's family"),
    ("backbone.fingerprint", str, "the fingerprint of its frozen weights"),
    ("backbone.config", dict, "the backbone config"), ("task", dict, "the task config"),
    ("prompt_template", (str, dict), "the rendered prompt template (a task mixture's: one per task)"),
    ("inputs", dict, "how inputs are batched"),
    ("inputs.padding_side", str, "left or right"), ("inputs.num_demonstrations", int, "a count"),
    ("inputs.demonstration_separator", str, "a string"), ("inputs.demonstration_ids", list, "token ids"),
)


def _field(spec: Mapping[str, Any], dotted: str) -> Any:
    value: Any = spec
    for part in dotted.split("."):
        value = value[part]
    return value


def check_spec(spec: Mapping[str, Any], path: Path, version: int) -> None:
    """One line naming `path`, the field and what was expected, for a field that is missing, of the wrong type,
    or contradicts another one (the method's name or prompt length, the tensor listing, the typed configs)."""
    required = [*REQUIRED_FIELDS, *([(DIGEST_KEY, str, "the sha256 of " + TENSORS_FILE)] if version >= 3 else [])]
    for dotted, kind, what in required:
        try:
            value = _field(spec, dotted)
        except (KeyError, TypeError):
            raise ArtifactError(f"{path} lacks the field {dotted} ({what}); the file is incomplete or was "
                                "edited") from None
        if isinstance(value, bool) or not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ArtifactError(f"{path}: {dotted} is {value!r}; expected {what} ({names})")
    method, config = spec["method"]["name"], spec["method"]["config"]
    if config.get("name", method) != method:
        raise ArtifactError(f"{path}: method.name is {method!r} but method.config.name is {config['name']!r}; "
                            "they must agree")
    length = config.get("num_virtual_tokens", spec["num_virtual_tokens"])
    if spec["num_virtual_tokens"] != (length or 0):
        raise ArtifactError(f"{path}: num_virtual_tokens is {spec['num_virtual_tokens']} but "
                            f"method.config.num_virtual_tokens is {length}; they must agree")
    for key, entry in spec["tensors"].items():
        shape = entry.get("shape") if isinstance(entry, Mapping) else None
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
                and isinstance(entry.get("dtype"), str)):
            raise ArtifactError(f"{path}: tensors.{key} is {entry!r}; expected {{'shape': [sizes], 'dtype': name}}")
    try:
        method_config(config)
        parse_task(spec["task"])
    except SoftPromptError as error:
        raise ArtifactError(f"{path}: {error}") from None


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


def upgrade_v3(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec before version 4 in version 4's shape: its generation tasks (a mixture's too) evaluated every row
    against its own target, which is task.references=single."""
    task = spec["task"]
    for node in (task["tasks"].values() if task.get("type") == MIXTURE else [task]):
        if node.get("type") == "generation":
            node.setdefault("references", "single")
    return spec


def default_cache_dir() -> Path:
    """Where prepared offline assets live, as in conf/paths/default.yaml."""
    return Path(os.environ.get("SOFTPROMPT_CACHE") or Path.home() / ".cache" / "softprompt")


def read_tensors(directory: Path, spec: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The folded tensors of an artifact folder, after checking the file against its spec (`read_spec(directory)`
    unless given): the sha256 it records (format 3 on), then the tensors' names, shapes and dtypes."""
    spec = read_spec(directory) if spec is None else spec
    path = directory / TENSORS_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory} has {SPEC_FILE} but no {TENSORS_FILE}; expected both (a run writes them "
                            "together)")
    data = path.read_bytes()
    expected = spec.get(DIGEST_KEY)
    if expected is not None:
        found = hashlib.sha256(data).hexdigest()
        if found != expected:
            raise ArtifactError(f"{path} ({len(data)} bytes) has sha256 {found[:16]}..., but {SPEC_FILE} records "
                                f"{str(expected)[:16]}...: the file is truncated or was edited; restore it or "
                                "rerun the job")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, OSError) as error:
        raise ArtifactError(f"{path} is not a readable safetensors file ({' '.join(str(error).split())}); the file "
                            "is truncated or was edited") from None
    listed = spec["tensors"]
    if set(tensors) != set(listed):
        raise ArtifactError(f"{path} holds the tensors {sorted(tensors)}; {SPEC_FILE} lists {sorted(listed)}")
    for key, tensor in tensors.items():
        found_entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
        want = {"shape": listed[key]["shape"], "dtype": listed[key]["dtype"]}
        if found_entry != want:
            raise ArtifactError(f"{path}: {key} has shape {found_entry['shape']} ({found_entry['dtype']}); "
                                f"{SPEC_FILE} records {want['shape']} ({want['dtype']})")
    return tensors
