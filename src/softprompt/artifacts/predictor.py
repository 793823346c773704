"""Predicting with a trained prompt: `load(path)` rebuilds the frozen backbone through the loader and
in-process cache that training uses, refuses a backbone whose fingerprint differs from the artifact's
(unless `force=True`), rebuilds the method in its folded form and the objective, and returns a `Predictor`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from softprompt.artifacts.format import (
    TENSORS_FILE,
    ArtifactError,
    artifact_dir,
    default_cache_dir,
    read_spec,
    read_tensors,
)
from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.backbones.loading import DTYPES, Backbone, fingerprint, fingerprint_algorithm, load_backbone
from softprompt.config.precision import AUTO, MIXED_BACKBONE_DTYPES, resolve_auto
from softprompt.config.quantization import parse_quantization
from softprompt.data import PromptDataModule
from softprompt.data.sampling import longest_first_shard
from softprompt.data.settings import CVSettings, DataSettings, Rendering
from softprompt.data.task import MIXTURE, parse_task
from softprompt.methods import method_class
from softprompt.methods.base import SoftPromptMethod
from softprompt.objectives import build_objective
from softprompt.objectives.scoring import Batch

log = logging.getLogger("softprompt")

DEFAULT_BATCH_SIZE = 64


def check_fingerprint(spec: Mapping[str, Any], backbone: Backbone, force: bool) -> str:
    """The loaded backbone's fingerprint, taken in the dtype the prompt was trained in; a mismatch with the
    artifact's raises, or warns under `force`."""
    trained = DTYPES[str(spec["backbone"]["config"]["dtype"])]
    as_dtype = None if backbone.model.dtype == trained else trained
    expected = spec["backbone"]["fingerprint"]
    found = fingerprint(backbone.model, as_dtype, fingerprint_algorithm(expected))
    if found != expected:
        message = (f"backbone {backbone.name} does not match the artifact: expected fingerprint {expected}, found "
                   f"{found} (its frozen weights differ from the ones the prompt was trained on)")
        if not force:
            raise ArtifactError(f"{message}; force=true loads it anyway")
        log.warning("%s; loading anyway (force=true)", message)
    return found


def verified_backbone(spec: Mapping[str, Any], config: Mapping[str, Any], cache_dir: Path, force: bool) -> Backbone:
    """The backbone `config` loads, checked against the artifact's family and fingerprint.

    A prompt trained on float32 weights that predicts in bfloat16 (`auto` on a machine with native bfloat16) cannot
    be checked on the rounded weights: the float32 weights are loaded once more, uncached, for the check."""
    trained = dict(spec["backbone"]["config"])
    rounded = config["dtype"] != trained["dtype"] and DTYPES[str(config["dtype"])] != torch.float32
    # On another quantisation the weights differ by design: the prompt's own (quantised) ones are checked.
    requantized = quantization_change(spec, config) is not None
    reference = load_backbone(trained, cache_dir) if rounded or requantized else None
    backbone = BACKBONES.get(config, cache_dir, 1)
    if backbone.family != spec["backbone"]["family"]:
        raise ArtifactError(f"backbone {backbone.name} loads as a {backbone.family} model; the artifact was trained "
                            f"on a {spec['backbone']['family']} one")
    check_fingerprint(spec, reference or backbone, force)
    return backbone


def quantization_change(spec: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, str] | None:
    """{"trained": scheme, "used": scheme} where `config` predicts on another `backbone.quantization` than the
    prompt was trained on (artifacts written before the setting existed were trained on none); else None."""
    trained = parse_quantization(spec["backbone"]["config"]).scheme
    used = parse_quantization(config).scheme
    return None if trained == used else {"trained": trained, "used": used}


def plain_method_config(method: Mapping[str, Any]) -> dict[str, Any]:
    """The method config of the folded form: the method class's `folded_config` (its reparameterisation
    computed away); its init is never read (the tensors come from the artifact)."""
    return {**method, **method_class(method).folded_config}


def build_folded_module(spec: Mapping[str, Any], backbone: Backbone, tensors: Mapping[str, torch.Tensor],
                        source: Path | None = None) -> SoftPromptMethod:
    """The method in its folded form holding the artifact's tensors, in eval mode (no init, no optimizer). Given
    `source` (the tensors' file), tensors that are not the ones this method stores on this backbone are one line
    naming it."""
    objective = build_objective(parse_task(spec["task"]), FAMILY_ADAPTERS[backbone.family], backbone.tokenizer,
                                backbone.hidden_size)
    method = plain_method_config(spec["method"]["config"])
    cls = method_class(method)
    # No init: the folded method's tensors are placeholders of their shapes until the artifact's are loaded.
    module = cls(cls.parse_config(method), backbone=backbone, objective=objective)
    expected = {key: list(t.shape) for key, t in module.folded_state().items()}
    if set(tensors) != set(expected):
        raise ArtifactError(f"{source or 'the artifact'} holds the tensors {sorted(tensors)}; {module.method_name} "
                            f"on backbone {backbone.name} stores {sorted(expected)}")
    for key, tensor in tensors.items():
        if source is not None and list(tensor.shape) != expected[key]:
            raise ArtifactError(f"{source}: {key} has shape {list(tensor.shape)}; {module.method_name} with "
                                f"num_virtual_tokens={method.get('num_virtual_tokens')} on backbone {backbone.name} "
                                f"({geometry(backbone)}) expects {expected[key]}: the prompt was trained on "
                                "another backbone, or the file was edited")
    module.load_folded_state(tensors)
    return module.eval()


