"""experiment=prompt_ensemble as a user runs it: N seeds trained in one multirun, then each alone against their
ensemble on the test split, computed from the saved predictions exactly as load_many(...).ensemble combines the
live prompts; members that did not see the same test rows are refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import softprompt
from softprompt.cli.report import main as report_main

pytestmark = pytest.mark.xdist_group("prompt_ensemble")  # its tests share the module's sweep


@pytest.fixture(scope="module")
def ensemble_sweep(tmp_path_factory, softprompt_train, local_task_overrides) -> Path:
    sweep = tmp_path_factory.mktemp("prompt_ensemble") / "sweep"
    result = softprompt_train("-m", "experiment=prompt_ensemble", "debug=fast", "backbone=tiny_random",
                              "method.num_virtual_tokens=3", *local_task_overrides, f"hydra.sweep.dir={sweep}",
                              cwd=sweep.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def test_prompt_ensemble_reports_each_seed_alone_and_their_ensemble(ensemble_sweep, local_task_files):
    runs = sorted(ensemble_sweep.glob("*/metrics.json"))
    assert sorted(json.loads(p.read_text())["seed"] for p in runs) == [0, 1, 2]  # debug=fast: three members
    table = pd.read_csv(ensemble_sweep / "ensemble.csv")
    assert len(table) == 1 and table["n"][0] == 3 and table["vote"][0] == "mean"
    accuracies = [json.loads(p.read_text())["test"]["acc"] for p in runs]
    assert table["members_mean_acc"][0] == pytest.approx(sum(accuracies) / 3, abs=1e-6)
    assert (table["members_min_acc"][0], table["members_max_acc"][0]) == pytest.approx(
        (min(accuracies), max(accuracies)), abs=1e-6)
    assert "every run of the configuration (all seeds and folds, none selected)" in (
        ensemble_sweep / "ensemble.md").read_text()

    rows = [json.loads(line) for line in Path(local_task_files["test"]).read_text().splitlines()]
    mixed = softprompt.load_many([p.parent / "prompt" for p in runs])
    live = mixed.ensemble([row["review"] for row in rows], vote="mean")
    truth = [row["sentiment"] for row in rows]
    correct = [float(p == t) for p, t in zip(live, truth, strict=True)]
    assert table["ensemble_acc"][0] == pytest.approx(sum(correct) / len(rows), abs=1e-6)


def test_the_ensemble_gets_a_test_sampling_interval_and_a_paired_gain_over_its_members(ensemble_sweep):
    table = pd.read_csv(ensemble_sweep / "ensemble.csv")
    runs = sorted(ensemble_sweep.glob("*/test_predictions.jsonl"))
    members = np.array([[json.loads(line)["prediction"] for line in p.read_text().splitlines()] for p in runs])
    labels = np.array([json.loads(line)["label"] for line in runs[0].read_text().splitlines()])
    ensemble = table["ensemble_acc"][0]
    # The ensemble is one predictor: its interval is the t interval over the test examples' correctness.
    n = len(labels)
    half = stats.t.ppf(0.975, n - 1) * math.sqrt(ensemble * (1 - ensemble) * n / (n - 1) / n)
    assert (table["ensemble_low_acc"][0], table["ensemble_high_acc"][0]) == pytest.approx(
        (max(0.0, ensemble - half), min(1.0, ensemble + half)), abs=1e-6)
    # Its gain is paired on the examples: ensemble correct minus the members' mean correctness, per example.
    assert table["gain_acc"][0] == pytest.approx(ensemble - (members == labels).mean(), abs=1e-6)
    assert table["gain_low_acc"][0] <= table["gain_acc"][0] <= table["gain_high_acc"][0]
    assert "ensemble minus members' mean acc" in (ensemble_sweep / "ensemble.md").read_text()


def test_members_that_predicted_other_test_rows_are_refused(ensemble_sweep, tmp_path, capsys):
    sweep = Path(shutil.copytree(ensemble_sweep, tmp_path / "sweep"))
    predictions = next(sweep.glob("*/test_predictions.jsonl"))
    predictions.write_text("\n".join(predictions.read_text().splitlines()[:-1]) + "\n")  # one test row fewer
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(sweep), "ensemble=majority"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicted other test rows or labels than" in err[0]
    assert "an ensemble combines runs on the same test split" in err[0]
