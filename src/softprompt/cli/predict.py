"""softprompt-predict: predictions from a trained prompt (a run's `prompt/` folder) on a jsonl file.

    softprompt-predict prompt=PATH input=FILE.jsonl output=PREDS.jsonl [force=true] [batch_size=N] [cache_dir=DIR]

Each input line is a JSON object with the task's text field(s) (by field name, dataset column, or `text`)
or a JSON string. Each output line has the input's `row_index`, the `prediction` (a label name or the
generated text) and, for classification, `probabilities` ({label: p}).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softprompt.cli.args import CACHE_DIR, FORCE, PROMPT, Key, Tool, UsageError, existing, path, positive_int

TOOL = Tool("softprompt-predict", {
    "prompt": PROMPT,
    "input": Key("a jsonl file, one input per line", existing("file"), required=True),
    "output": Key("the jsonl file to write", path, required=True),
    "force": FORCE,
    "batch_size": Key("inputs per forward pass (default the run's data.eval_batch_size)", positive_int),
    "cache_dir": CACHE_DIR,
})


def read_inputs(file: Path) -> list[Any]:
    """The jsonl rows (blank lines skipped): objects or strings."""
    rows = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"input={str(file)!r} line {number} is not JSON ({error})") from None
        if not isinstance(row, dict | str):
            raise UsageError(f"input={str(file)!r} line {number} is a {type(row).__name__}; give an object with "
                             "the text field(s) or a string")
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = TOOL.parse_or_exit(argv)
    try:
        rows = read_inputs(args["input"])
    except UsageError as error:
        TOOL.fail(error)
    from softprompt.artifacts.predictor import load  # heavy: torch, transformers, lightning
    from softprompt.errors import SoftPromptError

    try:
        predictor = load(args["prompt"], force=args["force"], cache_dir=args["cache_dir"])
        if args["batch_size"]:
            predictor.batch_size = args["batch_size"]
        records = predictor.predict_records(rows)
    except SoftPromptError as error:
        TOOL.fail(error)
    output = args["output"]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(record) + "\n" for record in records))
    print(f"{TOOL.prog}: {len(records)} predictions ({predictor.method}, task {predictor.task.name}) -> {output}")


if __name__ == "__main__":
    main()
