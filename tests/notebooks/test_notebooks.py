"""The notebooks' code runs as written."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_notebook(name: str) -> dict:
    """Execute a notebook's code cells in order, as Jupyter would; return its namespace."""
    path = NOTEBOOKS / name
    namespace: dict = {}
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(path), "exec"), namespace)
    return namespace


def test_quickstart_notebook_runs():
    namespace = run_notebook("quickstart.ipynb")
    assert namespace["metrics"]["trainable_params"] == 8 * 32
    assert len(namespace["predictions"]) == 1292  # the whole rotten_tomatoes test split


@pytest.mark.xdist_group("lester_ablation")
def test_ablation_notebook_runs_a_sweep_and_reads_it(fast_lester_ablation, monkeypatch):
    """The notebook runs `softprompt-train -m experiment=lester_ablation debug=fast backbone=tiny_random`: the
    session already ran that very command (fast_lester_ablation), so the notebook's call, checked argument by
    argument, gets that run's sweep folder and output instead of running the same 20 jobs again. Every other
    line of the notebook runs as written."""
    real_run = subprocess.run
    replayed = []

    def run(args, *positional, **kwargs):
        if not (isinstance(args, list) and args[:-1] == fast_lester_ablation.command
                and str(args[-1]).startswith("hydra.sweep.dir=")):
            return real_run(args, *positional, **kwargs)
        shutil.copytree(fast_lester_ablation.dir, str(args[-1]).removeprefix("hydra.sweep.dir="))
        result = fast_lester_ablation.result
        text = kwargs.get("text") or kwargs.get("universal_newlines")
        done = subprocess.CompletedProcess(args, result.returncode, *(
            (result.stdout, result.stderr) if text else (result.stdout.encode(), result.stderr.encode())))
        replayed.append(args)
        if kwargs.get("check"):
            done.check_returncode()
        return done

    monkeypatch.setattr(subprocess, "run", run)
    namespace = run_notebook("ablation_analysis.ipynb")
    assert len(replayed) == 1  # the notebook ran the sweep command
    summary = namespace["summary"]
    assert len(summary) == 4 and summary["n"].tolist() == [5, 5, 5, 5]  # 2 lengths x 2 inits, 5 folds each
    assert namespace["group_by"] == ["num_virtual_tokens", "init"]
    assert (namespace["SWEEP"] / "results.md").exists()
