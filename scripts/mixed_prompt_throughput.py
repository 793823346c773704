"""Throughput of mixed-prompt batches against running each prompt alone, on the same inputs.

    python scripts/mixed_prompt_throughput.py sentiment=RUN_A/prompt topic=RUN_B/prompt [...] \\
        --examples 100 --request-sizes 8,100 --repeats 5 --out logs/mixed_prompt_throughput.json

Each prompt gets `--examples` inputs from its task's offline test split (conf/task/<task>.yaml; the
artifact records the task name). For each request size m, the inputs are served in rounds: every round
takes the next m inputs of every prompt and runs them either as ONE mixed call
(`MixedPredictor.probabilities`, K x m rows) or as K calls of the prompts alone (`Predictor.probabilities`,
m rows each), both at the same batch size. The two modes alternate within every repeat (the order flips
each repeat) so load from other processes hits both alike. Reports the median wall time of a full pass
(min and max too) and examples/s, checks that both modes agree (labels, and the largest probability
difference), prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

import softprompt
from softprompt.artifacts.format import default_cache_dir
from softprompt.config.compose import config_dir
from softprompt.data.sources import asset_data_files


def task_texts(task_name: str, count: int) -> list[str]:
    """The first `count` inputs of an offline task's test split (its text column)."""
    task = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "task" / f"{task_name}.yaml"), resolve=True)
    if not task["source"].get("asset"):
        raise SystemExit(f"task {task_name} has no offline asset; this script reads offline test splits only")
    path = asset_data_files(task["source"], default_cache_dir())["test"]
    column = task["columns"]["text"]
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()[:count]]
    if len(rows) < count:
        raise SystemExit(f"task {task_name}'s test split has {len(rows)} rows; --examples={count} is too many")
    return [row[column] for row in rows]


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("prompts", nargs="+", help="NAME=PATH of each artifact (a run's prompt/ folder)")
    parser.add_argument("--examples", type=int, default=100, help="inputs per prompt")
    parser.add_argument("--request-sizes", default="8,100", help="comma-separated inputs per prompt per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="logs/mixed_prompt_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = dict(item.split("=", 1) for item in args.prompts)
    if len(paths) < 2 or any(not name or not path for name, path in paths.items()):
        raise SystemExit("give at least two NAME=PATH prompts")
    sizes = [int(s) for s in args.request_sizes.split(",")]

    started = time.perf_counter()
    mixed = softprompt.load_many(paths, batch_size=args.batch_size)
    load_seconds = time.perf_counter() - started
    for predictor in mixed.predictors:
        predictor.batch_size = args.batch_size
    names = mixed.names
    texts = {name: task_texts(mixed.predictor(name).task.name, args.examples) for name in names}
    total = len(names) * args.examples

    def run_mixed(size: int) -> list:
        out: dict[str, list] = {name: [] for name in names}
        for start in range(0, args.examples, size):
            rows = [(name, text) for name in names for text in texts[name][start:start + size]]
            probs = mixed.probabilities([t for _, t in rows], [n for n, _ in rows])
            for (name, _), p in zip(rows, probs, strict=True):
                out[name].append(p)
        return [p for name in names for p in out[name]]

    def run_alone(size: int) -> list:
        out: dict[str, list] = {name: [] for name in names}
        for start in range(0, args.examples, size):
            for name in names:
                out[name] += mixed.predictor(name).probabilities(texts[name][start:start + size])
        return [p for name in names for p in out[name]]

    modes = {"mixed": run_mixed, "alone": run_alone}
    run_mixed(4), run_alone(4)  # warm-up
    results = []
    for size in sizes:
        seconds: dict[str, list[float]] = {"mixed": [], "alone": []}
        outputs = {}
        for repeat in range(args.repeats):
            order = ("mixed", "alone") if repeat % 2 == 0 else ("alone", "mixed")
            for mode in order:
                elapsed, outputs[mode] = timed(lambda mode=mode, size=size: modes[mode](size))
                seconds[mode].append(elapsed)
                print(f"request size {size}, repeat {repeat + 1}/{args.repeats}, {mode}: {elapsed:.2f} s",
                      file=sys.stderr, flush=True)
        diff = max(abs(a - b) for pm, pa in zip(outputs["mixed"], outputs["alone"], strict=True)
                   for a, b in zip(pm, pa, strict=True))
        agree = sum(max(range(len(pm)), key=pm.__getitem__) == max(range(len(pa)), key=pa.__getitem__)
                    for pm, pa in zip(outputs["mixed"], outputs["alone"], strict=True))
        for mode, values in seconds.items():
            median = statistics.median(values)
            results.append({"request_size": size, "mode": mode, "median_s": median, "min_s": min(values),
                            "max_s": max(values), "examples_per_s": total / median, "seconds": values})
        results[-2]["speedup_vs_alone"] = results[-1]["median_s"] / results[-2]["median_s"]
        results[-2]["max_abs_prob_diff"], results[-2]["labels_agree"] = diff, f"{agree}/{total}"

    described = ", ".join(f"{n}: {mixed.predictor(n).method} on {mixed.predictor(n).task.name}" for n in names)
    lines = [f"{len(names)} prompts ({described}), "
             f"{args.examples} inputs each, batch size {args.batch_size}, {args.repeats} repeats, "
             f"{args.threads} threads",
             "", "| inputs per prompt per call | mode | median s (min-max) | examples/s | speedup | agreement |",
             "|---|---|---|---|---|---|"]
    for r in results:
        extra = (f"{r['speedup_vs_alone']:.2f}x | labels {r['labels_agree']}, max prob diff "
                 f"{r['max_abs_prob_diff']:.1e}") if r["mode"] == "mixed" else "1.00x | -"
        lines.append(f"| {r['request_size']} | {r['mode']} | {r['median_s']:.2f} ({r['min_s']:.2f}-{r['max_s']:.2f}) "
                     f"| {r['examples_per_s']:.1f} | {extra} |")
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": args.threads,
                    "torch": torch.__version__},
        "prompts": {n: {"path": str(paths[n]), "method": mixed.predictor(n).method,
                        "task": mixed.predictor(n).task.name,
                        "num_virtual_tokens": mixed.predictor(n).spec["num_virtual_tokens"]} for n in names},
        "examples_per_prompt": args.examples, "batch_size": args.batch_size, "repeats": args.repeats,
        "load_seconds": load_seconds, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
