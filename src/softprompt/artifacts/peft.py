"""PEFT interop: a trained prompt (a `prompt/` folder) as a PEFT prompt-learning adapter, and back.

Each method class declares its PEFT form (`SoftPromptMethod.peft_form`: PEFT's type, which folded tensor
PEFT stores as `prompt_embeddings` in `adapter_model.safetensors` and which beside it, the config fields,
those read off the tensors' shapes) and which foreign PEFT types are its folded form (`peft_imports`); this
module reads those declarations and never names a method. An input-level prompt must sit at the front, with
no demonstrations before it and no leading special token (PEFT prepends its virtual tokens to everything).

The config is PEFT's own config class, filled by PEFT's own `_prepare_prompt_learning_config`, so
num_layers, token_dim and num_attention_heads are what `PeftModel.from_pretrained` will compute.
Whatever PEFT cannot represent is refused with one line (`InteropError`), before a model is loaded where
the artifact alone tells.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from softprompt.artifacts.format import (
    SPEC_FILE,
    TENSORS_FILE,
    artifact_dir,
    artifact_spec,
    default_cache_dir,
    read_spec,
    read_tensors,
    write_artifact,
)
from softprompt.artifacts.predictor import build_folded_module, check_fingerprint
from softprompt.backbones.cache import BACKBONES
from softprompt.backbones.families import Family
from softprompt.backbones.loading import Backbone, check_backbone, fingerprint
from softprompt.config.compose import compose_train, config_dir
from softprompt.data.templates import Template, special_tokens_around
from softprompt.errors import SoftPromptError
from softprompt.methods import method_class, preset_classes
from softprompt.methods.base import Injection, NotRepresentable, PeftForm, SoftPromptMethod
from softprompt.methods.checks import check_method, check_task

if TYPE_CHECKING:
    from peft import PromptLearningConfig

PEFT_CONFIG_FILE = "adapter_config.json"  # peft.utils.CONFIG_NAME
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
PEFT_KEY = "prompt_embeddings"
TASK_TYPES = {Family.CAUSAL_LM: "CAUSAL_LM", Family.SEQ2SEQ: "SEQ_2_SEQ_LM"}
FAMILIES = {task_type: family for family, task_type in TASK_TYPES.items()}
DEFAULT_BACKBONE_PRESET = "smollm2_135m"  # the base preset a local backbone folder overrides


class InteropError(SoftPromptError):
    """A prompt or adapter that the other format cannot represent, or a bad request."""


def _peft():
    try:
        import peft
    except ImportError:
        raise InteropError("format=peft needs the peft package: pip install peft") from None
    return peft


def _load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return read_tensors(directory) if (directory / TENSORS_FILE).is_file() else {}  # checked against the spec


def peft_form_of(spec: Mapping[str, Any]) -> tuple[type[SoftPromptMethod], PeftForm]:
    """(the method class, its PEFT form) for this artifact, or an InteropError saying what PEFT cannot represent
    and why; read from the method class's declarations and the spec only."""
    family, method = spec["backbone"]["family"], spec["method"]["config"]
    cls = method_class(method)
    try:
        form = cls.peft_form(cls.parse_config(method), family)
    except NotRepresentable as error:
        raise InteropError(str(error)) from None
    if form.export_refusal:
        raise InteropError(form.export_refusal)
    if family not in TASK_TYPES:
        raise InteropError(f"backbone {spec['backbone']['name']} is a {family} model: PEFT has no task type that "
                           "scores it as we do (a verbalizer at the mask, or our classification head), so an adapter "
                           f"would not reproduce the prompt's predictions; exportable families: "
                           f"{', '.join(TASK_TYPES)}")
    if cls.injection == Injection.INPUT:
        name, n = spec["method"]["name"], int(spec["num_virtual_tokens"])
        template = Template.parse(spec["prompt_template"], spec["task"]["text_fields"], key="prompt_template")
        slots = [i for i, segment in enumerate(template.segments) if isinstance(segment, int)]
        if slots != [0] or template.segments[0] != n:
            raise InteropError(f"{name} places virtual tokens inside the template {spec['prompt_template']!r}; "
                               f"PEFT's {form.peft_type} only prepends them before the input (export needs all "
                               f"{n} at the front, method.slots=front)")
        if spec["inputs"]["num_demonstrations"]:
            raise InteropError(f"{name} follows {spec['inputs']['num_demonstrations']} in-context demonstrations; "
                               f"PEFT's {form.peft_type} would put its virtual tokens before them")
    return cls, form


