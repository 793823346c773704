"""softprompt-bench's arguments: the declared keys and their defaults reach the benchmark, train overrides after
`--` too, and a bad argument fails in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt.analysis.benchmark import DATA_KINDS, Benchmark, Settings
from softprompt.cli import bench
from softprompt.cli.bench import main
from softprompt.config.compose import config_dir

CONF = Path(config_dir())


@pytest.fixture
def settings_seen(monkeypatch) -> list[Settings]:
    """The Settings main hands to the benchmark, which is not run."""
    seen: list[Settings] = []

    def fake_run(settings: Settings) -> Benchmark:
        seen.append(settings)
        return Benchmark("header", "CPU", table="table\n")

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    return seen


def test_the_defaults_are_the_declared_keys(settings_seen, capsys):
    assert main([]) == 0
    assert settings_seen == [Settings(backbone="smollm2_135m", methods=[], data=list(DATA_KINDS),
                                      batch_size=16, seq_len=64, num_virtual_tokens=20, steps=5, warmup=1,
                                      device="cpu", precision="auto", full_ft=True, overrides=[])]
    assert capsys.readouterr().out == "table\n\n"


def test_keys_and_train_overrides_reach_the_benchmark(settings_seen):
    assert main(["methods=p_tuning", "data=real", "full_ft=false", "warmup=0", "device=gpu", "--",
                 "task.max_length=64", "optimizer.lr=0.1"]) == 0
    (settings,) = settings_seen
    assert (settings.methods, settings.data, settings.full_ft, settings.warmup, settings.device) == (
        ["p_tuning"], ["real"], False, 0, "gpu")
    assert settings.overrides == ["task.max_length=64", "optimizer.lr=0.1"]


@pytest.mark.parametrize(("argv", "message"), [
    (["methods=prompt_tuning,lora"], "methods='prompt_tuning,lora' is invalid: give a comma-separated list of "
                                     + ", ".join(sorted(p.stem for p in (CONF / "method").glob("*.yaml")))),
    (["data=fake"], "data='fake' is invalid: give a comma-separated list of synthetic, real"),
    (["steps=0"], "steps='0' is invalid: must be an integer >= 1"),
    (["batch_size=0"], "batch_size='0' is invalid: must be an integer >= 1"),
    (["warmup=-1"], "warmup='-1' is invalid: must be an integer >= 0"),
    (["device=tpu"], "device='tpu' is invalid: allowed: cpu, gpu"),
    (["--steps", "2"], "expected key=value, got '--steps' (keys: backbone, methods, data, batch_size, seq_len, "
                       "num_virtual_tokens, steps, warmup, device, full_ft, precision, quantization, out)"),
    (["--no-full-ft"], "expected key=value, got '--no-full-ft' (keys: backbone, methods, data, batch_size, "
                       "seq_len, num_virtual_tokens, steps, warmup, device, full_ft, precision, quantization, out)"),
    (["task.max_length=64"], "unknown key 'task.max_length'; allowed: backbone, methods, data, batch_size, seq_len, "
                             "num_virtual_tokens, steps, warmup, device, full_ft, precision, quantization, out"),
])
def test_bad_arguments_fail_in_one_line(argv, message, settings_seen, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"softprompt-bench: error: {message}\n"
    assert not settings_seen


def test_gpu_without_cuda_fails_in_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["device=gpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"softprompt-bench: error: device=gpu, but CUDA is not available "
                                       f"(torch {torch.__version__})\n")
