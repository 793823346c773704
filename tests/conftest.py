"""Fixtures every test folder shares: composed configs (as Hydra would build them), small local datasets, tiny
random backbones (loaded once per session and setting), the builders unit tests use on them, and the training
runs several folders read (a short run per method, the debug=fast Lester ablation sweep).

Under pytest-xdist every worker process has its own session: each runs with one torch thread (and its training
subprocesses too), so the two workers do not fight over the two cores."""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:  # the heavy imports happen where they are used: the xdist controller runs no test
    import torch
    from omegaconf import DictConfig

    from softprompt.backbones import Backbone
    from softprompt.methods.base import SoftPromptMethod
    from softprompt.methods.config import MethodConfig
    from softprompt.methods.hard_prompt import HardPrompt
    from softprompt.methods.init import InitContext
    from softprompt.objectives import ClassificationObjective, GenerationObjective, Objective
    from softprompt.training.module import TrainingModule

# `trainer.precision=auto` takes a CPU with avx512_bf16 to run bfloat16; the suite's numbers (and its subprocess runs)
# must not depend on the machine, so every test sees a CPU that emulates it unless it pretends otherwise.
os.environ["SOFTPROMPT_CPU_BF16"] = "0"


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one of the workers: one thread each on the two cores
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the training subprocesses this worker starts
        import torch

        torch.set_num_threads(1)
    elif not config.getoption("numprocesses", None):  # no workers: this process runs every test
        import torch

        torch.set_num_threads(2)

# Session fixtures that train: every test reading one runs on the worker that trained it (xdist_group).
SHARED_RUNS = {"trained_run": "trained_run", "fast_lester_ablation": "lester_ablation"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        groups = {group for fixture, group in SHARED_RUNS.items() if fixture in item.fixturenames}
        if groups and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(min(groups)))
    # Tests that start training processes first, so that the workers end together on short tests (pytest-xdist
    # hands out the groups first, then single tests in this order).
    items.sort(key=lambda item: "softprompt_train" not in item.fixturenames)


# --------------------------------------------------------------------------------------------- data and configs

POSITIVE = ["a wonderful, moving film", "great fun", "brilliant acting and a sharp script", "a joy",
            "funny and warm", "the best film this year", "superb", "lovely and smart"]
NEGATIVE = ["a dull mess", "boring", "terrible acting and a lazy script", "a chore", "flat and cold",
            "the worst film this year", "awful", "tedious and dumb"]
# The tiny random model continues from the last input token, so each ending gives its own generated text.
HEADLINES = [
    ("Markets rise", "Shares rose sharply on Monday as investors cheered results"),
    ("Team wins cup", "The home side won the cup final after extra time!"),
    ("New phone launched", "A firm unveiled a phone with a bigger screen today?"),
    ("Minister resigns", "The minister quit after weeks of pressure over spending,"),
]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="session")
def write_jsonl() -> Callable[[Path, list[dict]], str]:
    """`write_jsonl(path, rows)`: one json object per line; returns the path as a string."""
    return _write_jsonl


@pytest.fixture(scope="session")
def positive_reviews() -> list[str]:
    return list(POSITIVE)


@pytest.fixture(scope="session")
def negative_reviews() -> list[str]:
    return list(NEGATIVE)


@pytest.fixture(scope="session")
def local_task_files(tmp_path_factory) -> dict[str, str]:
    """A small sentiment dataset as local jsonl files (string labels, a `review` column)."""
    root = tmp_path_factory.mktemp("local_task")
    rows = [{"review": t, "sentiment": "positive"} for t in POSITIVE] + \
           [{"review": t, "sentiment": "negative"} for t in NEGATIVE]
    rows = [r for pair in zip(rows[:8], rows[8:], strict=True) for r in pair]  # interleave classes
    return {
        "train": _write_jsonl(root / "train.jsonl", rows * 3),
        "validation": _write_jsonl(root / "validation.jsonl", rows[:6]),
        "test": _write_jsonl(root / "test.jsonl", rows[6:]),
    }


