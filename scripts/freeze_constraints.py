"""Write constraints.txt: the installed version of every package softprompt[dev] needs, directly or not.

Run it after the suite passed (`python -m pytest`) in the environment the README's setup made; CI then installs
exactly these versions, so a green CI names the combination it tested:

    python scripts/freeze_constraints.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

ROOT = "softprompt"
EXTRAS = {"dev", "peft"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """{canonical name: installed version} of `root`'s requirements (with `extras`) and theirs, transitively."""
    found: dict[str, str] = {}
    todo = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (canonical(name), wanted) in seen:
            continue
        seen.add((canonical(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional requirement of another platform or Python
        if canonical(name) != ROOT:
            found[canonical(name)] = dist.version.split("+")[0]  # torch 2.13.0+cpu: the CUDA build matches too
        for line in dist.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in (wanted or {""})):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return found


def main() -> None:
    pins = closure(ROOT, EXTRAS)
    print("# The versions the test suite last passed with (scripts/freeze_constraints.py; Python "
          f"{sys.version_info.major}.{sys.version_info.minor}, CPU torch). Used by the README's setup and CI:")
    print('#   pip install torch==2.13.0 && pip install -e ".[dev]" -c constraints.txt')
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")


if __name__ == "__main__":
    main()
