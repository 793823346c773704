"""softprompt-export / softprompt-import: trained prompts to and from PEFT adapters.

    softprompt-export prompt=PATH format=peft out=DIR [force=true] [cache_dir=DIR]
    softprompt-import format=peft dir=DIR out=PROMPT_DIR [task=NAME] [backbone=PRESET_OR_PATH] [cache_dir=DIR]

A prompt or adapter the other format cannot represent is one line and exit status 2. See
softprompt.artifacts.peft for the mapping.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from softprompt.cli.args import CACHE_DIR, FORCE, PROMPT, Key, Tool, choice, existing, path

FORMATS = ("peft",)  # the formats softprompt.artifacts.peft writes, checked before torch loads
FORMAT = Key(f"the adapter format: {', '.join(FORMATS)}", choice(*FORMATS), required=True)
EXPORT = Tool("softprompt-export", {
    "prompt": PROMPT,
    "format": FORMAT,
    "out": Key("the (new or empty) folder to write the adapter into", path, required=True),
    "force": Key("true exports even if the backbone's fingerprint differs from the prompt's", FORCE.read,
                 default=False),
    "cache_dir": CACHE_DIR,
})
IMPORT = Tool("softprompt-import", {
    "format": FORMAT,
    "dir": Key("the adapter folder (adapter_config.json, adapter_model.safetensors)", existing(), required=True),
    "out": Key("the (new or empty) folder to write the prompt artifact into", path, required=True),
    "task": Key("a foreign adapter's task preset (conf/task/), for its template and verbalizer"),
    "backbone": Key("a foreign adapter's backbone: a preset (conf/backbone/) or a local model folder (default its "
                    "base_model_name_or_path)"),
    "cache_dir": CACHE_DIR,
})


def export_main(argv: Sequence[str] | None = None) -> None:
    args = EXPORT.parse_or_exit(argv)
    from softprompt.artifacts.peft import export_peft  # heavy: torch, transformers, peft
    from softprompt.errors import SoftPromptError

    try:
        out = export_peft(args["prompt"], args["out"], cache_dir=args["cache_dir"], force=args["force"])
    except SoftPromptError as error:
        EXPORT.fail(error)
    print(f"{EXPORT.prog}: {args['prompt']} -> {out} (PEFT adapter; PeftModel.from_pretrained(model, {str(out)!r}))")


def import_main(argv: Sequence[str] | None = None) -> None:
    args = IMPORT.parse_or_exit(argv)
    from softprompt.artifacts.peft import import_peft  # heavy: torch, transformers, peft
    from softprompt.errors import SoftPromptError

    try:
        out = import_peft(args["dir"], args["out"], task=args["task"], backbone=args["backbone"],
                          cache_dir=args["cache_dir"])
    except SoftPromptError as error:
        IMPORT.fail(error)
    print(f"{IMPORT.prog}: {args['dir']} -> {out} (softprompt.load({str(out)!r}))")


COMMANDS = {"export": export_main, "import": import_main}

if __name__ == "__main__":  # python -m softprompt.cli.exchange export|import key=value ...
    if sys.argv[1:2] and sys.argv[1] in COMMANDS:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    else:
        EXPORT.fail(f"the first argument is {' or '.join(COMMANDS)} ({EXPORT.prog}, {IMPORT.prog})")
