"""softprompt-predict: predictions from a trained prompt (a run's `prompt/` folder) on a jsonl file.

    softprompt-predict prompt=PATH input=FILE.jsonl output=PREDS.jsonl [force=true] [batch_size=N] [cache_dir=DIR]

Each input line is a JSON object with the task's text field(s) (by field name, dataset column, or `text`)
or a JSON string. Each output line has the input's `row_index`, the `prediction` (a label name or the
generated text) and, for classification, `probabilities` ({label: p}). Arguments are `key=value`, as in
softprompt-train; a bad argument is reported as one line and exit status 2. The heavy imports (torch,
transformers) wait until the arguments are checked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

PROG = "softprompt-predict"
PREDICT_KEYS = {
    "prompt": "the trained prompt: a run's prompt/ folder (or the run folder)",
    "input": "a jsonl file, one input per line",
    "output": "the jsonl file to write",
    "force": "true loads the prompt on a backbone whose fingerprint differs (default false)",
    "batch_size": "inputs per forward pass (default the run's data.eval_batch_size)",
    "cache_dir": "prepared offline assets (default $SOFTPROMPT_CACHE or ~/.cache/softprompt)",
}
PREDICT_REQUIRED = ("prompt", "input", "output")


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


def usage(prog: str, keys: Mapping[str, str], required: Sequence[str]) -> str:
    lines = [f"usage: {prog} {usage_hint(keys, required)}"]
    lines += [f"  {key:<11} {help_text}" for key, help_text in keys.items()]
    return "\n".join(lines)


def parse_key_values(argv: Sequence[str], keys: Mapping[str, str], required: Sequence[str]) -> dict[str, str]:
    """`key=value` arguments, each key known and given at most once, the required ones present."""
    values: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"expected key=value, got {arg!r} (keys: {', '.join(keys)})")
        if key not in keys:
            raise UsageError(f"unknown key {key!r}; allowed: {', '.join(keys)}")
        if key in values:
            raise UsageError(f"{key} is given twice")
        values[key] = value
    missing = [key for key in required if not values.get(key)]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)} ({usage_hint(keys, required)})")
    return values


def usage_hint(keys: Mapping[str, str], required: Sequence[str]) -> str:
    return " ".join(f"{k}=..." if k in required else f"[{k}=...]" for k in keys)


def parse_bool(key: str, value: str | None, default: bool = False) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise UsageError(f"{key}={value!r} is invalid: allowed: true, false")
    return lowered == "true"


def parse_positive_int(key: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{key}={value!r} is invalid: must be an integer >= 1")
    return int(value)


def existing_path(key: str, value: str, is_file: bool = False) -> Path:
    path = Path(value).expanduser()
    if not (path.is_file() if is_file else path.exists()):
        raise UsageError(f"{key}={value!r}: no such {'file' if is_file else 'file or folder'}")
    return path


def fail(prog: str, message: object) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def handle_help(argv: Sequence[str], prog: str, keys: Mapping[str, str], required: Sequence[str]) -> None:
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(prog, keys, required))
        sys.exit(0)


def read_inputs(path: Path) -> list[Any]:
    """The jsonl rows (blank lines skipped): objects or strings."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"input={str(path)!r} line {number} is not JSON ({error})") from None
        if not isinstance(row, dict | str):
            raise UsageError(f"input={str(path)!r} line {number} is a {type(row).__name__}; give an object with "
                             "the text field(s) or a string")
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    handle_help(argv, PROG, PREDICT_KEYS, PREDICT_REQUIRED)
    try:
        args = parse_key_values(argv, PREDICT_KEYS, PREDICT_REQUIRED)
        prompt = existing_path("prompt", args["prompt"])
        rows = read_inputs(existing_path("input", args["input"], is_file=True))
        force = parse_bool("force", args.get("force"))
        batch_size = parse_positive_int("batch_size", args.get("batch_size"))
    except UsageError as error:
        fail(PROG, error)
    from softprompt.artifacts import load  # heavy: torch, transformers, lightning
    from softprompt.errors import SoftPromptError

    try:
        predictor = load(prompt, force=force, cache_dir=args.get("cache_dir"))
        if batch_size:
            predictor.batch_size = batch_size
        records = predictor.predict_records(rows)
    except SoftPromptError as error:
        fail(PROG, error)
    output = Path(args["output"]).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(record) + "\n" for record in records))
    print(f"{PROG}: {len(records)} predictions ({predictor.method}, task {predictor.task['name']}) -> {output}")


if __name__ == "__main__":
    main()
