"""softprompt-export / softprompt-import: trained prompts to and from PEFT adapters.

    softprompt-export prompt=PATH format=peft out=DIR [force=true] [cache_dir=DIR]
    softprompt-import format=peft dir=DIR out=PROMPT_DIR [task=NAME] [backbone=PRESET_OR_PATH] [cache_dir=DIR]

Arguments are `key=value`, as in softprompt-predict; a bad argument, or a prompt or adapter the other
format cannot represent, is one line and exit status 2. The heavy imports wait until the arguments are
checked. See softprompt.peft_interop for the mapping.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from softprompt.predict import UsageError, existing_path, fail, handle_help, parse_bool, parse_key_values

FORMATS = ("peft",)  # softprompt.peft_interop.FORMATS, kept here so a bad format fails before torch loads
CACHE_HELP = "prepared offline assets (default $SOFTPROMPT_CACHE or ~/.cache/softprompt)"
EXPORT_PROG = "softprompt-export"
EXPORT_KEYS = {
    "prompt": "the trained prompt: a run's prompt/ folder (or the run folder)",
    "format": f"the adapter format: {', '.join(FORMATS)}",
    "out": "the (new or empty) folder to write the adapter into",
    "force": "true exports even if the backbone's fingerprint differs from the prompt's (default false)",
    "cache_dir": CACHE_HELP,
}
EXPORT_REQUIRED = ("prompt", "format", "out")
IMPORT_PROG = "softprompt-import"
IMPORT_KEYS = {
    "format": f"the adapter format: {', '.join(FORMATS)}",
    "dir": "the adapter folder (adapter_config.json, adapter_model.safetensors)",
    "out": "the (new or empty) folder to write the prompt artifact into",
    "task": "a foreign adapter's task preset (conf/task/), for its template and verbalizer",
    "backbone": "a foreign adapter's backbone: a preset (conf/backbone/) or a local model folder "
                "(default its base_model_name_or_path)",
    "cache_dir": CACHE_HELP,
}
IMPORT_REQUIRED = ("format", "dir", "out")


def parse_format(value: str) -> str:
    if value not in FORMATS:
        raise UsageError(f"format={value!r} is invalid: allowed: {', '.join(FORMATS)}")
    return value


def export_main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    handle_help(argv, EXPORT_PROG, EXPORT_KEYS, EXPORT_REQUIRED)
    try:
        args = parse_key_values(argv, EXPORT_KEYS, EXPORT_REQUIRED)
        parse_format(args["format"])
        prompt = existing_path("prompt", args["prompt"])
        force = parse_bool("force", args.get("force"))
    except UsageError as error:
        fail(EXPORT_PROG, error)
    from softprompt.errors import SoftPromptError
    from softprompt.peft_interop import export_peft  # heavy: torch, transformers, peft

    try:
        out = export_peft(prompt, args["out"], cache_dir=args.get("cache_dir"), force=force)
    except SoftPromptError as error:
        fail(EXPORT_PROG, error)
    print(f"{EXPORT_PROG}: {prompt} -> {out} (PEFT adapter; PeftModel.from_pretrained(model, {str(out)!r}))")


def import_main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    handle_help(argv, IMPORT_PROG, IMPORT_KEYS, IMPORT_REQUIRED)
    try:
        args = parse_key_values(argv, IMPORT_KEYS, IMPORT_REQUIRED)
        parse_format(args["format"])
        directory = existing_path("dir", args["dir"])
    except UsageError as error:
        fail(IMPORT_PROG, error)
    from softprompt.errors import SoftPromptError
    from softprompt.peft_interop import import_peft  # heavy: torch, transformers, peft

    try:
        out = import_peft(directory, Path(args["out"]), task=args.get("task"), backbone=args.get("backbone"),
                          cache_dir=args.get("cache_dir"))
    except SoftPromptError as error:
        fail(IMPORT_PROG, error)
    print(f"{IMPORT_PROG}: {directory} -> {out} (softprompt.load({str(out)!r}))")


COMMANDS = {"export": export_main, "import": import_main}

if __name__ == "__main__":  # python -m softprompt.exchange export|import key=value ...
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    else:
        fail("softprompt.exchange", f"the first argument is {' or '.join(COMMANDS)} ({EXPORT_PROG}, {IMPORT_PROG})")