@pytest.fixture(scope="session")
def reloaded_prompt(local_task_files) -> Callable[[Path], object]:
    """`reloaded_prompt(run_dir)`: the run's prompt loaded afresh (its backbone rebuilt from the artifact's config,
    not the run's in-memory copy), after checking that it scores the local test reviews as the run's
    test_predictions.jsonl did, within 1e-5; returns the Predictor."""
    import softprompt
    from softprompt.backbones.cache import BACKBONES

    def load_and_check(run_dir: Path):
        expected = [json.loads(line) for line in (run_dir / "test_predictions.jsonl").read_text().splitlines()]
        rows = [json.loads(line) for line in Path(local_task_files["test"]).read_text().splitlines()]
        BACKBONES.clear()
        predictor = softprompt.load(run_dir / "prompt")
        for score, want in zip(predictor.score([row["review"] for row in rows]), expected, strict=True):
            assert list(score.values()) == pytest.approx(want["probabilities"], abs=1e-5)
        return predictor

    return load_and_check



@pytest.fixture(scope="session")
def local_task_overrides(local_task_files) -> list[str]:
    """Train overrides that select the local sentiment dataset (`local_task_files`)."""
    files = local_task_files
    return [
        "task.name=local",
        "task.source.path=json",
        "task.source.asset=null",
        f"+task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
        f"test: {files['test']}}}",
        "task.columns={text: review, label: sentiment, group: null}",  # no movie column: folds by label only
    ]


@pytest.fixture(scope="session")
def headlines() -> list[tuple[str, str]]:
    """(title, body) pairs: a tiny headline-generation dataset."""
    return list(HEADLINES)


@pytest.fixture(scope="session")
def headline_files(tmp_path_factory) -> dict[str, str]:
    """`headlines` as nested columns, the way the hub has them for translation (`pair.body` / `pair.title`)."""
    root = tmp_path_factory.mktemp("headlines")
    rows = [{"pair": {"body": body, "title": title}} for title, body in HEADLINES]
    return {"train": _write_jsonl(root / "train.jsonl", rows * 4),
            "validation": _write_jsonl(root / "validation.jsonl", rows[:2]),
            "test": _write_jsonl(root / "test.jsonl", rows)}


@pytest.fixture(scope="session")
def headline_task_overrides(headline_files) -> list[str]:
    """Train overrides: task=bbc_headline on `headline_files`."""
    files = headline_files
    return ["task=bbc_headline", "task.name=local_headlines", "task.source.asset=null",
            f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}", "task.columns={text: pair.body, target: pair.title}"]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny random backbone, no callbacks: the smallest job the train config composes."""
    return ["backbone=tiny_random", "callbacks=none"]


