"""softprompt-inspect: what a trained prompt's vectors look like.

    softprompt-inspect prompt=PATH [top_k=5] [force=true] [cache_dir=DIR] [task=NAME]
"""

from __future__ import annotations

from collections.abc import Sequence

from softprompt.cli.args import CACHE_DIR, FORCE, PROMPT, TASK, Key, Tool, positive_int

TOOL = Tool("softprompt-inspect", {
    "prompt": PROMPT,
    "top_k": Key("nearest vocabulary tokens per virtual token", positive_int, default=5),
    "force": FORCE,
    "cache_dir": CACHE_DIR,
    "task": TASK,
})


def main(argv: Sequence[str] | None = None) -> None:
    args = TOOL.parse_or_exit(argv)
    from softprompt.artifacts.inspect import describe, inspection_task  # heavy: torch, transformers
    from softprompt.artifacts.predictor import load
    from softprompt.errors import SoftPromptError

    try:
        task = inspection_task(args["prompt"], args["task"])
        predictor = load(args["prompt"], force=args["force"], cache_dir=args["cache_dir"], task=task)
    except SoftPromptError as error:
        TOOL.fail(error)
    print("\n".join(describe(predictor, args["top_k"])))


if __name__ == "__main__":
    main()
