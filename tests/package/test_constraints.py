"""constraints.txt, which the README's setup (and so CI) installs with, pins every requirement of softprompt and
its extras (dev, peft, quant) to a version its range in pyproject.toml allows."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_requirement_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [Requirement(line) for line in [*project["dependencies"],
                                                   *(line for group in extras.values() for line in group)]]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canonical(name)] = Version(version)
    for requirement in requirements:
        if _canonical(requirement.name) == "softprompt":
            continue
        pinned = pins.get(_canonical(requirement.name))
        assert pinned is not None, f"constraints.txt lacks {requirement.name}: rerun scripts/freeze_constraints.py"
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)


def test_the_readme_setup_installs_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("<!-- ci:setup -->", 1)[1].split("```")[1]
    assert '-c constraints.txt' in setup and "torch==2.13.0" in setup