def _compose(overrides: list[str], output_dir: Path, log_dir: Path) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from softprompt.config.compose import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.paths.log_dir = str(log_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def make_cfg(tmp_path) -> Iterator[Callable[..., DictConfig]]:
    """Compose conf/train.yaml with overrides, as `softprompt-train` would, writing into tmp_path."""

    from hydra.core.global_hydra import GlobalHydra

    def _make(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
        return _compose(["logger=none", *overrides], output_dir or tmp_path / "run", tmp_path / "logs")

    yield _make
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def run_job() -> Callable[[list[str], Path], dict]:
    """`run_job(overrides, out)`: compose conf/train.yaml as softprompt-train would and run the job in-process,
    writing into `out`; returns its metrics.json content. Usable from fixtures of any scope."""
    from hydra.core.global_hydra import GlobalHydra

    from softprompt.training.run import run

    def _run(overrides: list[str], out: Path) -> dict:
        cfg = _compose(overrides, out, out.parent / "logs")
        try:
            return run(cfg)
        finally:
            GlobalHydra.instance().clear()

    return _run


@pytest.fixture(scope="session")
def softprompt_train() -> Callable[..., subprocess.CompletedProcess]:
    """`softprompt_train(*args, cwd=..., env=None)`: `python -m softprompt.cli.train ARGS` as a real process."""

    def _train(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "softprompt.cli.train", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return _train


@pytest.fixture
def run_as_main(monkeypatch) -> Callable[..., int]:
    """`run_as_main(module, *args)`: `python -m module args` in this process (runpy, its `__main__` block and all,
    without a new interpreter's imports); returns the exit status."""

    def run(module: str, *args: str) -> int:
        monkeypatch.setattr(sys, "argv", [module, *args])
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with warnings.catch_warnings():  # runpy warns that the module was imported before
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit_info:
            return exit_info.code if isinstance(exit_info.code, int) else 1
        finally:  # a process ends with its app; here the handlers softprompt-train's Hydra set up must end too
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:], root.level = handlers, level
        return 0

    return run


# ------------------------------------------------------------------------------------------ tiny random backbones

# Tiny random configs of other architectures (absolute positions, biases, ...), beside the shipped presets.
ARCHITECTURES = {
    "llama": None,  # conf/backbone/tiny_random.yaml as shipped (GQA)
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "bert": "tiny_random_bert",  # the masked-LM family, as shipped in conf/backbone/
    "t5": "tiny_random_t5",  # the seq2seq family
    "bart": "tiny_random_bart",
    "roberta": {"model_type": "roberta", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 520},
}
ARCHITECTURES["bert_head"] = ARCHITECTURES["roberta"] | {"model_type": "bert"}  # family encoder_head


def _hooks(module: torch.nn.Module) -> list[str]:
    """The module's hooks, but those transformers installs itself on first use (output capturing)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values(), *module._backward_hooks.values(),
             *module._backward_pre_hooks.values()]
    return [repr(hook) for hook in hooks if not getattr(hook, "__module__", "").startswith("transformers.")]


def _backbone_state(backbone: Backbone) -> tuple:
    """What no test may change in a shared backbone: weights (and dtypes), modes, grads, hooks, configs."""
    from softprompt.backbones import fingerprint

    modules = list(backbone.model.modules())
    return (
        fingerprint(backbone.model),
        [m.training for m in modules],
        [p.requires_grad or p.grad is not None for p in backbone.model.parameters()],
        [_hooks(m) for m in modules],
        [bool(getattr(m, "gradient_checkpointing", False)) for m in modules],
        [id(getattr(m, "config", None)) for m in modules],
        backbone.tokenizer.padding_side, backbone.tokenizer.pad_token_id, len(backbone.tokenizer),
    )


class TinyBackbones:
    """`tiny_backbone(architecture="llama", fresh=False, **settings)`: a tiny random backbone of one of
    ARCHITECTURES, with backbone config `settings` (dtype=..., gradient_checkpointing=...) on top.

    Backbones are cached per (architecture, settings) for the whole session, so tests share one object: a
    test that changes its backbone in any way (weights, dtype, modes, hooks, checkpointing, layer configs,
    wrapping it in PEFT/DDP/FSDP) asks for `fresh=True`, a new uncached load. `verify` fails a test that
    changed a shared one."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Backbone, tuple]] = {}
        self.handed_out: set[str] = set()

    def config(self, architecture: str = "llama", **settings) -> dict:
        """The backbone config (as conf/backbone/*.yaml holds it) of `architecture`, with `settings` on top."""
        from omegaconf import OmegaConf

        from softprompt.config.compose import config_dir

        spec = ARCHITECTURES[architecture]
        preset = spec if isinstance(spec, str) else "tiny_random"
        cfg = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "backbone" / f"{preset}.yaml"))
        if isinstance(spec, dict):
            cfg["random_init"]["config"] = dict(spec)
        if architecture == "bert_head":
            cfg["family"] = "encoder_head"
        cfg.update(settings)
        return cfg

    def __call__(self, architecture: str = "llama", fresh: bool = False, **settings) -> Backbone:
        from softprompt.backbones import load_backbone

        cfg = self.config(architecture, **settings)
        if fresh:
            return load_backbone(cfg, Path("/nonexistent-cache-not-needed"))
        key = json.dumps([architecture, settings], sort_keys=True, default=str)
        if key not in self._cache:
            backbone = load_backbone(cfg, Path("/nonexistent-cache-not-needed"))
            self._cache[key] = backbone, _backbone_state(backbone)
        self.handed_out.add(key)
        return self._cache[key][0]

    @staticmethod
    def state(backbone: Backbone) -> tuple:
        """What `verify` compares: weights (and dtypes), modes, grads, hooks, checkpointing, configs, tokenizer."""
        return _backbone_state(backbone)

    def verify(self, keys: set[str] | None = None) -> list[str]:
        """The cached backbones (of `keys`, or all) that no longer are as loaded."""
        return [key for key in (self._cache if keys is None else keys)
                if _backbone_state(self._cache[key][0]) != self._cache[key][1]]


@pytest.fixture(scope="session")
def tiny_backbone() -> TinyBackbones:
    """The session's tiny random backbones; see TinyBackbones (`fresh=True` for a test that changes one)."""
    return TinyBackbones()


