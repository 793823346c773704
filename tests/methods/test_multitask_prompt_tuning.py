"""Multitask prompt tuning: task t's prompt is the shared prompt times cols[t] @ rows[t], element by element, chosen
per row by the batch's task_ids; PEFT's MULTITASK_PROMPT_TUNING gives the same logits for the same tensors; the
source-task inits start from a trained prompt as PEFT's do; the artifact reproduces the run, exports to PEFT and
back, and mixed batches refuse it; nonsensical settings are one line naming their key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from peft import MultitaskPromptTuningConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file

import softprompt
from softprompt.artifacts.format import TENSORS_FILE, ArtifactError
from softprompt.artifacts.peft import export_peft, import_peft
from softprompt.backbones import fingerprint
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.cli import inspect as inspect_prompt
from softprompt.cli.bench import main as bench_main
from softprompt.config.compose import compose_train
from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods import build_method, method_class
from softprompt.methods.checks import check_method
from softprompt.methods.multitask_prompt_tuning import MultitaskPrompt
from softprompt.objectives import ClassificationObjective
from softprompt.training.run import run

N, RANK = 3, 2
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
TEMPLATE = f"[P:{N}]Review: {{text}}\nSentiment:"
WORDS = [["n"], ["p"]]  # single-token words: the scorer reads the batch as it is


class TaskScoring(ClassificationObjective):
    """Label-word scores for rows of `tasks` tasks: what a task mixture's objective reports as num_tasks."""

    def __init__(self, *args, tasks: int, **settings) -> None:
        super().__init__(*args, **settings)
        self.tasks = tasks

    @property
    def num_tasks(self) -> int:
        return self.tasks


@pytest.fixture(scope="module")
def build(init_context, method_config):
    """`build(backbone, tasks=2, init="random_normal", initial_state=None, seed=0, **settings)`: MPT with N virtual
    tokens and rank RANK, its factors drawn larger than PEFT's 0.02 so that every task's prompt differs visibly."""

    def make(backbone, tasks: int = 2, init: str = "random_normal", initial_state=None, seed: int = 0,
             task_init_std: float = 0.5, **settings) -> MultitaskPrompt:
        objective = TaskScoring(label_token_ids(WORDS, backbone.tokenizer), FAMILY_ADAPTERS[backbone.family],
                                backbone.hidden_size, tasks=tasks)
        source = "a trained prompt" if initial_state is not None else None
        options = {"num_ranks": RANK, "init_source_task": 0, "init_artifact": source, **settings}
        config = method_config("multitask_prompt_tuning", num_virtual_tokens=N, init=init,
                               task_init_std=task_init_std, match_embedding_std=False, **options)
        return build_method(config, backbone=backbone, objective=objective, dropout=False, initial_state=initial_state,
                            init_context=lambda: init_context(backbone, label_token_ids(WORDS, backbone.tokenizer),
                                                              seed=seed, init_std=1.0))

    return make


def with_tasks(batch: dict, task_ids: list[int]) -> dict:
    return {**batch, "task_ids": torch.tensor(task_ids)}


# -- the prompt ------------------------------------------------------------------------------------------------
def test_each_row_gets_its_own_tasks_prompt(build, make_batch, tiny_backbone):
    backbone = tiny_backbone()
    module = build(backbone, tasks=3)
    batch = with_tasks(make_batch(backbone, TEXTS, TEMPLATE, padding_side="left"), [2, 0, 1])
    with torch.no_grad():
        embeds = module.embed_inputs(batch)
        words = backbone.model.get_input_embeddings()(batch["input_ids"])
        expected = module.prompt * (module.task_cols @ module.task_rows)  # (tasks, n, d)
    for row, task in enumerate([2, 0, 1]):
        slots = batch["slot_ids"][row]
        assert torch.equal(embeds[row, slots >= 0], expected[task, slots[slots >= 0]])
        assert torch.equal(embeds[row, slots < 0], words[row, slots < 0])
    assert not torch.allclose(expected[0], expected[1])
    without_ids = {k: v for k, v in batch.items() if k != "task_ids"}  # a single task's batch: task 0
    with torch.no_grad():
        assert torch.equal(module.embed_inputs(without_ids), module.embed_inputs(with_tasks(batch, [0, 0, 0])))
    with pytest.raises(SoftPromptError, match=r"task_ids \[0, 3\]: .* holds the prompts of 3 task\(s\), ids 0 to 2"):
        module.embed_inputs(with_tasks(batch, [3, 0, 0]))


