"""Exact resume after kill -9, trainable-only checkpoints whose size does not grow with the backbone, and
sweep reruns that skip finished jobs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from softprompt.errors import ConfigError
from softprompt.training.checkpointing import resume_checkpoint
from softprompt.training.module import TRAINABLE_KEYS, migrate_checkpoint_keys

# 48 training rows at batch 8: 6 steps per epoch, so step 4 is mid-epoch and step 12 is in epoch 2.
TRAIN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=12", "trainer.val_check_interval=4",
         "data.batch_size=8", "method.num_virtual_tokens=3"]


def final_prompt(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 12
    return state["state_dict"]["method.prompt"]


def test_a_run_killed_mid_epoch_resumes_to_the_same_final_metrics(tmp_path, train, local_task_overrides):
    args = [*TRAIN, *local_task_overrides]
    straight = train([*args, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    crashed_dir = tmp_path / "crashed"
    killer = ["+callbacks.kill._target_=kill_callback.KillAtStep", "+callbacks.kill.step=7"]
    crashed = train([*args, *killer, f"hydra.run.dir={crashed_dir}"], tmp_path)
    assert crashed.returncode == -signal.SIGKILL
    assert not (crashed_dir / "metrics.json").exists()
    assert torch.load(crashed_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4

    resumed = train([*args, f"hydra.run.dir={crashed_dir}"], tmp_path)  # ckpt_path=auto finds last.ckpt
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    got = json.loads((crashed_dir / "metrics.json").read_text())
    for key in ("val", "test", "steps", "best_step", "backbone_fingerprint_end"):
        assert got[key] == expected[key], key
    # The metrics above are identical; the prompt can differ in the last float bit (a fresh process's
    # kernels may sum in another order), so it is compared to float32 round-off.
    torch.testing.assert_close(final_prompt(crashed_dir), final_prompt(tmp_path / "straight"), rtol=0, atol=1e-6)
    # the best validation (step 4) ran before the kill: its predictions came back from last.ckpt
    for name in ("test_predictions.jsonl", "val_predictions.jsonl"):
        assert (crashed_dir / name).read_text() == (tmp_path / "straight" / name).read_text(), name


def test_ckpt_path_last_needs_a_checkpoint_and_null_starts_fresh(tmp_path):
    with pytest.raises(ConfigError) as raised:
        resume_checkpoint("last", tmp_path)
    assert str(raised.value).startswith("ckpt_path") and "checkpoints/last.ckpt" in str(raised.value)
    assert resume_checkpoint("auto", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "last.ckpt")
    assert resume_checkpoint("auto", tmp_path) == resume_checkpoint("last", tmp_path) == \
        str(tmp_path / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(None, tmp_path) is None


def test_a_checkpoint_of_the_earlier_layout_resumes_as_it_was_written(tmp_path, run_job, local_task_overrides):
    """Checkpoints written when the method itself was the LightningModule hold `prompt`, not `method.prompt`:
    resuming one moves its keys under `method.` and goes on exactly as from the same checkpoint in this layout."""
    args = ["backbone=tiny_random", "logger=none", "trainer.val_check_interval=2", "method.num_virtual_tokens=3",
            *local_task_overrides]
    run_job([*args, "trainer.max_steps=2"], tmp_path / "first")
    checkpoint = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    earlier = {**checkpoint, "state_dict": {k.removeprefix("method."): v for k, v in checkpoint["state_dict"].items()},
               TRAINABLE_KEYS: [k.removeprefix("method.") for k in checkpoint[TRAINABLE_KEYS]]}
    assert list(earlier["state_dict"]) == ["prompt"]
    torch.save(earlier, tmp_path / "earlier.ckpt")
    resumed = {name: run_job([*args, "trainer.max_steps=4", f"ckpt_path={path}"], tmp_path / name)
               for name, path in (("now", tmp_path / "first" / "checkpoints" / "last.ckpt"),
                                  ("earlier", tmp_path / "earlier.ckpt"))}
    assert resumed["earlier"]["steps"] == 4 and resumed["earlier"]["test"] == resumed["now"]["test"]
    ends = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for name in ("now", "earlier")]
    assert torch.equal(ends[0]["method.prompt"], ends[1]["method.prompt"])
    assert migrate_checkpoint_keys(earlier) and list(earlier["state_dict"]) == earlier[TRAINABLE_KEYS] == [
        "method.prompt"]
    assert not migrate_checkpoint_keys(earlier)  # moved once: a checkpoint in this layout is left alone


def test_checkpoint_size_does_not_depend_on_backbone_size(tmp_path, run_job, local_task_overrides):
    """Same hidden size (so the same prompt), 2 vs 8 layers and a 16x wider MLP: same checkpoint bytes."""
    sizes, backbone_bytes = {}, {}
    for layers, width in ((2, 64), (8, 1024)):
        run_dir = tmp_path / f"layers{layers}"
        metrics = run_job([*TRAIN, *local_task_overrides, "trainer.max_steps=4",
                           f"backbone.random_init.config.num_hidden_layers={layers}",
                           f"backbone.random_init.config.intermediate_size={width}"], run_dir)
        assert json.loads((run_dir / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
        sizes[layers] = (run_dir / "checkpoints" / "last.ckpt").stat().st_size
        backbone_bytes[layers] = 4 * metrics["total_params"]
    assert backbone_bytes[8] > 20 * backbone_bytes[2]
    assert abs(sizes[8] - sizes[2]) <= 64  # a few bytes of differing metadata at most
    assert sizes[8] < backbone_bytes[2] / 4  # far below even the small backbone


def test_resume_sweep_skips_finished_jobs_and_finishes_the_rest(tmp_path, train):
    sweep = tmp_path / "sweep"
    args = ["-m", *TRAIN, "trainer.max_steps=4", "data.max_samples={train: 32, validation: 16, test: 16}",
            "method.num_virtual_tokens=2,4", f"hydra.sweep.dir={sweep}"]
    first = train(args, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = (sweep / "0" / "metrics.json").read_text()
    (sweep / "1" / "metrics.json").unlink()  # job 1 "died" after its last checkpoint
    rerun = train([*args, "resume_sweep=true"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert log.count("is finished (metrics.json); skipping it") == 1
    assert (sweep / "0" / "metrics.json").read_text() == kept
    assert json.loads((sweep / "1" / "metrics.json").read_text())["num_virtual_tokens"] == 4