@pytest.fixture(autouse=True)
def _shared_backbones_stay_as_loaded(tiny_backbone) -> Iterator[None]:
    """Fails the test that changed a cached tiny backbone it was handed."""
    tiny_backbone.handed_out.clear()
    yield
    changed = tiny_backbone.verify(set(tiny_backbone.handed_out))
    assert not changed, f"this test changed shared tiny backbone(s) {changed}: ask tiny_backbone(..., fresh=True)"


@pytest.fixture(scope="module", autouse=True)
def _module_backbones_stay_as_loaded(tiny_backbone) -> Iterator[None]:
    """Fails the module whose tests changed a cached tiny backbone a module-scoped fixture holds."""
    yield
    changed = tiny_backbone.verify()
    assert not changed, f"a test of this module changed shared tiny backbone(s) {changed}"


# ----------------------------------------------------------------------------------- method modules and batches

OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.0,
             "scheduler": {"name": "constant", "warmup_steps": 0}}
INPUT_SETTINGS = {"encoder_hidden": None, "encoder_dropout": 0.0, "match_embedding_std": False}
PREFIX_SETTINGS = {"reparam_hidden": 16, "zero_init": False}
METHOD_SETTINGS = {  # the method presets' own settings, small sizes for tiny backbones; preset: the method's yaml
    "prompt_tuning": {"preset": "prompt_tuning", **INPUT_SETTINGS, "encoder": "none"},
    "p_tuning_lstm": {"preset": "p_tuning", **INPUT_SETTINGS, "encoder": "lstm", "encoder_hidden": 12},
    "p_tuning_mlp": {"preset": "p_tuning", **INPUT_SETTINGS, "encoder": "mlp", "encoder_hidden": 12},
    "prefix_tuning": {"preset": "prefix_tuning", **PREFIX_SETTINGS, "reparam": "mlp"},
    "p_tuning_v2": {"preset": "p_tuning_v2", **PREFIX_SETTINGS, "reparam": "none"},
}
_PRESETS: dict[str, dict] = {}


def _method_config(preset: str, **settings) -> MethodConfig:
    """conf/method/`preset`.yaml as its class's typed config, with `settings` in place of the preset's values."""
    from omegaconf import OmegaConf

    from softprompt.config.compose import compose_train
    from softprompt.methods import method_config

    if preset not in _PRESETS:
        _PRESETS[preset] = OmegaConf.to_container(compose_train([f"method={preset}"]).method, resolve=True)
    return method_config({**_PRESETS[preset], **settings})


@pytest.fixture(scope="session")
def method_settings() -> dict[str, dict]:
    """Per method of `method_module`: its preset (conf/method/) and settings (the tiny sizes: encoder_hidden,
    reparam_hidden)."""
    return {name: dict(settings) for name, settings in METHOD_SETTINGS.items()}


def _init_context(backbone: Backbone, token_ids, seed: int = 0, **overrides) -> InitContext:
    import torch

    from softprompt.methods.init import InitContext

    settings = {"init_range": 0.5, "init_std": None, "init_vocab_size": 50, "init_text": "so it goes"}
    settings.update(overrides)
    counts = torch.zeros(len(backbone.tokenizer), dtype=torch.long)
    counts[10:60] = torch.arange(50, 0, -1)  # ids 10..59 are "frequent", 10 the most
    return InitContext(embeddings=backbone.model.get_input_embeddings().weight.detach(),
                       tokenizer=backbone.tokenizer, token_counts=counts, label_token_ids=token_ids,
                       generator=torch.Generator().manual_seed(seed), **settings)


def _classification(backbone: Backbone, words: list[list[str]], **settings) -> ClassificationObjective:
    from softprompt.backbones.families import FAMILY_ADAPTERS
    from softprompt.data.verbalizer import label_token_ids
    from softprompt.objectives import ClassificationObjective

    return ClassificationObjective(label_token_ids(words, backbone.tokenizer), FAMILY_ADAPTERS[backbone.family],
                                   backbone.hidden_size, **settings)


def _generation(backbone: Backbone, **decoding) -> GenerationObjective:
    from softprompt.backbones.families import FAMILY_ADAPTERS
    from softprompt.objectives import GenerationObjective
    from softprompt.objectives.decoding import DecodingConfig

    config = DecodingConfig(**({"max_new_tokens": 6} | decoding))
    return GenerationObjective(backbone.tokenizer, config, FAMILY_ADAPTERS[backbone.family])