@pytest.mark.parametrize(("architecture", "side"), [("llama", "right"), ("llama", "left"), ("bert", "left"),
                                                  ("t5", "right")])  # seq2seq: right padding only
def test_a_rows_scores_depend_on_its_task_not_on_its_batch_mates_or_padding(build, make_batch, tiny_backbone,
                                                                            architecture, side):
    backbone = tiny_backbone(architecture)
    module = build(backbone).eval()
    tasks = [1, 0, 1]
    with torch.no_grad():
        alone = torch.cat([module(with_tasks(make_batch(backbone, [text], TEMPLATE), [task]))
                           for text, task in zip(TEXTS, tasks, strict=True)])
        together = module(with_tasks(make_batch(backbone, TEXTS, TEMPLATE, padding_side=side), tasks))
        other_task = module(with_tasks(make_batch(backbone, TEXTS, TEMPLATE, padding_side=side), [0, 1, 0]))
    assert torch.allclose(alone, together, atol=1e-5)
    assert (together - other_task).abs().amax(-1).min() > 1e-6  # every row moves with its task


def test_training_moves_the_prompt_and_every_tasks_factors_and_leaves_the_backbone(build, make_batch,
                                                                                    tiny_backbone):
    backbone = tiny_backbone()
    module = build(backbone)
    before = fingerprint(backbone.model)
    own = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    assert set(own) == {"prompt", "task_cols", "task_rows"}
    assert module.num_trainable_params() == N * 32 + 2 * RANK * (N + 32) == module.num_folded_params()
    batch = with_tasks(make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1]), [0, 1, 1])
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
    module.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(module(batch), batch["labels"]).backward()
        optimizer.step()
    assert fingerprint(backbone.model) == before
    assert all(not p.requires_grad for p in backbone.model.parameters())
    for name, start in own.items():  # both tasks' rows of the factors learn
        moved = (getattr(module, name).detach() - start).flatten(1 if name != "prompt" else 0).abs()
        assert bool((moved.amax(-1) > 0).all()), name


def test_gradient_checkpointing_gives_the_same_gradients(build, checkpointing_gradients):
    plain, _, _ = checkpointing_gradients(build, TEXTS, TEMPLATE, prepare=lambda batch: with_tasks(batch, [1, 0, 1]))
    assert plain.keys() == {"prompt", "task_cols", "task_rows"}
    for name in plain:
        assert torch.any(plain[name] != 0), name


def test_trainable_tensors_stay_float32_on_a_bfloat16_backbone(build, make_batch, tiny_backbone):
    backbone = tiny_backbone(dtype="bfloat16")
    module = build(backbone)
    batch = with_tasks(make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1]), [0, 1, 0])
    assert module.embed_inputs(batch).dtype == torch.bfloat16
    F.cross_entropy(module(batch).float(), batch["labels"]).backward()
    assert {p.dtype for p in module.trainable_parameters()} == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.trainable_parameters())


# -- PEFT ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_logits_match_peft_for_rows_of_different_tasks(build, make_batch, tiny_backbone, architecture):
    backbone = tiny_backbone(architecture, fresh=True)  # PEFT wraps it
    module = build(backbone, tasks=3).eval()
    tasks = [2, 0, 1]
    ours_batch = with_tasks(make_batch(backbone, TEXTS, TEMPLATE), tasks)
    plain = make_batch(backbone, TEXTS, "Review: {text}\nSentiment:")  # PEFT adds its prompt itself
    config = MultitaskPromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=N, num_tasks=3,
                                         num_ranks=RANK)
    with torch.no_grad():
        ours = backbone.model.get_output_embeddings()(module.hidden_states(ours_batch))
        peft = get_peft_model(backbone.model, config)
        encoder = peft.prompt_encoder["default"]
        encoder.embedding.weight.copy_(module.prompt)
        encoder.prefix_task_cols.copy_(module.task_cols)
        encoder.prefix_task_rows.copy_(module.task_rows)
        theirs = peft(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"],
                      task_ids=torch.tensor(tasks)).logits
    real = ours_batch["attention_mask"].bool()
    difference = float((ours[real] - theirs[real]).abs().max())
    assert ours.shape == theirs.shape and difference <= 1e-5, difference


