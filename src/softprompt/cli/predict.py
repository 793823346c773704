"""softprompt-predict: predictions from a trained prompt (a run's `prompt/` folder) on a jsonl file.

    softprompt-predict prompt=PATH input=FILE.jsonl output=PREDS.jsonl [force=true] [batch_size=N] [cache_dir=DIR]
                       [task=NAME]   (a prompt trained on a task mixture: which task)
                       [quantization=SCHEME]   (another backbone.quantization than the prompt's)

Each input line is a JSON object with the task's text field(s) (by field name, dataset column, or `text`) or a
JSON string; a text value must be a string (null, numbers and lists are refused). The file is UTF-8, a
byte-order mark allowed (as training reads data files). Each output line has the input's `row_index`, the
`prediction` (a label name or the generated text) and, for classification, `probabilities` ({label: p}).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from softprompt.cli.args import CACHE_DIR, FORCE, PROMPT, TASK, Key, Tool, UsageError, existing, path, positive_int

TOOL = Tool("softprompt-predict", {
    "prompt": PROMPT,
    "input": Key("a jsonl file, one input per line", existing("file"), required=True),
    "output": Key("the jsonl file to write", path, required=True),
    "force": FORCE,
    "batch_size": Key("inputs per forward pass (default the run's data.eval_batch_size)", positive_int),
    "cache_dir": CACHE_DIR,
    "task": TASK,
    "quantization": Key("the backbone.quantization to predict on (default the one the prompt was trained on; "
                        "another is said in one line and recorded in each output line)"),
})


def read_inputs(file: Path) -> list[tuple[int, Any]]:
    """(line number, row) for each jsonl row (blank lines skipped): objects or strings. A line that is not one,
    or a file with none, is one line naming `file:line`."""
    rows = []
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is no content
    except UnicodeDecodeError as error:
        raise UsageError(f"input={str(file)!r} is not UTF-8 text ({error})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"input {file}:{number} is not JSON ({error}); expected one JSON object (or string) "
                             "per line") from None
        if not isinstance(row, dict | str):
            raise UsageError(f"input {file}:{number} is a JSON {type(row).__name__}; expected an object with the "
                             "text field(s), or a string")
        rows.append((number, row))
    if not rows:
        raise UsageError(f"input={str(file)!r} holds no inputs (it is empty or blank); expected one JSON object "
                         "per line")
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = TOOL.parse_or_exit(argv)
    try:
        numbered = read_inputs(args["input"])
    except UsageError as error:
        TOOL.fail(error)
    from softprompt.artifacts.predictor import load  # heavy: torch, transformers, lightning
    from softprompt.config.atomic import atomic_write_text
    from softprompt.errors import SoftPromptError

    file = args["input"]
    try:
        predictor = load(args["prompt"], force=args["force"], cache_dir=args["cache_dir"], task=args["task"],
                         quantization=args["quantization"])
        if args["batch_size"]:
            predictor.batch_size = args["batch_size"]
        for number, row in numbered:  # every input checked before the first prediction
            predictor.example(row, f"input {file}:{number}")
        records = predictor.predict_records([row for _, row in numbered])
    except SoftPromptError as error:
        TOOL.fail(error)
    output = args["output"]
    # Written whole or not at all: a killed or failed run leaves no partial predictions file.
    atomic_write_text(output, "".join(json.dumps(record) + "\n" for record in records))
    print(f"{TOOL.prog}: {len(records)} predictions ({predictor.method}, task {predictor.task.name}) -> {output}")


if __name__ == "__main__":
    main()