def check_no_leading_specials(backbone: Backbone, peft_type: str) -> None:
    """Our virtual tokens follow the tokenizer's leading special token (BOS, [CLS]); PEFT's precede it."""
    leading, _ = special_tokens_around(backbone.tokenizer)
    if leading:
        tokens = backbone.tokenizer.convert_ids_to_tokens(leading)
        raise InteropError(f"backbone {backbone.name}'s tokenizer starts every input with {tokens}: our virtual "
                           f"tokens go after it, PEFT's {peft_type} puts them before it, so the outputs would differ")


def peft_keys(form: PeftForm) -> dict[str, str]:
    """Our folded tensor key -> PEFT's key in adapter_model.safetensors, for every tensor the form stores."""
    return {form.tensor: PEFT_KEY, **form.extra_tensors}


def peft_config(form: PeftForm, spec: Mapping[str, Any], backbone: Backbone,
                base_model_name_or_path: str | None) -> PromptLearningConfig:
    """PEFT's own config class for the form (with the fields sized by the spec's tensors), with the geometry PEFT
    derives from the backbone's config."""
    _peft()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import _prepare_prompt_learning_config

    common = {"task_type": TASK_TYPES[backbone.family], "num_virtual_tokens": int(spec["num_virtual_tokens"]),
              "inference_mode": True, "base_model_name_or_path": base_model_name_or_path,
              "revision": backbone.revision,
              # seq2seq: the prompt goes on the encoder input only, as ours does (PEFT's default 2 adds a
              # decoder-side prompt)
              "num_transformer_submodules": 1}
    sized = {name: int(spec["tensors"][key]["shape"][dim]) for name, (key, dim) in form.sized_by.items()}
    config = PEFT_TYPE_TO_CONFIG_MAPPING[form.peft_type](**common, **form.options, **sized)
    return _prepare_prompt_learning_config(config, backbone.model.config)


def peft_shape(config: PromptLearningConfig, key_value_prefix: bool) -> tuple[int, int]:
    """The shape of `prompt_embeddings` PEFT builds for `config` (one transformer submodule): a key/value prefix (an
    attention-level method's form) holds a key and a value per layer."""
    width = config.token_dim * (config.num_layers * 2 if key_value_prefix else 1)
    return config.num_virtual_tokens * config.num_transformer_submodules, width


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InteropError(f"out={str(out)!r} exists and is not an empty folder")


def _backbone_for(spec: Mapping[str, Any], cache_dir: Path) -> Backbone:
    backbone = BACKBONES.get(spec["backbone"]["config"], cache_dir, 1)
    if backbone.family != spec["backbone"]["family"]:
        raise InteropError(f"backbone {backbone.name} loads as a {backbone.family} model; the prompt was trained on "
                           f"a {spec['backbone']['family']} one")
    return backbone


def export_peft(prompt: str | Path, out: str | Path, cache_dir: str | Path | None = None,
                force: bool = False) -> Path:
    """Write `prompt` (an artifact folder) as a PEFT adapter folder `out`: adapter_config.json,
    adapter_model.safetensors, and our softprompt.json (which PEFT ignores) so an import keeps the task."""
    directory = artifact_dir(prompt)
    spec = read_spec(directory)
    out = Path(out).expanduser()
    _check_out(out)
    cls, form = peft_form_of(spec)
    _peft()
    tensors = _load_tensors(directory)
    key, peft_type, keys = form.tensor, form.peft_type, peft_keys(form)
    if set(tensors) != set(keys):
        raise InteropError(f"{directory / TENSORS_FILE} holds {sorted(tensors)}; a {spec['method']['name']} export "
                           f"needs exactly {sorted(keys)}")
    cache = Path(cache_dir or default_cache_dir()).expanduser()
    backbone = _backbone_for(spec, cache)
    check_fingerprint(spec, backbone, force)
    if cls.injection == Injection.INPUT:
        check_no_leading_specials(backbone, peft_type)
    random_init = backbone.source.startswith("random:")  # no folder or hub id holds these weights
    config = peft_config(form, spec, backbone, None if random_init else backbone.source)
    shape = peft_shape(config, cls.injection == Injection.ATTENTION)
    if tuple(tensors[key].shape) != shape:
        raise InteropError(f"PEFT's {peft_type} on {backbone.name} holds {PEFT_KEY} of shape {shape}; the prompt's "
                           f"{key} is {tuple(tensors[key].shape)}")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    save_file({keys[ours]: tensor.float().contiguous() for ours, tensor in tensors.items()}, out / PEFT_WEIGHTS_FILE,
              metadata={"format": "pt"})
    shutil.copyfile(directory / SPEC_FILE, out / SPEC_FILE)
    return out