def test_the_peft_form_is_multitask_prompt_tuning_sized_by_the_tensors():
    settings = preset()
    config = check_method(settings)
    form = method_class(settings).peft_form(config, "causal_lm")
    assert (form.peft_type, form.tensor, form.task_ids) == ("MULTITASK_PROMPT_TUNING", "prompt", True)
    assert dict(form.extra_tensors) == {"task_cols": "prefix_task_cols", "task_rows": "prefix_task_rows"}
    assert dict(form.sized_by) == {"num_tasks": ("task_cols", 0)}
    assert form.training_options == {"num_ranks": 1, "prompt_tuning_init": "RANDOM"}


# -- inits -----------------------------------------------------------------------------------------------------
def fresh_factors(seed: int, std: float, tasks: int = 2, prompt_draws: int = 0) -> tuple[torch.Tensor, ...]:
    """PEFT's draw: cols (tasks, n, r), then rows (tasks, r, d), each N(0, std), from the run's seeded generator
    after the shared prompt's `prompt_draws` normal numbers; returns (those numbers, cols, rows)."""
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.randn(prompt_draws, generator=generator)
    cols = torch.randn((tasks, N, RANK), generator=generator) * std
    return drawn, cols, torch.randn((tasks, RANK, 32), generator=generator) * std


def test_text_init_gives_the_texts_embeddings_and_factors_drawn_as_peft_draws_them(build, tiny_backbone):
    backbone = tiny_backbone()
    module = build(backbone, tasks=2, task_init_std=0.02, init="text")
    _, cols, rows = fresh_factors(seed=0, std=0.02)  # text draws nothing: the factors come first
    assert torch.equal(module.task_cols, cols) and torch.equal(module.task_rows, rows)
    ids = backbone.tokenizer("so it goes", add_special_tokens=False).input_ids
    assert torch.equal(module.prompt, backbone.model.get_input_embeddings().weight[(ids * N)[:N]])


def test_random_normal_init_draws_the_prompt_then_the_factors(build, tiny_backbone):
    module = build(tiny_backbone(), tasks=2, task_init_std=0.02, init="random_normal")  # init_std 1.0: PEFT's RANDOM
    prompt, cols, rows = fresh_factors(seed=0, std=0.02, prompt_draws=N * 32)
    assert torch.equal(module.prompt, prompt.view(N, 32))
    assert torch.equal(module.task_cols, cols) and torch.equal(module.task_rows, rows)


def source_state(tasks: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"prompt": torch.randn(N, 32, generator=generator),
            "task_cols": torch.randn(tasks, N, RANK, generator=generator),
            "task_rows": torch.randn(tasks, RANK, 32, generator=generator)}


def test_average_source_tasks_starts_every_task_from_the_sources_mean_factors(build, tiny_backbone):
    source = source_state()
    module = build(tiny_backbone(), tasks=2, init="average_source_tasks", initial_state=source)
    assert torch.equal(module.prompt, source["prompt"])
    for key in ("task_cols", "task_rows"):
        mean = source[key].mean(0)
        assert getattr(module, key).shape[0] == 2 and all(torch.equal(part, mean) for part in getattr(module, key))


def test_exact_source_task_starts_every_task_from_that_source_tasks_factors(build, tiny_backbone):
    source = source_state()
    module = build(tiny_backbone(), tasks=2, init="exact_source_task", initial_state=source, init_source_task=2)
    assert torch.equal(module.prompt, source["prompt"])
    for key in ("task_cols", "task_rows"):
        assert all(torch.equal(part, source[key][2]) for part in getattr(module, key))
    with pytest.raises(ConfigError, match=r"^method.init_source_task=3 is invalid: the source prompt holds 3 task"):
        build(tiny_backbone(), init="exact_source_task", initial_state=source, init_source_task=3)


def test_only_source_shared_takes_the_sources_prompt_and_fresh_factors(build, tiny_backbone):
    source = source_state()
    module = build(tiny_backbone(), tasks=2, init="only_source_shared", initial_state=source, seed=3)
    _, cols, rows = fresh_factors(seed=3, std=0.5)
    assert torch.equal(module.prompt, source["prompt"])
    assert torch.equal(module.task_cols, cols) and torch.equal(module.task_rows, rows)


def test_from_artifact_continues_a_prompt_of_as_many_tasks(build, tiny_backbone):
    source = source_state(tasks=2)
    module = build(tiny_backbone(), tasks=2, init="from_artifact", initial_state=source)
    assert all(torch.equal(getattr(module, key), source[key]) for key in source)
    with pytest.raises(ConfigError, match=r"holds factors for 2 task\(s\); this run trains 3: start from it with "
                                          "init=average_source_tasks or exact_source_task$"):
        build(tiny_backbone(), tasks=3, init="from_artifact", initial_state=source)


