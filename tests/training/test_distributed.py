"""DDP and FSDP on CPU processes (gloo): one output dir, the same prompt as one process at the same global
batch, metrics synchronised exactly across uneven shards, and a frozen backbone DDP never touches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from softprompt.training.distributed import keep_frozen_out_of_ddp
from softprompt.training.run import run

# 48 training rows: 2 processes x batch 4 and 1 process x batch 8 take the same examples per step;
# 9 test rows split 5/4 between the processes.
STEPS = ["trainer.max_steps=10", "trainer.val_check_interval=5", "data.max_samples.test=9",
         "data.eval_batch_size=2", "method.num_virtual_tokens=3"]


def last_prompt(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 10
    assert set(state["state_dict"]) == {"method.prompt"}  # gathered from the shards under FSDP; never the backbone
    return state["state_dict"]["method.prompt"]


@pytest.mark.xdist_group("distributed")  # two training processes each: one such test at a time
@pytest.mark.parametrize("preset", ["ddp_cpu", "fsdp_cpu"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, make_cfg, local_task_overrides,
                                                                    softprompt_train, preset):
    task = local_task_overrides
    one = run(make_cfg(["backbone=tiny_random", "callbacks=default", *task, *STEPS, "data.batch_size=8"],
                       output_dir=tmp_path / "one"))

    work = tmp_path / "work"
    work.mkdir()
    ddp_dir = tmp_path / "ddp"
    result = softprompt_train(f"trainer={preset}", "trainer.devices=2", "backbone=tiny_random", "logger=csv", *task,
                              *STEPS, "data.batch_size=4", f"hydra.run.dir={ddp_dir}", cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr

    torch.testing.assert_close(last_prompt(ddp_dir), last_prompt(tmp_path / "one"), rtol=0, atol=1e-5)
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["test"]["acc"] == one["test"]["acc"] and ddp["val"]["acc"] == one["val"]["acc"]
    assert abs(ddp["test"]["loss"] - one["test"]["loss"]) < 1e-5  # example-weighted over uneven shares
    rows = [[json.loads(line) for line in (run_dir / "test_predictions.jsonl").read_text().splitlines()]
            for run_dir in (ddp_dir, tmp_path / "one")]
    assert len(rows[0]) == 9  # both shares, once each, in dataset order
    assert [(r["row_index"], r["prediction"]) for r in rows[0]] == [(r["row_index"], r["prediction"]) for r in rows[1]]
    val_rows = [[json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
                for run_dir in (ddp_dir, tmp_path / "one")]  # the best pass's, gathered from both processes
    assert [(r["row_index"], r["prediction"]) for r in val_rows[0]] == \
        [(r["row_index"], r["prediction"]) for r in val_rows[1]]
    assert sorted({r["row_index"] for r in val_rows[0]}) == [r["row_index"] for r in val_rows[0]]
    assert ddp["backbone_fingerprint_start"] == ddp["backbone_fingerprint_end"] == one["backbone_fingerprint_end"]
    # the artifact holds the whole prompt (FSDP shards gathered), the one the test stage used
    torch.testing.assert_close(load_file(ddp_dir / "prompt" / "softprompt.safetensors")["prompt"],
                               load_file(tmp_path / "one" / "prompt" / "softprompt.safetensors")["prompt"],
                               rtol=0, atol=1e-5)
    # one output dir: the worker ran this job in it (its own log), no second .hydra, nothing in cwd
    assert sorted(p.name for p in ddp_dir.iterdir()) == [".hydra", "checkpoints", "csv", "metrics.json", "prompt",
                                                        "rank1.log", "test_predictions.jsonl", "train.log",
                                                        "val_predictions.jsonl"]
    assert list(work.iterdir()) == []


@pytest.mark.xdist_group("distributed")
def test_a_ddp_multirun_gives_each_job_its_own_workers_and_one_dir(tmp_path, local_task_overrides,
                                                                    softprompt_train):
    sweep = tmp_path / "sweep"
    result = softprompt_train("-m", "trainer=ddp_cpu", "backbone=tiny_random", "logger=none", *local_task_overrides,
                              "trainer.max_steps=2", "method.num_virtual_tokens=2,4", f"hydra.sweep.dir={sweep}",
                              cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Starting with 2 processes") == 2
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, length in (("0", 2), ("1", 4)):
        assert json.loads((sweep / job / "metrics.json").read_text())["num_virtual_tokens"] == length
        assert (sweep / job / "rank1.log").exists()


def test_ddp_ignores_every_frozen_tensor(tmp_path, tiny_backbone, prompt_module):
    """DDP neither broadcasts nor all-reduces the backbone: only the trainable prompt is registered."""
    module = prompt_module(tiny_backbone(fresh=True), [[" negative"], [" positive"]])  # DDP wraps it
    keep_frozen_out_of_ddp(module)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(module)
        synced = {name for name, _ in module.named_parameters() if name not in ddp.parameters_to_ignore}
        assert synced == {name for name, p in module.named_parameters() if p.requires_grad} == {"prompt"}
        assert all(name in ddp.parameters_to_ignore for name, _ in module.backbone.named_buffers(prefix="backbone"))
        del ddp  # its reducer holds the process group: free it while the group is alive (else gloo can hang)
    finally:
        torch.distributed.destroy_process_group()


# Methods whose trainable part is more than one prompt tensor: parameter groups, hooks, gates, task factors,
# frozen cache rows.
STRUCTURED_METHODS = ["residual_prompt_tuning", "dept", "late_prompt_tuning", "adaption_prompt",
                      "multitask_prompt_tuning", "cartridge"]


@pytest.mark.xdist_group("distributed")
def test_methods_with_structured_trainable_parts_train_under_ddp(tmp_path, local_task_overrides, softprompt_train):
    """Each method's trainable tensors (parameter groups, hooks, gates, task factors, frozen cache rows) train in two
    DDP processes: every job finishes, its backbone unchanged, its artifact whole."""
    sweep = tmp_path / "sweep"
    result = softprompt_train("-m", "trainer=ddp_cpu", "backbone=tiny_random", "logger=none", "callbacks=none",
                              *local_task_overrides, "trainer.max_steps=2", "method.num_virtual_tokens=3",
                              f"method={','.join(STRUCTURED_METHODS)}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("Starting with 2 processes") == len(STRUCTURED_METHODS)
    for job, method in enumerate(STRUCTURED_METHODS):
        summary = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert summary["method"] == method and summary["steps"] == 2
        assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
        assert (sweep / str(job) / "prompt" / "softprompt.safetensors").is_file()