def _method_module(method: str, backbone: Backbone, words: list[list[str]] | None, n: int = 4,
                   init: str = "random_uniform", dropout: bool = False, seed: int = 0,
                   objective: Objective | None = None, **overrides) -> SoftPromptMethod:
    import torch

    from softprompt.data.verbalizer import label_token_ids
    from softprompt.methods import build_method

    context_keys = ("init_text", "init_std", "init_range", "init_vocab_size")
    context = {k: overrides.pop(k) for k in context_keys if k in overrides}
    settings = {**METHOD_SETTINGS[method], **overrides}
    config = _method_config(settings.pop("preset"), name=method, num_virtual_tokens=n, init=init, **settings)
    token_ids = label_token_ids(words, backbone.tokenizer) if words else []
    torch.manual_seed(seed)  # encoder / MLP weights
    return build_method(config, backbone=backbone, objective=objective or _classification(backbone, words),
                        dropout=dropout, init_context=lambda: _init_context(backbone, token_ids, seed=seed, **context))


@pytest.fixture(scope="session")
def lightning_module() -> Callable[..., TrainingModule]:
    """`lightning_module(method)`: the LightningModule that trains `method` (AdamW at lr 0.01, constant)."""
    from softprompt.training.module import training_module

    return lambda method: training_module(method, OPTIMIZER)


@pytest.fixture(scope="session")
def method_config() -> Callable[..., MethodConfig]:
    """`method_config(preset, **settings)`: conf/method/`preset`.yaml parsed by its class's typed config, with
    `settings` in place of the preset's values."""
    return _method_config


@pytest.fixture(scope="session")
def init_context() -> Callable[..., InitContext]:
    """`init_context(backbone, label_token_ids, seed=0, **settings)`: what an init strategy reads; token ids
    10..59 are the "frequent" ones (10 the most)."""
    return _init_context


@pytest.fixture(scope="session")
def classification_objective() -> Callable[..., ClassificationObjective]:
    """`classification_objective(backbone, words, **settings)`: scores label words (settings: loss=...)."""
    return _classification


@pytest.fixture(scope="session")
def generation_objective() -> Callable[..., GenerationObjective]:
    """`generation_objective(backbone, **decoding)`: target loss and decoding (max_new_tokens 6 by default)."""
    return _generation


@pytest.fixture(scope="session")
def method_module() -> Callable[..., object]:
    """`method_module(method, backbone, words, n=4, init="random_uniform", dropout=False, seed=0, objective=None,
    **settings)`: a method module of `method_settings` on `backbone`. `words` make a classification module;
    `words=None` with a generation `objective` a generation one."""
    return _method_module


@pytest.fixture(scope="session")
def prompt_module() -> Callable[..., SoftPromptMethod]:
    """`prompt_module(backbone, words, n=4, init="random_uniform", dropout=False)`: prompt tuning."""

    def _prompt(backbone: Backbone, words: list[list[str]], n: int = 4, init: str = "random_uniform",
                dropout: bool = False) -> SoftPromptMethod:
        return _method_module("prompt_tuning", backbone, words, n=n, init=init, dropout=dropout)

    return _prompt


@pytest.fixture(scope="session")
def hard_prompt_module() -> Callable[..., HardPrompt]:
    """`hard_prompt_module(backbone, words, objective=None)`: the hard prompt (nothing trainable)."""

    def _hard(backbone: Backbone, words: list[list[str]] | None, objective: Objective | None = None) -> HardPrompt:
        from softprompt.methods.hard_prompt import HardPrompt

        return HardPrompt(_method_config("hard_prompt"), backbone=backbone,
                          objective=objective or _classification(backbone, words))

    return _hard


