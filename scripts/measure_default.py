"""Measure the default main job against the zero-shot baseline (same frozen model, same template).

    python scripts/measure_default.py [extra overrides...]

Runs `softprompt-train experiment=zero_shot` and `softprompt-train` one after the other, timing each
whole process (start-up, asset reuse, training, validation and test included), and prints a markdown
table of wall time and test metrics. Results also go to logs/measure_default.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = {"zero-shot (hard_prompt)": ["experiment=zero_shot"], "prompt tuning (default main job)": []}


def timed_run(name: str, overrides: list[str], out_dir: Path) -> dict:
    run_dir = out_dir / name.split()[0].replace("-", "_")
    command = ["softprompt-train", *overrides, f"hydra.run.dir={run_dir}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"run": name, "process_wall_seconds": round(wall, 1), **metrics}


def main() -> None:
    extra = sys.argv[1:]
    out_dir = Path("logs") / "measure_default" / time.strftime("%Y-%m-%d_%H-%M-%S")
    results = [timed_run(name, [*overrides, *extra], out_dir) for name, overrides in RUNS.items()]
    print("| run | test acc | test macro-F1 | trainable params | steps | process wall time |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['test']['acc']:.4f} | {r['test']['f1']:.4f} | {r['trainable_params']:,} "
              f"| {r['steps']} | {r['process_wall_seconds']:.0f} s |")
    (Path("logs") / "measure_default.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
