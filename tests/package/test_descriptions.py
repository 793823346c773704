"""The words that introduce the package (its PyPI description, the docs site's description, the docs' first
paragraph) name what it does today: as many methods as conf/method/ holds."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from softprompt.methods import preset_classes

ROOT = Path(__file__).resolve().parents[2]
NUMBER_WORDS = {8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve", 13: "thirteen", 14: "fourteen"}


def trained_methods() -> int:
    """Presets that train a prompt (the hard-prompt baseline trains nothing)."""
    return sum(cls.trains for cls in preset_classes().values())


def test_the_package_and_site_descriptions_count_every_trained_method_and_the_baseline():
    claim = f"{NUMBER_WORDS[trained_methods()]} methods and a hard-prompt baseline"
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["description"]
    site = yaml.safe_load((ROOT / "mkdocs.yml").read_text().split("\nnav:")[0])["site_description"]
    assert claim in package
    assert claim in site


def test_the_docs_first_paragraph_names_the_four_original_methods_and_six_later_ones():
    first = (ROOT / "docs" / "index.md").read_text().split("\n\n")[1]
    named = ["prompt tuning", "P-tuning", "prefix tuning", "P-tuning v2", "residual prompt tuning", "DePT",
             "late prompt tuning", "adaption prompt", "multitask prompt tuning", "Cartridges", "hard-prompt"]
    assert [name for name in named if name not in " ".join(first.split())] == []
    assert len(named) - 1 == trained_methods()
