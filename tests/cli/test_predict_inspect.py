"""softprompt-predict and softprompt-inspect on the prompt/ folder of a short run: predictions as the run made
them, the nearest vocabulary tokens of a prompt, and one-line errors for bad arguments."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import softprompt
from softprompt.artifacts.format import read_spec, write_artifact
from softprompt.cli import inspect as inspect_prompt
from softprompt.cli import predict


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_cli_writes_the_runs_predictions_and_rejects_bad_arguments(trained_run, local_task_files, tmp_path,
                                                                         capsys, run_as_main):
    out, _ = trained_run("p_tuning")
    capsys.readouterr()  # what training printed, when this test was the first to need the run
    expected = read_jsonl(out / "test_predictions.jsonl")
    assert run_as_main("softprompt.cli.predict", f"prompt={out / 'prompt'}", f"input={local_task_files['test']}",
                       f"output={tmp_path / 'preds.jsonl'}", "batch_size=3") == 0
    assert capsys.readouterr().out.startswith("softprompt-predict: 10 predictions (p_tuning, task local) -> ")
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


def test_inspect_names_the_vocabulary_tokens_a_prompt_copies(trained_run, tmp_path, capsys):
    out, _ = trained_run("prompt_tuning")
    prefix, hard = trained_run("p_tuning_v2").prompt, trained_run("hard_prompt").prompt
    capsys.readouterr()  # what training printed, when this test was the first to need the runs
    copy = tmp_path / "prompt"
    shutil.copytree(out / "prompt", copy)
    predictor = softprompt.load(copy)
    embeddings = predictor.module.backbone.get_input_embeddings().weight.detach()
    tokenizer = predictor.datamodule.tokenizer
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("a", "Z", "!")]
    write_artifact(copy, {"prompt": embeddings[ids].clone()}, read_spec(copy))  # exact copies of three words

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

    inspect_prompt.main([f"prompt={prefix}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("nearest vocabulary tokens do not apply")
    assert [line.split()[:2] for line in lines[-2:]] == [["self", "0"], ["self", "1"]]
    assert all(float(value) > 0 for line in lines[-2:] for value in line.split()[2:])
    inspect_prompt.main([f"prompt={hard}"])
    assert "nothing to inspect" in capsys.readouterr().out