# -- configs ---------------------------------------------------------------------------------------------------
def preset(**changes) -> dict:
    method = OmegaConf.to_container(compose_train(["method=multitask_prompt_tuning"]).method, resolve=True)
    return {**method, **changes}


def test_the_preset_is_a_single_task_prompt_by_default():
    config = check_method(preset())
    assert method_class(preset()) is MultitaskPrompt and (config.num_ranks, config.task_init_std) == (1, 0.02)
    assert config.init == "class_labels" and MultitaskPrompt.mixed_batch_kind() is None


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"init": "random"}, "method.init='random' is invalid: allowed: random_uniform, random_normal, vocab, text, "
                             "class_labels, from_artifact, average_source_tasks, exact_source_task, "
                             "only_source_shared"),
        ({"init": "exact_source_task"}, "method.init_artifact=None is invalid: init=exact_source_task needs the path "
                                        "of a trained multitask_prompt_tuning prompt, the source tasks' (a run's "
                                        "prompt/ folder)"),
        ({"init_artifact": "/x"}, "method.init_artifact='/x' is invalid: is only read with method.init=from_artifact; "
                                  "set method.init_artifact=null"),
        ({"num_ranks": 0}, "method.num_ranks=0 is invalid: must be an integer >= 1"),
        ({"init_source_task": -1}, "method.init_source_task=-1 is invalid: must be an integer >= 0"),
        ({"encoder": "mlp"}, "method.encoder='mlp' is invalid: allowed: none"),
    ],
)
def test_nonsensical_settings_are_one_line_naming_their_key(changes, line):
    with pytest.raises(ConfigError) as raised:
        check_method(preset(**changes))
    assert str(raised.value) == line


# -- runs, artifacts, interop ----------------------------------------------------------------------------------
RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=8", "data.max_samples.validation=null",
       "method=multitask_prompt_tuning", f"method.num_virtual_tokens={N}", f"method.num_ranks={RANK}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_job, local_task_overrides) -> Path:
    """A 2-step single-task run on the local sentiment task: its output dir."""
    out = tmp_path_factory.mktemp("mpt") / "run"
    run_job([*RUN, *local_task_overrides], out)
    return out


def test_the_artifact_reproduces_the_runs_predictions_and_is_refused_in_mixed_batches(trained, reloaded_prompt):
    summary = json.loads((trained / "metrics.json").read_text())
    tensors = load_file(trained / "prompt" / TENSORS_FILE)
    assert {k: list(v.shape) for k, v in tensors.items()} == {"prompt": [N, 32], "task_cols": [1, N, RANK],
                                                              "task_rows": [1, RANK, 32]}
    assert summary["folded_params"] == summary["trainable_params"] == N * 32 + RANK * (N + 32)
    reloaded_prompt(trained)
    with pytest.raises(ArtifactError, match=r"^prompt '0': method multitask_prompt_tuning \(MultitaskPrompt\) injects "
                                            "its prompt in a way mixed batches cannot reproduce row by row"):
        softprompt.load_many([trained / "prompt", trained / "prompt"])


def test_a_run_resumes_from_its_trainable_only_checkpoint(trained, run_job, local_task_overrides, tmp_path):
    last = trained / "checkpoints" / "last.ckpt"
    assert set(torch.load(last, map_location="cpu", weights_only=False)["state_dict"]) == {
        "method.prompt", "method.task_cols", "method.task_rows"}
    summary = run_job([*RUN, *local_task_overrides, "trainer.max_steps=3", "trainer.val_check_interval=1",
                       f"ckpt_path={last}"], tmp_path / "resumed")
    assert summary["steps"] == 3


