"""The one argument style of the tools besides softprompt-train: `key=value`, as Hydra overrides are written.

    softprompt-predict prompt=runs/a/prompt input=reviews.jsonl output=preds.jsonl batch_size=16
    softprompt-report logs/train/multiruns/2026-12-01 rank_by=val/acc out=report/

A tool declares its keys (`Key`: help, how the value is read, whether it is required, its default) and, where
it takes them, bare positional values (report's sweep folders) and Hydra overrides after `--` (the
benchmark's). A bad argument is one `PROG: error: ...` line and exit status 2, before anything heavy imports.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


Reader = Callable[[str, str], Any]  # (key, raw value) -> value, or UsageError


def text(key: str, value: str) -> str:
    if not value:
        raise UsageError(f"{key}= is empty")
    return value


def boolean(key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise UsageError(f"{key}={value!r} is invalid: allowed: true, false")
    return lowered == "true"


def integer(minimum: int) -> Reader:
    def read(key: str, value: str) -> int:
        if not value.lstrip("-").isdigit() or int(value) < minimum:
            raise UsageError(f"{key}={value!r} is invalid: must be an integer >= {minimum}")
        return int(value)

    return read


positive_int = integer(1)


def existing(kind: str = "any") -> Reader:
    """A path that exists: `file`, `dir` or `any`."""
    def read(key: str, value: str) -> Path:
        path = Path(value).expanduser()
        found = {"file": path.is_file, "dir": path.is_dir, "any": path.exists}[kind]()
        if not found:
            what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]
            raise UsageError(f"{key}={value!r}: no such {what}")
        return path

    return read


def path(key: str, value: str) -> Path:
    return Path(text(key, value)).expanduser()


def choice(*allowed: str) -> Reader:
    def read(key: str, value: str) -> str:
        if value not in allowed:
            raise UsageError(f"{key}={value!r} is invalid: allowed: {', '.join(allowed)}")
        return value

    return read


def comma_list(*allowed: str) -> Reader:
    """Comma-separated values, each one of `allowed` (any non-empty value when none are given)."""
    def read(key: str, value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [item for item in items if allowed and item not in allowed]
        if not items or unknown:
            raise UsageError(f"{key}={value!r} is invalid: give a comma-separated list"
                             + (f" of {', '.join(allowed)}" if allowed else ""))
        return items

    return read


@dataclass(frozen=True)
class Key:
    help: str
    read: Reader = text
    required: bool = False
    default: Any = None


@dataclass
class Arguments:
    values: dict[str, Any]
    positional: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)  # after `--`

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value


@dataclass(frozen=True)
class Tool:
    prog: str
    keys: Mapping[str, Key]
    positional: str | None = None  # the name of bare values, when the tool takes them (one or more)
    takes_overrides: bool = False  # softprompt-train overrides after `--`

    def synopsis(self) -> str:
        """`PATH... key=... [key=...]`: the arguments, required first as declared."""
        parts = [f"{self.positional}..." if self.positional else "",
                 *(f"{k}=..." if key.required else f"[{k}=...]" for k, key in self.keys.items()),
                 "[-- OVERRIDES...]" if self.takes_overrides else ""]
        return " ".join(p for p in parts if p)

    def usage(self) -> str:
        lines = [f"usage: {self.prog} {self.synopsis()}"]
        width = max(len(k) for k in self.keys) + 2
        for name, key in self.keys.items():
            default = f" (default {key.default})" if key.default not in (None, False) else ""
            lines.append(f"  {name:<{width}}{key.help}{default}")
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> Arguments:
        """Parsed arguments; `-h`/`--help` prints the usage and exits 0; a bad one raises UsageError."""
        argv = list(argv)
        if any(arg in ("-h", "--help") for arg in argv):
            print(self.usage())
            sys.exit(0)
        overrides: list[str] = []
        if "--" in argv:
            if not self.takes_overrides:
                raise UsageError(f"{self.prog} takes no overrides after `--`")
            cut = argv.index("--")
            argv, overrides = argv[:cut], argv[cut + 1:]
        values: dict[str, Any] = {}
        positional: list[str] = []
        for arg in argv:
            key, sep, value = arg.partition("=")
            if sep and self.positional and ("/" in key or Path(arg).exists()):
                positional.append(arg)  # a path with `=` in it, such as a Hydra job dir named by its overrides
                continue
            if not sep or key.startswith("-"):
                if self.positional and not arg.startswith("-"):
                    positional.append(arg)
                    continue
                raise UsageError(f"expected key=value, got {arg!r} (keys: {', '.join(self.keys)})")
            if key not in self.keys:
                raise UsageError(f"unknown key {key!r}; allowed: {', '.join(self.keys)}")
            if key in values:
                raise UsageError(f"{key} is given twice")
            values[key] = self.keys[key].read(key, value)
        missing = [k for k, key in self.keys.items() if key.required and k not in values]
        if missing or (self.positional and not positional):
            needed = [*([f"{self.positional}..."] if self.positional and not positional else []),
                      *(f"{k}=..." for k in missing)]
            raise UsageError(f"missing {', '.join(needed)} ({self.synopsis()})")
        for k, key in self.keys.items():
            values.setdefault(k, key.default)
        return Arguments(values, positional, overrides)

    def fail(self, message: object) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    def parse_or_exit(self, argv: Sequence[str] | None) -> Arguments:
        try:
            return self.parse(sys.argv[1:] if argv is None else argv)
        except UsageError as error:
            self.fail(error)


CACHE_DIR = Key("prepared offline assets (default $SOFTPROMPT_CACHE or ~/.cache/softprompt)", path)
FORCE = Key("true loads the prompt on a backbone whose fingerprint differs", boolean, default=False)
PROMPT = Key("the trained prompt: a run's prompt/ folder (or the run folder)", existing(), required=True)
TASK = Key("the task to predict for, when the prompt was trained on a task mixture", text)
