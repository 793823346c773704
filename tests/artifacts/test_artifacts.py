"""Trained prompts as artifacts: every run saves prompt/ (the folded tensors of the tested checkpoint and the spec),
and softprompt.load predicts with it exactly as the run did, also after FSDP training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import softprompt
from softprompt.artifacts.format import FORMAT_VERSION, SPEC_FILE, TENSORS_FILE, ArtifactError
from softprompt.backbones.cache import BACKBONES
from softprompt.cli import predict

FOLDED_KEYS = {"prompt_tuning": {"prompt"}, "p_tuning": {"prompt"}, "prefix_tuning": {"prefix"},
               "p_tuning_v2": {"prefix"}, "hard_prompt": set(), "residual_prompt_tuning": {"prompt"},
               "dept": {"prompt", "lowrank_a", "lowrank_b"},
               "late_prompt_tuning": {f"generator.proj_{side}.{kind}" for side in ("down", "up")
                                      for kind in ("weight", "bias")}}
# The generation run: prefix tuning (its MLP folded away) on conftest's headlines, an untied LM head.
GENERATION = ["backbone=tiny_random", "logger=none", "backbone.random_init.config.tie_word_embeddings=false",
              "task.template='{text}'", "task.max_length=64", "task.generation.max_new_tokens=8",
              "method=prefix_tuning", "method.num_virtual_tokens=3", "method.reparam_hidden=16", "trainer.max_steps=4",
              "trainer.val_check_interval=2"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_rows(files: dict[str, str], split: str = "test") -> list[dict]:
    return read_jsonl(Path(files[split]))


@pytest.mark.parametrize("method", list(FOLDED_KEYS))
def test_loaded_prompt_reproduces_the_runs_test_predictions(trained_run, local_task_files, method):
    out, _ = trained_run(method)
    expected = read_jsonl(out / "test_predictions.jsonl")
    rows = split_rows(local_task_files)
    BACKBONES.clear()  # rebuild the backbone from the artifact's config, not the run's in-memory copy
    predictor = softprompt.load(out / "prompt")
    own = {n for n, _ in predictor.module.named_parameters() if not n.startswith("backbone.")}
    assert own == FOLDED_KEYS[method]  # the folded form: no P-tuning encoder, no prefix MLP
    scores = predictor.score([row["review"] for row in rows])  # plain strings fill the one text field
    assert predictor.labels == ["negative", "positive"]
    for score, want in zip(scores, expected, strict=True):
        assert list(score) == predictor.labels
        assert list(score.values()) == pytest.approx(want["probabilities"], abs=1e-5)
    labels = [predictor.labels[p["prediction"]] for p in expected]
    assert predictor.predict([{"text": row["review"]} for row in rows]) == labels  # by field name
    assert predictor.predict(rows) == labels  # by the task's dataset column (review)


def test_artifact_holds_the_folded_tensors_of_the_tested_checkpoint_and_the_spec(trained_run):
    out, summary = trained_run("prefix_tuning")
    tensors = load_file(out / "prompt" / TENSORS_FILE)
    assert list(tensors) == ["prefix"] and tensors["prefix"].shape == (3, 2 * 2 * 2 * 8)  # layers x K/V x kv_dim
    backbone = softprompt.load(out / "prompt").module.backbone
    size = (out / "prompt" / TENSORS_FILE).stat().st_size
    assert size < 2_000 and size * 50 < sum(p.numel() * p.element_size() for p in backbone.parameters())

    spec = json.loads((out / "prompt" / SPEC_FILE).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert spec["format"] == "softprompt-artifact" and spec["format_version"] == FORMAT_VERSION
    assert spec["method"] == {"name": "prefix_tuning", "config": metrics["method_config"]}
    assert spec["method"]["config"]["reparam"] == "mlp" and spec["method"]["config"]["reparam_hidden"] == 16
    assert spec["tensors"] == {"prefix": {"shape": [3, 64], "dtype": "float32"}}
    assert (spec["num_virtual_tokens"], spec["init"]) == (3, "vocab")
    backbone = spec["backbone"]
    assert (backbone["name"], backbone["source"], backbone["revision"]) == ("tiny_random", metrics["backbone_source"],
                                                                           None)
    assert backbone["fingerprint"] == metrics["backbone_fingerprint_start"] == metrics["backbone_fingerprint_end"]
    assert backbone["family"] == "causal_lm" and backbone["config"]["random_init"]["seed"] == 0
    task = spec["task"]
    assert task["template"] == "Review: {text}\nSentiment:" and task["text_fields"] == ["text"]
    assert task["labels"] == ["negative", "positive"] and task["verbalizer"]["positive"] == " positive"
    assert task["columns"] == {"text": "review", "label": "sentiment", "group": None} and task["max_length"] == 128
    assert task["source"] == task["splits"] == {}  # where the training data came from is not needed to predict
    assert spec["metrics"]["val"] == metrics["val"] and spec["metrics"]["test"] == metrics["test"]
    assert spec["metrics"]["selection_metric"] == "val/acc"

    # The saved prompt is the tested (best) checkpoint's, not the last step's.
    out, summary = trained_run("prompt_tuning")
    assert summary["best_step"] < summary["steps"]
    prompt = load_file(out / "prompt" / TENSORS_FILE)["prompt"]
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]["method.prompt"]
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(prompt, best) and not torch.equal(prompt, last["method.prompt"])

    out, _ = trained_run("hard_prompt")  # nothing trained, but everything needed to predict
    assert load_file(out / "prompt" / TENSORS_FILE) == {}
    spec = json.loads((out / "prompt" / SPEC_FILE).read_text())
    assert spec["tensors"] == {} and spec["inputs"]["num_demonstrations"] == 2
    assert len(spec["inputs"]["demonstration_ids"]) > 0 and spec["prompt_template"] == "Review: {text}\nSentiment:"


def test_generation_prompt_reproduces_the_generated_text(run_job, headline_task_overrides, headlines, tmp_path):
    out = tmp_path / "run"
    run_job([*GENERATION, *headline_task_overrides, "data.batch_size=4", "data.eval_batch_size=8"], out)
    expected = [row["prediction"] for row in read_jsonl(out / "test_predictions.jsonl")]
    assert len(set(expected)) == len(headlines)  # four different texts, so the comparison means something
    BACKBONES.clear()
    predictor = softprompt.load(out / "prompt")
    assert json.loads((out / "prompt" / SPEC_FILE).read_text())["task"]["generation"]["max_new_tokens"] == 8
    assert predictor.predict([body for _, body in headlines]) == expected
    assert predictor.predict([{"pair": {"body": body}} for _, body in headlines]) == expected  # a nested column
    with pytest.raises(ArtifactError, match="generation task: it has no label probabilities"):
        predictor.score(["Shares rose"])
    # Written before format 4, a generation task had no task.references: it reads as `single` and predicts the same.
    old = tmp_path / "format3"
    shutil.copytree(out / "prompt", old)
    spec = json.loads((old / SPEC_FILE).read_text())
    assert spec["task"].pop("references") == "single"
    (old / SPEC_FILE).write_text(json.dumps({**spec, "format_version": 3}))
    BACKBONES.clear()
    assert softprompt.load(old).predict([body for _, body in headlines]) == expected


@pytest.mark.xdist_group("distributed")  # two training processes: one such test at a time
def test_fsdp_generation_run_writes_an_artifact_that_reproduces_its_predictions(softprompt_train,
                                                                               headline_task_overrides, headlines,
                                                                               tmp_path):
    """Two FSDP processes on CPU: prefix tuning (its MLP folded from gathered shards), greedy decoding
    of different lengths per row, the best checkpoint tested, predictions and artifact from rank 0."""
    out = tmp_path / "run"
    result = softprompt_train("trainer=fsdp_cpu", "trainer.devices=2", *GENERATION, *headline_task_overrides,
                              "data.batch_size=2", "data.eval_batch_size=3", f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    expected = [row["prediction"] for row in read_jsonl(out / "test_predictions.jsonl")]
    assert len(expected) == len(headlines) and len(set(expected)) > 1  # each test row once, texts differ
    BACKBONES.clear()
    assert softprompt.load(out / "prompt").predict([body for _, body in headlines]) == expected


def test_fingerprint_mismatch_is_refused_in_one_line_unless_forced(trained_run, write_jsonl, tmp_path, capsys):
    out, summary = trained_run("prompt_tuning")
    other = tmp_path / "prompt"
    shutil.copytree(out / "prompt", other)
    spec = json.loads((other / SPEC_FILE).read_text())
    spec["backbone"]["config"]["random_init"]["seed"] = 1  # the config now builds other weights
    (other / SPEC_FILE).write_text(json.dumps(spec))
    expected = summary["backbone_fingerprint_start"]
    with pytest.raises(ArtifactError) as error:
        softprompt.load(other)
    message = str(error.value)
    found = message.split("found ")[1].split(" ")[0]
    assert "\n" not in message and found != expected
    assert message.startswith(f"backbone tiny_random does not match the artifact: expected fingerprint {expected}, "
                              f"found {found}")
    assert message.endswith("force=true loads it anyway")
    assert len(softprompt.load(other, force=True).predict(["great fun", "a dull mess"])) == 2

    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": "great fun"}])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"prompt={other}", f"input={inputs}", f"output={tmp_path / 'p.jsonl'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"softprompt-predict: error: {message}"]
    assert not (tmp_path / "p.jsonl").exists()
