"""softprompt-bench: training-step time and memory of each method against PEFT, the frozen forward pass
and full fine-tuning, on the same backbone, batches and data.

    softprompt-bench [backbone=smollm2_135m] [methods=a,b] [data=synthetic,real] [batch_size=16] [seq_len=64]
        [num_virtual_tokens=20] [steps=5] [warmup=1] [device=cpu|gpu] [full_ft=true] [quantization=none,nf4]
        [out=DIR] [-- TRAIN OVERRIDES...]

    softprompt-bench                                   # every method on the offline default, CPU
    softprompt-bench methods=prompt_tuning data=real steps=9 out=logs/bench
    softprompt-bench backbone=tiny_random steps=2 warmup=1 -- task.max_length=64   # smoke
    softprompt-bench methods=prompt_tuning,prefix_tuning quantization=none,int8,nf4,int8_weight_only

Arguments after `--` are softprompt-train overrides for every job. Prints a markdown table; with `out`
also writes DIR/bench.json and DIR/bench.md. What is measured, and how: softprompt.analysis.benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence

from softprompt.analysis.benchmark import (  # light: torch imports when a run starts
    DATA_KINDS,
    PRECISION_OVERRIDES,
    Settings,
    preset_names,
    run_benchmark,
    write_benchmark,
)
from softprompt.cli.args import Key, Tool, boolean, choice, comma_list, integer, path, positive_int, text
from softprompt.config.quantization import SCHEMES
from softprompt.errors import SoftPromptError

TOOL = Tool("softprompt-bench", {
    "backbone": Key("backbone preset", text, default="smollm2_135m"),
    "methods": Key(f"comma-separated presets of conf/method/ (default: every preset that trains): "
                   f"{', '.join(preset_names())}", comma_list(*preset_names())),
    "data": Key("synthetic, real or both (comma-separated)", comma_list(*DATA_KINDS), default=",".join(DATA_KINDS)),
    "batch_size": Key("examples per step", positive_int, default=16),
    "seq_len": Key("synthetic tokens per example, before the prompt", positive_int, default=64),
    "num_virtual_tokens": Key("the prompt length", positive_int, default=20),
    "steps": Key("counted rounds", positive_int, default=5),
    "warmup": Key("uncounted rounds first", integer(0), default=1),
    "device": Key("cpu or gpu", choice("cpu", "gpu"), default="cpu"),
    "full_ft": Key("false skips full fine-tuning", boolean, default=True),
    "precision": Key("the frozen backbone's dtype for every runner: fp32, bf16, or auto (what training picks on "
                     "this machine)", choice(*PRECISION_OVERRIDES), default="auto"),
    "quantization": Key("comma-separated backbone.quantization schemes, each benchmarked in turn (PEFT on the same "
                        "quantised backbone)", comma_list(*SCHEMES), default="none"),
    "out": Key("write DIR/bench.json and DIR/bench.md", path),
}, takes_overrides=True)


def _listed(value: str | list[str]) -> list[str]:
    """A comma-list key's value: read (a list) when given, the declared default (a string or none) otherwise."""
    return value.split(",") if isinstance(value, str) else list(value or [])


def main(argv: Sequence[str] | None = None) -> int:
    """0 on success; a bad argument, or a benchmark that cannot run as asked, is one
    `softprompt-bench: error: ...` line and exit status 2."""
    args = TOOL.parse_or_exit(argv)
    settings = Settings(backbone=args["backbone"], methods=_listed(args["methods"]), data=_listed(args["data"]),
                        batch_size=args["batch_size"], seq_len=args["seq_len"],
                        num_virtual_tokens=args["num_virtual_tokens"], steps=args["steps"], warmup=args["warmup"],
                        device=args["device"], full_ft=args["full_ft"], precision=args["precision"],
                        overrides=args.overrides, quantizations=tuple(_listed(args["quantization"])))
    try:
        bench = run_benchmark(settings)
    except SoftPromptError as error:
        TOOL.fail(error)
    print(bench.table)
    if args["out"] is not None:
        json_path, md_path = write_benchmark(bench, settings, args["out"])
        print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    main()