# -- import ------------------------------------------------------------------------------------------------
def read_adapter(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json, its tensors by PEFT's keys, fp32) of a PEFT prompt-learning adapter we can read, or one
    line why not; which tensors beside prompt_embeddings it must hold is its form's to say (`peft_keys`)."""
    config_file, weights_file = directory / PEFT_CONFIG_FILE, directory / PEFT_WEIGHTS_FILE
    if not config_file.is_file():
        raise InteropError(f"dir={str(directory)!r} holds no {PEFT_CONFIG_FILE} (not a PEFT adapter folder)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise InteropError(f"{config_file} is not valid JSON ({error})") from None
    peft_type = config.get("peft_type")
    importable = sorted({t for cls in preset_classes().values() for t in cls.peft_imports})
    if peft_type not in importable:
        raise InteropError(f"{config_file}: peft_type {peft_type!r} is not a prompt we can import; supported: "
                           f"{', '.join(importable)}")
    task_type = config.get("task_type")
    if task_type not in FAMILIES:
        raise InteropError(f"{config_file}: task_type {task_type!r} is not one we can import; supported: "
                           f"{', '.join(FAMILIES)}")
    if not weights_file.is_file():
        raise InteropError(f"dir={str(directory)!r} holds no {PEFT_WEIGHTS_FILE} (re-save the adapter with "
                           "safe_serialization=True)")
    try:
        weights = load_file(weights_file)
    except Exception as error:  # safetensors raises its own error type for a truncated or foreign file
        raise InteropError(f"{weights_file} is not a readable safetensors file ({' '.join(str(error).split())}); "
                           "the file is truncated or was edited") from None
    if PEFT_KEY not in weights:
        raise InteropError(f"{weights_file} holds {sorted(weights)}; a {peft_type} adapter holds {PEFT_KEY!r}")
    tensor = weights[PEFT_KEY]
    n, submodules = int(config.get("num_virtual_tokens") or 0), int(config.get("num_transformer_submodules") or 1)
    try:  # the importing method's own refusals (e.g. a prefix MLP's input instead of the prefix)
        importer(peft_type).check_peft_import(config, int(tensor.shape[-1]))
    except NotRepresentable as error:
        raise InteropError(f"{config_file}: {error}") from None
    if submodules != 1:
        raise InteropError(f"{config_file}: num_transformer_submodules={submodules} also prompts the decoder; our "
                           "prompts go on the encoder input only (num_transformer_submodules=1)")
    if tensor.shape[0] != n:
        raise InteropError(f"{weights_file}: {PEFT_KEY} has {tensor.shape[0]} rows for num_virtual_tokens={n}")
    return config, {name: value.float() for name, value in weights.items()}


def importer(peft_type: str) -> type[SoftPromptMethod]:
    """The method class whose folded form a foreign adapter of `peft_type` is."""
    return next(cls for cls in preset_classes().values() if peft_type in cls.peft_imports)


def import_peft(directory: str | Path, out: str | Path, task: str | None = None, backbone: str | None = None,
                cache_dir: str | Path | None = None) -> Path:
    """Write the PEFT adapter folder `directory` as our artifact `out`. An adapter we exported carries its
    softprompt.json and is taken back as it was; a foreign one needs the task preset (template, verbalizer)
    and the backbone it was trained on (a preset name or a local folder; default its base_model_name_or_path)."""
    directory = Path(directory).expanduser()
    out = Path(out).expanduser()
    _check_out(out)
    config, weights = read_adapter(directory)
    peft_type = config["peft_type"]
    if (directory / SPEC_FILE).is_file():
        return _import_own(directory, out, config, weights, task, backbone)
    return _import_foreign(directory, out, config, weights, task, backbone,
                           Path(cache_dir or default_cache_dir()).expanduser(), peft_type)


def _ours(form: PeftForm, weights: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The adapter's tensors under our keys; exactly the form's, or one line why not."""
    keys = peft_keys(form)
    if set(weights) != set(keys.values()):
        raise InteropError(f"{source / PEFT_WEIGHTS_FILE} holds {sorted(weights)}; a {form.peft_type} adapter of "
                           f"this form holds {sorted(keys.values())}")
    return {ours: weights[theirs] for ours, theirs in keys.items()}


def _import_own(directory: Path, out: Path, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                task: str | None, backbone: str | None) -> Path:
    spec = read_spec(directory)
    given = [f"{key}={value}" for key, value in (("task", task), ("backbone", backbone)) if value]
    if given:
        raise InteropError(f"{' '.join(given)} cannot apply: dir={str(directory)!r} holds our {SPEC_FILE}, whose "
                           "task and backbone the prompt was trained with; leave them out")
    method = spec["method"]["name"]
    _, form = peft_form_of(spec)
    if form.peft_type != config["peft_type"]:
        raise InteropError(f"{directory}: its {SPEC_FILE} is a {method} prompt but {PEFT_CONFIG_FILE} says "
                           f"{config['peft_type']}")
    tensors = _ours(form, weights, directory)
    for key, tensor in tensors.items():
        shape = spec["tensors"][key]["shape"]
        if list(tensor.shape) != shape:
            raise InteropError(f"{directory / PEFT_WEIGHTS_FILE}: {peft_keys(form)[key]} has shape "
                               f"{list(tensor.shape)}; its {SPEC_FILE} says {key} is {shape}")
    return write_artifact(out, tensors, spec)


def task_presets() -> list[str]:
    return sorted(p.stem for p in (Path(config_dir()) / "task").glob("*.yaml"))


def backbone_overrides(backbone: str | None, adapter_config: Mapping[str, Any]) -> list[str]:
    """Hydra overrides for the backbone: a preset in conf/backbone/, or a local model folder."""
    value = backbone or adapter_config.get("base_model_name_or_path")
    presets = sorted(p.stem for p in (Path(config_dir()) / "backbone").glob("*.yaml"))
    if value in presets:
        return [f"backbone={value}"]
    if value and Path(value).expanduser().is_dir():
        path = Path(value).expanduser().resolve()
        return [f"backbone={DEFAULT_BACKBONE_PRESET}", f"backbone.name={path.name}", f"backbone.name_or_path='{path}'",
                "backbone.asset=null", "backbone.revision=null"]
    if backbone:
        raise InteropError(f"backbone={backbone!r} is neither a preset ({', '.join(presets)}) nor a local folder")
    raise InteropError(f"backbone=PRESET_OR_PATH is needed: the adapter's base_model_name_or_path {value!r} is not a "
                       "local folder")


def _import_foreign(directory: Path, out: Path, config: Mapping[str, Any], weights: Mapping[str, torch.Tensor],
                    task: str | None, backbone_name: str | None, cache_dir: Path, peft_type: str) -> Path:
    from omegaconf import OmegaConf


    task_type = config["task_type"]
    presets = task_presets()
    if task not in presets:
        raise InteropError(f"task={task!r}: a foreign adapter holds no template or verbalizer; name the task preset "
                           f"it was trained on: {', '.join(presets)}")
    cls = importer(peft_type)
    overrides = [f"task={task}", *backbone_overrides(backbone_name, config), *cls.peft_import_overrides(config),
                 f"method.num_virtual_tokens={int(config['num_virtual_tokens'])}", "method.init=random_uniform",
                 f"paths.output_dir='{out}'", f"paths.work_dir='{out}'"]
    job = OmegaConf.to_container(compose_train(overrides), resolve=True)
    check_backbone(job["backbone"])
    check_method(job["method"])
    check_task(job["task"], job["method"])
    tensors = _ours(cls.peft_form(cls.parse_config(job["method"]), FAMILIES[task_type]), weights, directory)
    backbone = BACKBONES.get_for_job(job, cache_dir)
    if backbone.family != FAMILIES[task_type]:
        raise InteropError(f"the adapter's task_type is {task_type}, but backbone {backbone.name} is a "
                           f"{backbone.family} model")
    if cls.injection == Injection.INPUT:
        check_no_leading_specials(backbone, peft_type)
    try:  # the shape check against this backbone's geometry
        module = build_folded_module({"task": job["task"], "method": {"config": job["method"]}}, backbone, tensors)
    except SoftPromptError as error:
        raise InteropError(f"the adapter does not fit backbone {backbone.name}: {error}") from None
    summary = {"backbone_fingerprint_start": fingerprint(backbone.model),
               "selection_metric": f"val/{job['task']['metric']}", "val": {}, "test": {}, "steps": 0,
               "best_step": 0, "overrides": overrides}
    spec = artifact_spec(module, job, summary, backbone, [], tensors)
    spec["init"] = None  # trained elsewhere: our init never ran
    spec["run"]["imported_from"] = {"format": "peft", "dir": str(directory), "peft_type": peft_type,
                                    "task_type": task_type,
                                    "base_model_name_or_path": config.get("base_model_name_or_path")}
    return write_artifact(out, tensors, spec)