@pytest.fixture(scope="session")
def template_for() -> Callable[..., str]:
    """`template_for(method, n, task_template="Review: {text}\\nSentiment:")`: input-level methods get n front slots."""

    def _template(method: str, n: int, task_template: str = "Review: {text}\nSentiment:") -> str:
        input_level = METHOD_SETTINGS.get(method, {}).get("preset") in ("prompt_tuning", "p_tuning")
        return f"[P:{n}]{task_template}" if input_level else task_template

    return _template


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., dict[str, torch.Tensor]]:
    """`make_batch(backbone, texts, template, padding_side="right", labels=None, max_length=256)`: a collated
    batch of `texts` rendered into `template` (the mask token as the answer on masked LMs)."""

    def _batch(backbone: Backbone, texts: list[str], template: str, padding_side: str = "right",
               labels: list[int] | None = None, max_length: int = 256) -> dict[str, torch.Tensor]:
        from softprompt.data.collate import PadCollator
        from softprompt.data.templates import Template, special_tokens_around

        parsed = Template.parse(template, ["text"])
        answer = [backbone.tokenizer.mask_token_id] if backbone.family == "masked_lm" else []
        specials = special_tokens_around(backbone.tokenizer)
        rows = []
        for i, text in enumerate(texts):
            r = parsed.render({"text": text}, backbone.tokenizer, max_length, answer, specials)
            rows.append({"input_ids": r.input_ids, "slot_ids": r.slot_ids, "answer_index": r.answer_index,
                         "label": (labels or [0] * len(texts))[i], "row_index": i})
        return PadCollator(backbone.tokenizer.pad_token_id, padding_side)(rows)

    return _batch


# ------------------------------------------------------------------------------------ runs several folders read

# A short run per method preset on the local sentiment task (default callbacks: the best checkpoint by val/acc is
# what gets tested and saved as the artifact; every validation's checkpoint is kept, so a run can be resumed from
# step 2 and compared with this one).
TRAINED_RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
               "data.batch_size=4", "data.eval_batch_size=8", "data.max_samples.validation=null",
               "callbacks.model_checkpoint.save_top_k=-1"]
TRAINED_METHODS = {  # a preset not named here trains as conf/method/ has it, with 3 virtual tokens
    "prompt_tuning": ["method.num_virtual_tokens=3", "method.init=vocab"],
    "p_tuning": ["method.num_virtual_tokens=3"],  # the LSTM encoder, folded away in the artifact
    "prefix_tuning": ["method.num_virtual_tokens=3", "method.reparam_hidden=16"],  # the MLP, folded away
    "p_tuning_v2": ["method.num_virtual_tokens=3"],
    "hard_prompt": ["method.num_demonstrations=2"],  # demonstrations travel in the json
    "residual_prompt_tuning": ["method.num_virtual_tokens=3", "method.residual_hidden=8"],
    "dept": ["method.num_virtual_tokens=3", "method.lowrank_rank=4"],
    "late_prompt_tuning": ["method.num_virtual_tokens=3", "method.generator_hidden=8"],
    "adaption_prompt": ["method.num_virtual_tokens=3", "method.adapter_layers=1", "optimizer.lr=0.05"],
}


class TrainedRun(NamedTuple):
    out: Path  # the run's output dir: metrics.json, checkpoints/, test_predictions.jsonl, prompt/
    summary: dict  # its metrics.json

    @property
    def prompt(self) -> Path:
        return self.out / "prompt"


@pytest.fixture(scope="session")
def trained_run_overrides(local_task_overrides) -> Callable[[str], list[str]]:
    """`trained_run_overrides(method)`: the softprompt-train overrides of `trained_run(method)`."""

    def overrides(method: str) -> list[str]:
        tiny = TRAINED_METHODS.get(method, ["method.num_virtual_tokens=3"])
        return [*TRAINED_RUN, *local_task_overrides, f"method={method}", *tiny]

    return overrides


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, trained_run_overrides, run_job) -> Callable[[str], TrainedRun]:
    """`trained_run(method)`: a 4-step run of method preset `method` (3 virtual tokens; prompt tuning from vocab,
    prefix tuning with a 16-wide MLP, the hard prompt with 2 demonstrations, ...: TRAINED_METHODS) on the local
    sentiment task, trained once per session, its checkpoints at steps 2 and 4 kept. Read it; copy what you
    change."""
    runs: dict[str, TrainedRun] = {}

    def get(method: str) -> TrainedRun:
        if method not in runs:
            out = tmp_path_factory.mktemp(method) / "run"
            runs[method] = TrainedRun(out, run_job(trained_run_overrides(method), out))
        return runs[method]

    return get


LESTER_ABLATION = ["-m", "experiment=lester_ablation", "debug=fast", "backbone=tiny_random"]


@dataclass(frozen=True)
class Sweep:
    command: list[str]  # the command line, without hydra.sweep.dir
    result: subprocess.CompletedProcess
    dir: Path

    def copy(self, to: Path) -> Path:
        """A private copy of the sweep dir, for a test that changes it."""
        return Path(shutil.copytree(self.dir, to))