def test_inspect_shows_each_tasks_prompt_and_the_shared_prompts_nearest_tokens(trained, capsys):
    capsys.readouterr()
    inspect_prompt.main([f"prompt={trained / 'prompt'}", "top_k=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"{N} virtual tokens per task, 1 task(s): the shared prompt P times a rank-{RANK} task "
                             "matrix, element by element, in the input embedding space (d=32)")
    assert lines[1].startswith("task 0: prompt L2 norm per virtual token mean ")
    assert lines[2] == "shared prompt P:" and sum(line.startswith("virtual token ") for line in lines) == N


def test_export_to_peft_reproduces_the_logits_and_imports_back(trained, tmp_path):
    prompt = trained / "prompt"
    out = export_peft(prompt, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_tasks"], config["num_ranks"]) == ("MULTITASK_PROMPT_TUNING", 1, RANK)
    assert set(load_file(out / "adapter_model.safetensors")) == {"prompt_embeddings", "prefix_task_cols",
                                                                  "prefix_task_rows"}
    predictor = softprompt.load(prompt)
    batch = next(predictor.batches(TEXTS))
    module = predictor.module
    with torch.no_grad():
        ours = module.adapter.vocab_logits(module.backbone, module.hidden_states(batch))
        peft = PeftModel.from_pretrained(copy.deepcopy(module.backbone), str(out)).eval()
        theirs = peft(input_ids=batch["input_ids"][:, N:], attention_mask=batch["attention_mask"][:, N:],
                      task_ids=torch.zeros(len(TEXTS), dtype=torch.long)).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    back = import_peft(out, tmp_path / "back")
    assert all(torch.equal(load_file(back / TENSORS_FILE)[k], v) for k, v in load_file(prompt / TENSORS_FILE).items())


def test_a_foreign_peft_adapter_imports_with_its_rank(trained, tmp_path):
    adapter = export_peft(trained / "prompt", tmp_path / "adapter")
    (adapter / "softprompt.json").unlink()  # as PEFT alone would have saved it
    out = import_peft(adapter, tmp_path / "imported", task="rotten_tomatoes", backbone="tiny_random")
    spec = json.loads((out / "softprompt.json").read_text())
    assert spec["method"]["config"]["num_ranks"] == RANK
    weights = load_file(adapter / "adapter_model.safetensors")
    assert torch.equal(load_file(out / TENSORS_FILE)["task_rows"], weights["prefix_task_rows"])


def test_source_inits_read_the_artifact_and_refuse_what_does_not_fit(trained, run_job, make_cfg, tiny_overrides,
                                                                     local_task_overrides, tmp_path):
    source = load_file(trained / "prompt" / TENSORS_FILE)
    out = tmp_path / "target"
    start = tmp_path / "start.safetensors"
    summary = run_job([*RUN, *local_task_overrides, "method.init=average_source_tasks",
                       f"method.init_artifact={trained / 'prompt'}", "trainer.max_steps=1", "callbacks=none",
                       "+callbacks.start._target_=test_multitask_prompt_tuning.SaveStartTensors",
                       f"+callbacks.start.path={start}"], out)
    assert summary["init"] == "average_source_tasks"
    started = load_file(start)
    assert all(torch.equal(started[key], source[key]) for key in source)  # one source task: its mean is itself
    base = [*tiny_overrides, *local_task_overrides, "method=multitask_prompt_tuning", f"method.num_virtual_tokens={N}",
            f"method.init_artifact={trained / 'prompt'}"]
    cases = [
        (["method.init=exact_source_task", "method.init_source_task=1", f"method.num_ranks={RANK}"],
         f"method.init_source_task=1 is invalid: the artifact {trained / 'prompt'} holds 1 task(s): allowed 0 to 0"),
        (["method.init=average_source_tasks", "method.num_ranks=1"],
         f"method.num_ranks=1 is invalid: the artifact {trained / 'prompt'} has rank {RANK} task factors; "
         "init=average_source_tasks needs the same rank (only_source_shared reads the shared prompt alone)"),
        (["method.init=only_source_shared", "method.num_virtual_tokens=5"],
         f"method.num_virtual_tokens=5 is invalid: the artifact {trained / 'prompt'} has {N} virtual tokens"),
    ]
    for overrides, line in cases:
        with pytest.raises(ConfigError) as error:
            run(make_cfg([*base, *overrides]))
        assert str(error.value) == line


class SaveStartTensors(L.Callback):
    """Writes the module's folded tensors as training starts (step 0) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        save_file({k: v.detach().clone() for k, v in module.folded_state().items()}, self.path)


def test_the_benchmark_times_it_against_pefts_multitask_prompt_tuning(tmp_path, local_task_overrides):
    status = bench_main(["backbone=tiny_random", "methods=multitask_prompt_tuning", "steps=1", "warmup=0",
                         "seq_len=8", f"num_virtual_tokens={N}", "batch_size=4", "full_ft=false",
                         f"out={tmp_path / 'bench'}", "--", *local_task_overrides])
    assert status == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    runners = {(r["data"], r["runner"]) for r in report["rows"]}
    assert {(data, "PEFT") for data in ("synthetic", "real")} <= runners