def geometry(backbone: Backbone) -> str:
    """`hidden size 32, 2 layers`: what a prompt's tensor shapes depend on."""
    layers = getattr(backbone.model.config.get_text_config(), "num_hidden_layers", None)
    return f"hidden size {backbone.hidden_size}" + (f", {layers} layers" if layers else "")


def chosen_task(spec: Mapping[str, Any], task: str | None) -> tuple[str | None, int | None]:
    """(task name, task id) a prediction uses: (None, None) for a single-task prompt; for a prompt trained on a
    task mixture, `task` must name one of its tasks (their templates, labels and task ids differ)."""
    config = spec["task"]
    if config["type"] != MIXTURE:
        if task is not None and task != config["name"]:
            raise ArtifactError(f"task={task!r}: this prompt was trained on task {config['name']} alone")
        return None, None
    names = list(config["tasks"])
    if task not in names:
        raise ArtifactError(f"task={task!r}: this prompt was trained on the task mixture {config['name']}; give "
                            f"task=NAME, one of: {', '.join(names)}")
    return task, names.index(task)


def load(path: str | Path, force: bool = False, cache_dir: str | Path | None = None,
         device: str | torch.device = "cpu", task: str | None = None, quantization: str | None = None) -> Predictor:
    """A Predictor from an artifact folder (a run's `prompt/`, or the run dir itself).

    The backbone is rebuilt from the artifact's backbone config (offline assets from `cache_dir`, default
    `$SOFTPROMPT_CACHE` or ~/.cache/softprompt) and must have the fingerprint the prompt was trained on;
    `force=True` loads it anyway, with a warning. A prompt trained on a task mixture predicts for one of its
    tasks: `task=NAME`. `quantization` (a `backbone.quantization` scheme) predicts on another quantisation of the
    backbone than the one the prompt was trained on (the default): said in one line, and recorded in every
    prediction record (`Predictor.quantization`).
    """
    directory = artifact_dir(path)
    spec = read_spec(directory)
    chosen_task(spec, task)  # before the backbone loads
    tensors = read_tensors(directory, spec)
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    config = load_config(spec, torch.device(device))
    if quantization is not None:
        config["quantization"] = parse_quantization({"quantization": quantization}).scheme
    change = quantization_change(spec, config)
    if change:
        log.warning("this prompt was trained on backbone.quantization=%s and predicts on %s: its outputs may differ "
                    "from the run's (docs/scaling.md)", change["trained"], change["used"])
    backbone = verified_backbone(spec, config, cache, force)
    module = build_folded_module(spec, backbone, tensors, directory / TENSORS_FILE).to(device)
    predictor = Predictor(module, input_datamodule(spec, backbone, cache, task), spec, directory, task=task)
    predictor.quantization = change
    return predictor


