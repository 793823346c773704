"""scripts/gpu_check.py: on a machine without CUDA, exit status 2 and one clear line; with CUDA, one quick
check on the tiny backbone passes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_script(tmp_path, local_task_overrides):
    """Without CUDA: exit status 2 and one clear line. With CUDA: one quick check on the tiny backbone passes."""
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--backbone", "tiny_random", "--checks",
               "bf16_mixed", "--out", str(tmp_path / "out"), "--", *local_task_overrides]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if not torch.cuda.is_available():
        assert result.returncode == 2
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            f"gpu_check: error: CUDA is not available (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}); run this on a machine with a CUDA GPU"]
        assert not (tmp_path / "out").exists()
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [check] = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["results"]
        assert check["ok"] and check["stats"]["backbone_dtypes"] == ["bfloat16"] and check["peak_cuda_mib"] > 0
