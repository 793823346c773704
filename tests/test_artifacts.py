"""Trained prompts as artifacts: every run saves prompt/, softprompt.load predicts with it, and the two CLIs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from safetensors.torch import load_file, save_file

import softprompt
from conftest import local_task_overrides, write_jsonl
from softprompt.artifacts.format import FORMAT_VERSION, SPEC_FILE, TENSORS_FILE, ArtifactError
from softprompt.backbones.cache import BACKBONES
from softprompt.cli import inspect as inspect_prompt
from softprompt.cli import predict
from softprompt.config.compose import config_dir
from softprompt.training.run import run

RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=8", "data.max_samples.validation=null"]
METHODS = {  # default callbacks: the best checkpoint by val/acc is what gets tested and saved
    "prompt_tuning": ["method.num_virtual_tokens=3", "method.init=vocab"],
    "p_tuning": ["method.num_virtual_tokens=3"],  # the LSTM encoder, folded away in the artifact
    "prefix_tuning": ["method.num_virtual_tokens=3", "method.reparam_hidden=16"],  # the MLP, folded away
    "p_tuning_v2": ["method.num_virtual_tokens=3"],
    "hard_prompt": ["method.num_demonstrations=2"],  # demonstrations travel in the json
}
FOLDED_KEYS = {"prompt_tuning": {"prompt"}, "p_tuning": {"prompt"}, "prefix_tuning": {"prefix"},
               "p_tuning_v2": {"prefix"}, "hard_prompt": set()}
HEADLINES = [  # the tiny random model continues from the last input token, so each ending gives its own text
    ("Markets rise", "Shares rose sharply on Monday as investors cheered results"),
    ("Team wins cup", "The home side won the cup final after extra time!"),
    ("New phone launched", "A firm unveiled a phone with a bigger screen today?"),
    ("Minister resigns", "The minister quit after weeks of pressure over spending,"),
]


def run_job(overrides: list[str], out: Path) -> dict:
    """Compose conf/train.yaml as softprompt-train would (see conftest.make_cfg) and run it in-process."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.paths.log_dir = str(out.parent / "logs")
    HydraConfig.instance().set_config(cfg)
    try:
        return run(cfg)
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, local_task_files):
    """method -> (run dir, metrics.json), each method trained once for the whole module."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(method: str) -> tuple[Path, dict]:
        if method not in runs:
            out = tmp_path_factory.mktemp(method) / "run"
            summary = run_job([*RUN, *local_task_overrides(local_task_files), f"method={method}", *METHODS[method]],
                              out)
            runs[method] = out, summary
        return runs[method]

    return get


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def split_rows(files: dict[str, str], split: str = "test") -> list[dict]:
    return read_jsonl(Path(files[split]))


@pytest.mark.parametrize("method", list(METHODS))
def test_loaded_prompt_reproduces_the_runs_test_predictions(trained, local_task_files, method):
    out, _ = trained(method)
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


def test_artifact_holds_the_folded_tensors_of_the_tested_checkpoint_and_the_spec(trained):
    out, summary = trained("prefix_tuning")
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
    assert task["columns"] == {"text": "review", "label": "sentiment"} and task["max_length"] == 128
    assert task["source"] == task["splits"] == {}  # where the training data came from is not needed to predict
    assert spec["metrics"]["val"] == metrics["val"] and spec["metrics"]["test"] == metrics["test"]
    assert spec["metrics"]["selection_metric"] == "val/acc"

    # The saved prompt is the tested (best) checkpoint's, not the last step's.
    out, summary = trained("prompt_tuning")
    assert summary["best_step"] < summary["steps"]
    prompt = load_file(out / "prompt" / TENSORS_FILE)["prompt"]
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]["prompt"]
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(prompt, best) and not torch.equal(prompt, last["prompt"])

    out, _ = trained("hard_prompt")  # nothing trained, but everything needed to predict
    assert load_file(out / "prompt" / TENSORS_FILE) == {}
    spec = json.loads((out / "prompt" / SPEC_FILE).read_text())
    assert spec["tensors"] == {} and spec["inputs"]["num_demonstrations"] == 2
    assert len(spec["inputs"]["demonstration_ids"]) > 0 and spec["prompt_template"] == "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def headline_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("headlines")
    rows = [{"pair": {"body": body, "title": title}} for title, body in HEADLINES]
    return {"train": write_jsonl(root / "train.jsonl", rows * 4),
            "validation": write_jsonl(root / "validation.jsonl", rows[:2]),
            "test": write_jsonl(root / "test.jsonl", rows)}


def test_generation_prompt_reproduces_the_generated_text(headline_files, tmp_path):
    files = headline_files
    out = tmp_path / "run"
    run_job(["backbone=tiny_random", "logger=none", "backbone.random_init.config.tie_word_embeddings=false",
             "task=bbc_headline", "task.name=local_headlines", "task.source.asset=null",
             f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
             f"test: {files['test']}}}", "task.columns={text: pair.body, target: pair.title}",
             "task.template='{text}'", "task.max_length=64", "task.generation.max_new_tokens=8",
             "method=prefix_tuning", "method.num_virtual_tokens=3", "method.reparam_hidden=16",
             "trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=4", "data.eval_batch_size=8"],
            out)
    expected = [row["prediction"] for row in read_jsonl(out / "test_predictions.jsonl")]
    assert len(set(expected)) == len(HEADLINES)  # four different texts, so the comparison means something
    BACKBONES.clear()
    predictor = softprompt.load(out / "prompt")
    assert json.loads((out / "prompt" / SPEC_FILE).read_text())["task"]["generation"]["max_new_tokens"] == 8
    assert predictor.predict([body for _, body in HEADLINES]) == expected
    assert predictor.predict([{"pair": {"body": body}} for _, body in HEADLINES]) == expected  # a nested column
    with pytest.raises(ArtifactError, match="generation task: it has no label probabilities"):
        predictor.score(["Shares rose"])


def test_fsdp_generation_run_writes_an_artifact_that_reproduces_its_predictions(headline_files, tmp_path):
    """Two FSDP processes on CPU: prefix tuning (its MLP folded from gathered shards), greedy decoding
    of different lengths per row, the best checkpoint tested, predictions and artifact from rank 0."""
    files, out = headline_files, tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "softprompt.cli.train", "trainer=fsdp_cpu", "trainer.devices=2", "backbone=tiny_random",
         "logger=none", "backbone.random_init.config.tie_word_embeddings=false", "task=bbc_headline",
         "task.name=local_headlines", "task.source.asset=null",
         f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
         f"test: {files['test']}}}", "task.columns={text: pair.body, target: pair.title}", "task.template='{text}'",
         "task.max_length=64", "task.generation.max_new_tokens=8", "method=prefix_tuning",
         "method.num_virtual_tokens=3", "method.reparam_hidden=16", "trainer.max_steps=4",
         "trainer.val_check_interval=2", "data.batch_size=2", "data.eval_batch_size=3", f"hydra.run.dir={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    expected = [row["prediction"] for row in read_jsonl(out / "test_predictions.jsonl")]
    assert len(expected) == len(HEADLINES) and len(set(expected)) > 1  # each test row once, texts differ
    BACKBONES.clear()
    assert softprompt.load(out / "prompt").predict([body for _, body in HEADLINES]) == expected


def test_fingerprint_mismatch_is_refused_in_one_line_unless_forced(trained, tmp_path, capsys):
    out, summary = trained("prompt_tuning")
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


def test_predict_cli_writes_the_runs_predictions_and_rejects_bad_arguments(trained, local_task_files, tmp_path,
                                                                         capsys):
    out, _ = trained("p_tuning")
    expected = read_jsonl(out / "test_predictions.jsonl")
    result = subprocess.run([sys.executable, "-m", "softprompt.cli.predict", f"prompt={out / 'prompt'}",
                             f"input={local_task_files['test']}", f"output={tmp_path / 'preds.jsonl'}", "batch_size=3"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(tmp_path / "preds.jsonl")
    labels = ["negative", "positive"]
    assert [r["row_index"] for r in rows] == list(range(len(expected)))
    assert [r["prediction"] for r in rows] == [labels[p["prediction"]] for p in expected]
    for row, want in zip(rows, expected, strict=True):
        assert list(row["probabilities"]) == labels
        assert list(row["probabilities"].values()) == pytest.approx(want["probabilities"], abs=1e-5)

    prompt = f"prompt={out / 'prompt'}"
    good = [prompt, f"input={local_task_files['test']}", f"output={tmp_path / 'x.jsonl'}"]
    cases = {
        "unknown key 'model'; allowed: prompt, input, output, force, batch_size, cache_dir": [*good, "model=x"],
        "missing input=..., output=...": [prompt],
        f"input='{tmp_path / 'nope.jsonl'}': no such file": [prompt, f"input={tmp_path / 'nope.jsonl'}",
                                                             "output=x.jsonl"],
        "batch_size='0' is invalid: must be an integer >= 1": [*good, "batch_size=0"],
        "force='maybe' is invalid: allowed: true, false": [*good, "force=maybe"],
    }
    for start, argv in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            predict.main(argv)
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and captured.err.splitlines() == [captured.err.strip()]
        assert captured.err.startswith(f"softprompt-predict: error: {start}")
    assert not (tmp_path / "x.jsonl").exists()


def test_inspect_names_the_vocabulary_tokens_a_prompt_copies(trained, tmp_path, capsys):
    out, _ = trained("prompt_tuning")
    copy = tmp_path / "prompt"
    shutil.copytree(out / "prompt", copy)
    predictor = softprompt.load(copy)
    embeddings = predictor.module.backbone.get_input_embeddings().weight.detach()
    tokenizer = predictor.datamodule.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("a", "Z", "!")]
    save_file({"prompt": embeddings[ids].clone()}, copy / TENSORS_FILE)  # exact copies of three words

    inspect_prompt.main([f"prompt={copy}", "top_k=2"])
    lines = capsys.readouterr().out.splitlines()
    vocab_norm = embeddings[: len(tokenizer)].norm(dim=-1).mean().item()
    assert f"vocabulary mean embedding L2 norm: {vocab_norm:.4f}" in lines
    for k, token_id in enumerate(ids):
        text = tokenizer.decode([token_id])
        line = next(line for line in lines if line.startswith(f"virtual token {k}:"))
        assert line.startswith(f"virtual token {k}: L2 norm {embeddings[token_id].norm().item():.4f} | nearest by "
                               f"cosine: {text!r} (id {token_id}) 1.0000, ")
        assert line.count("(id ") == 2  # top_k=2
    matrix = lines[lines.index("pairwise cosine similarity between virtual tokens:") + 2:]
    assert [row.split()[1 + i] for i, row in enumerate(matrix)] == ["1.0000"] * 3

    inspect_prompt.main([f"prompt={trained('p_tuning_v2')[0] / 'prompt'}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("nearest vocabulary tokens do not apply")
    assert [line.split()[:2] for line in lines[-2:]] == [["self", "0"], ["self", "1"]]
    assert all(float(value) > 0 for line in lines[-2:] for value in line.split()[2:])
    inspect_prompt.main([f"prompt={trained('hard_prompt')[0] / 'prompt'}"])
    assert "nothing to inspect" in capsys.readouterr().out
