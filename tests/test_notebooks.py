"""The quickstart notebook's code runs as written."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


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


def test_ablation_notebook_runs_a_sweep_and_reads_it():
    namespace = run_notebook("ablation_analysis.ipynb")
    summary = namespace["summary"]
    assert len(summary) == 4 and summary["n"].tolist() == [5, 5, 5, 5]  # 2 lengths x 2 inits, 5 folds each
    assert namespace["group_by"] == ["num_virtual_tokens", "init"]
    assert (namespace["SWEEP"] / "results.md").exists()