@pytest.fixture(scope="session")
def fast_lester_ablation(tmp_path_factory, softprompt_train) -> Sweep:
    """`softprompt-train -m experiment=lester_ablation debug=fast backbone=tiny_random`, run once per session
    (20 jobs in one process): what the README and the ablation notebook run. Read it; copy what you change."""
    work = tmp_path_factory.mktemp("lester_ablation")
    result = softprompt_train(*LESTER_ABLATION, f"hydra.sweep.dir={work / 'sweep'}", cwd=work)
    return Sweep([sys.executable, "-m", "softprompt.cli.train", *LESTER_ABLATION], result, work / "sweep")


# ------------------------------------------------------------------------------ sweep results for the report

# (method, length, init, lr) -> test/acc for folds 0, 1, 2; val/acc is 0.01 lower, so val and test agree on the order
SWEEP_ACCURACIES = {
    ("prompt_tuning", 5, "class_labels", 0.3): [0.70, 0.72, 0.74],
    ("prompt_tuning", 50, "class_labels", 0.3): [0.80, 0.83, 0.85],
    ("prefix_tuning", 5, "random", 0.01): [0.60, 0.66, 0.61],
    ("prefix_tuning", 50, "random", 0.01): [0.75, 0.71, 0.78],
    ("hard_prompt", None, None, None): [0.55, 0.57, 0.56],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `sweep_configuration` runs once per configuration of `sweep_accuracies`."""
    if "sweep_configuration" in metafunc.fixturenames:
        metafunc.parametrize("sweep_configuration", list(SWEEP_ACCURACIES),
                             ids=["-".join(map(str, key)) for key in SWEEP_ACCURACIES])


@pytest.fixture(scope="session")
def sweep_accuracies() -> dict[tuple, list[float]]:
    """(method, num_virtual_tokens, init, lr) -> test/acc of folds 0, 1, 2 in `fake_sweep` (val/acc 0.01 lower)."""
    return {key: list(accs) for key, accs in SWEEP_ACCURACIES.items()}


def _write_run(run_dir: Path, method: str, length: int | None, init: str | None, lr: float | None,
               fold: int | None, seed: int, acc: float, hydra: bool = True, val_acc: float | None = None,
               with_val: bool = True, num_folds: int = 3) -> Path:
    val_acc = acc - 0.01 if val_acc is None else val_acc
    if hydra:
        (run_dir / ".hydra").mkdir(parents=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {
        "method": method, "backbone": "smollm2_135m", "task": "rotten_tomatoes", "task_type": "classification",
        "selection_metric": "val/acc", "num_virtual_tokens": length, "init": init, "lr": lr, "fold": fold,
        "num_folds": num_folds, "seed": seed, "trainable_params": 576 * (length or 0), "total_params": 134515008,
        "val": {"loss": 1.0 - val_acc, "acc": val_acc} if with_val else None, "test": {"loss": 1.1 - acc, "acc": acc},
        "wall_seconds": 100.0 + (length or 0), "tags": ["dev"],
        "method_config": {"name": method, "lr": lr, "num_virtual_tokens": length, "init": init, "dropout": 0.0,
                          "reparam": {"hidden": 64}, "layers": [1, 2]},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture(scope="session")
def write_run() -> Callable[..., Path]:
    """`write_run(run_dir, method, length, init, lr, fold, seed, acc, hydra=True, val_acc=None, with_val=True,
    num_folds=3)`: a finished job as softprompt-train leaves it: `.hydra/` plus metrics.json. val/acc is `val_acc`,
    or 0.01 below the test accuracy; `with_val=False` writes a metrics.json without validation metrics (an older
    run)."""
    return _write_run


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    """`sweep_accuracies` (5 configs x 3 folds) as a Hydra multirun dir, one job that never finished and one with
    corrupt output."""
    root = tmp_path / "multirun"
    job = 0
    for (method, length, init, lr), accs in SWEEP_ACCURACIES.items():
        for fold, acc in enumerate(accs):
            _write_run(root / str(job), method, length, init, lr, fold, 42, acc)
            job += 1
    (root / "15" / ".hydra").mkdir(parents=True)
    (root / "16" / ".hydra").mkdir(parents=True)
    (root / "16" / "metrics.json").write_text("{not json")
    return root
