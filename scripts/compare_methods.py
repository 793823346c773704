"""Compare every method on the offline default (SmolLM2-135M, rotten_tomatoes), one run after another.

    python scripts/compare_methods.py                 # all rows below
    python scripts/compare_methods.py prompt_tuning hard_prompt_0shot   # a subset, by row name
    python scripts/compare_methods.py -- trainer.max_steps=10           # extra overrides for every row
    python scripts/compare_methods.py hard_prompt_0shot prefix_tuning -- task=bbc_headline   # generation

Each row is a whole `softprompt-train` process with the method's preset, timed from start to exit
(start-up, training, validation and test included). Prints a markdown table and writes
logs/compare_methods.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = {
    "hard_prompt_0shot": ["method=hard_prompt"],
    "hard_prompt_4shot": ["method=hard_prompt", "method.num_demonstrations=4"],
    "prompt_tuning": ["method=prompt_tuning"],
    "p_tuning": ["method=p_tuning"],
    "prefix_tuning": ["method=prefix_tuning"],
    "p_tuning_v2": ["method=p_tuning_v2"],
}


def timed_run(name: str, overrides: list[str], out_dir: Path) -> dict:
    run_dir = out_dir / name
    started = time.perf_counter()
    subprocess.run(["softprompt-train", *overrides, f"hydra.run.dir={run_dir}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    return {"row": name, "process_wall_seconds": round(wall, 1),
            **json.loads((run_dir / "metrics.json").read_text())}


def markdown_table(results: list[dict]) -> str:
    """One row per run: the selection metric on validation, then every test metric but the loss."""
    selection = results[0]["selection_metric"].removeprefix("val/")
    metrics = [k for k in results[0]["test"] if k != "loss"]
    lines = ["| row | trainable params | after folding | val " + selection + " | "
             + " | ".join(f"test {m}" for m in metrics) + " | steps | wall time |",
             "|---" * (6 + len(metrics)) + "|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['trainable_params']:,} | {r['folded_params']:,} | {r['val'][selection]:.4f} | "
                     + " | ".join(f"{r['test'][m]:.4f}" for m in metrics)
                     + f" | {r['steps']} | {r['process_wall_seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--") if "--" in args else len(args)
    names, extra = args[:split] or list(ROWS), args[split + 1:]
    out_dir = Path("logs") / "compare_methods" / time.strftime("%Y-%m-%d_%H-%M-%S")
    results = []
    for name in names:
        results.append(timed_run(name, [*ROWS[name], *extra], out_dir))
        print(f"done: {name}", file=sys.stderr, flush=True)
    print(markdown_table(results))
    (Path("logs") / "compare_methods.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