def load_config(spec: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The backbone config to predict with: the run's, with `trainer.precision=auto` resolved again for this
    machine and `device` (a prompt trained in bfloat16 predicts in float32 where bfloat16 is not native)."""
    config = dict(spec["backbone"]["config"])
    if spec.get("precision_requested") == AUTO:
        trainer = {"precision": AUTO, "accelerator": device.type}
        config["dtype"] = resolve_auto(trainer, {**config, "dtype": "float32"})["backbone_dtype"]
    return config


def input_datamodule(spec: Mapping[str, Any], backbone: Backbone, cache_dir: Path,
                     task: str | None = None) -> PromptDataModule:
    """A DataModule that renders new inputs exactly as the run rendered its splits (template, specials,
    truncation, demonstrations, a mixture task's id); it loads no data."""
    adapter, inputs = FAMILY_ADAPTERS[backbone.family], spec["inputs"]
    name, task_id = chosen_task(spec, task)
    config = parse_task(spec["task"])
    template = spec["prompt_template"]
    if name is not None:
        config, template = config.members[name], template[name]
    rendering = Rendering(template, inputs["num_demonstrations"], inputs["demonstration_separator"],
                          adapter.answer_token_id(backbone.tokenizer), adapter.answer_is_next_token)
    datamodule = PromptDataModule(config, DataSettings.from_config({"padding_side": inputs["padding_side"]}),
                                  CVSettings.from_config({}), rendering, backbone.tokenizer, cache_dir, seed=0,
                                  task_id=task_id)
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


def _shown(value: Any) -> str:
    """A value as JSON, with its JSON kind, shortened: `null`, `3 (a number)`, `["a", "b"] (a list)`."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    text = text if len(text) <= 40 else text[:37] + "..."
    kind = ("a boolean" if isinstance(value, bool) else "a number" if isinstance(value, int | float)
            else "an object" if isinstance(value, Mapping) else f"a {type(value).__name__}")
    return text if value is None else f"{text} ({kind})"


class Predictor:
    """Predictions from a loaded artifact: labels and probabilities, or generated text. Batched, eval mode,
    no gradients, longest inputs first (as the run evaluated its test split)."""

    def __init__(self, module: SoftPromptMethod, datamodule: PromptDataModule, spec: Mapping[str, Any],
                 directory: Path | None = None, batch_size: int | None = None, task: str | None = None) -> None:
        self.module, self.datamodule, self.spec, self.directory = module, datamodule, spec, directory
        name, task_id = chosen_task(spec, task)
        # The chosen task of a mixture: its config, and its own objective within the mixture's.
        self.task = datamodule.task
        self.objective = module.objective if name is None else module.objective.member(task_id)
        self.generation = self.task.is_generation
        self.labels = self.task.label_names
        self.text_fields = list(self.task.text_fields)
        self.batch_size = int(batch_size or spec["inputs"].get("batch_size") or DEFAULT_BATCH_SIZE)
        # {"trained", "used"} schemes where the backbone's quantisation is not the prompt's (`load(quantization=)`)
        self.quantization: dict[str, str] | None = None

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

    def example(self, item: str | Mapping[str, Any], index: int | str) -> dict[str, str]:
        """One input as the template's fields (see `examples`); `index` names it in errors (a position, or a
        name such as `file.jsonl:3`)."""
        name = f"input {index}" if isinstance(index, int) else str(index)
        if isinstance(item, str):
            if len(self.text_fields) != 1:
                raise ArtifactError(f"{name} is a string, but task {self.task.name} has the text "
                                    f"fields {self.text_fields}: give a dict with each")
            item = {self.text_fields[0]: item}
        if not isinstance(item, Mapping):
            raise ArtifactError(f"{name} is a {type(item).__name__}; give a string or a dict")
        columns = self.task.columns
        return {field: self._field(item, field, columns.get(field), name) for field in self.text_fields}

    def _field(self, row: Mapping[str, Any], field: str, column: str | None, input_name: str) -> str:
        """The text of `field`; anything but a string (null, a number, a list) is refused, never stringified."""
        names = [field, *([column] if column and column != field else []),
                 *(["text"] if len(self.text_fields) == 1 and field != "text" else [])]
        for name in names:
            with contextlib.suppress(KeyError):
                value = _lookup(row, name)
                if not isinstance(value, str):
                    raise ArtifactError(f"{input_name} has {name!r}: {_shown(value)}; expected a string (the text "
                                        "to predict on)")
                return value
        raise ArtifactError(f"{input_name} has no {' or '.join(repr(n) for n in names)} key "
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
            raise ArtifactError(f"task {self.task.name} is a generation task: it has no label probabilities; "
                                "use predict() for its generated text")
        return self._per_input(texts, lambda b: self.objective.outputs(self.module, b).float()
                               .softmax(-1).tolist())

    def score(self, texts: Sequence[str | Mapping[str, Any]]) -> list[dict[str, float]]:
        """Per input, {label: probability} (classification only)."""
        return [dict(zip(self.labels, p, strict=True)) for p in self.probabilities(texts)]

    def predict(self, texts: Sequence[str | Mapping[str, Any]]) -> list[str]:
        """Label names (classification) or generated strings with the task's decoding settings (generation)."""
        if self.generation:
            return self._per_input(texts, lambda b: self.objective.generate_texts(self.module, b))
        return [self.labels[_argmax(p)] for p in self.probabilities(texts)]

    def predict_records(self, texts: Sequence[str | Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One record per input: `row_index`, `prediction`, and `probabilities` {label: p} for classification; on a
        backbone quantised otherwise than the prompt was trained on, `quantization` {"trained", "used"} too."""
        if self.generation:
            records = [{"row_index": i, "prediction": text} for i, text in enumerate(self.predict(texts))]
        else:
            records = [{"row_index": i, "prediction": self.labels[_argmax(p)],
                        "probabilities": dict(zip(self.labels, p, strict=True))}
                       for i, p in enumerate(self.probabilities(texts))]
        if self.quantization:
            records = [{**record, "quantization": dict(self.quantization)} for record in records]
        return records


def _argmax(values: Sequence[float]) -> int:
    """The first largest index, as the run's test predictions pick it."""
    return max(range(len(values)), key=values.__getitem__)
