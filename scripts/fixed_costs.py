"""Per-job fixed costs, measured side by side in interleaved rounds on the default backbone.

    python scripts/fixed_costs.py --rounds 5 --out logs/fixed_costs.json

- fingerprint: one fingerprint of the frozen weights with xxh3-128 (ours), blake2b (before) and sha256;
- generation evaluation on bbc_headline: the teacher-forced loss pass and `generate()` separately (before)
  against one shared prefill (`score_and_generate`, ours), on the same validation batches, with a check that
  both give the same tokens.

Prints a markdown table (median, min, max seconds per call) and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import xxhash
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from softprompt.backbones.loading import tied_aliases
from softprompt.config.compose import compose_train
from softprompt.training.job import build_job
from softprompt.training.job_config import parse_job


def digest_weights(model: torch.nn.Module, make) -> str:
    digest, skip = make(), tied_aliases(model)
    for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
        if name in skip:
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    return digest.hexdigest()


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eval-batches", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("logs/fixed_costs.json"))
    args = parser.parse_args()
    cfg = compose_train(["task=bbc_headline", "logger=none", "callbacks=none", "data.eval_batch_size=16",
                         f"data.max_samples.validation={16 * args.eval_batches}"], return_hydra_config=True)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = cfg.hydra.runtime.output_dir = "/tmp/fixed_costs"
    HydraConfig.instance().set_config(cfg)
    job = build_job(parse_job(cfg))
    model, module = job.backbone.model, job.module.eval()
    job.datamodule.setup("validate")
    batches = list(job.datamodule.val_dataloader())[:args.eval_batches]
    objective = module.objective

    def separate() -> list:
        out = []
        for batch in batches:
            with torch.no_grad():
                module.target_hidden(batch)
            out.append(module.generate(batch, objective.decoding, objective.eos_token_id))
        return out

    def shared() -> list:
        return [module.score_and_generate(batch, objective.decoding, objective.eos_token_id)[1] for batch in batches]

    assert separate() == shared(), "the shared prefill decoded other tokens"
    cases = {"fingerprint xxh3-128 (ours)": lambda: digest_weights(model, xxhash.xxh3_128),
             "fingerprint blake2b (before)": lambda: digest_weights(model, lambda: hashlib.blake2b(digest_size=16)),
             "fingerprint sha256": lambda: digest_weights(model, hashlib.sha256),
             f"generation eval, {len(batches)} batches of 16: loss pass + generate (before)": separate,
             f"generation eval, {len(batches)} batches of 16: shared prefill (ours)": shared}
    seconds = {name: [] for name in cases}
    for round_index in range(args.rounds):
        order = list(cases) if round_index % 2 == 0 else list(reversed(cases))
        for name in order:
            seconds[name].append(timed(cases[name]))
    rows = [{"case": name, "median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "seconds": s}
            for name, s in seconds.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                    "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                                    "backbone": job.backbone.name, "dtype": str(model.dtype), "rows": rows}, indent=1))
    print(f"backbone {job.backbone.name} ({model.dtype}), {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} torch threads\n")
    print("| case | median s | min s | max s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['case']} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} |")


if __name__ == "__main__":
    main()
