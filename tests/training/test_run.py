"""End-to-end runs on the tiny backbone: frozen weights, trainable-only checkpoints, metrics.json, folds, the
optimizer presets, backbone reuse across jobs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torchmetrics.classification import MulticlassF1Score

from softprompt.training.checkpointing import ValidationHistory
from softprompt.training.run import run

RUN = ["backbone=tiny_random", "trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=4",
       "data.eval_batch_size=8", "data.max_samples.validation=null"]


def test_run_trains_prompt_only_and_writes_metrics(make_cfg, local_task_overrides):
    cfg = make_cfg([*RUN, *local_task_overrides, "method.num_virtual_tokens=3",
                    "method.init=vocab", "optimizer.lr=0.3"])
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(summary))
    for key in ("method", "backbone", "task", "num_virtual_tokens", "init", "lr", "fold", "num_folds", "seed",
                "trainable_params", "total_params", "val", "test", "steps", "wall_seconds"):
        assert key in written
    assert written["trainable_params"] == 3 * 32 and written["steps"] == 4
    assert written["truncated"] == {"train": 0, "validation": 0, "test": 0}  # short reviews: nothing was cut
    assert written["split_sizes"]["test"] == {"available": 10, "used": 10}
    assert written["backbone_fingerprint_start"] == written["backbone_fingerprint_end"]
    steps = written["step_seconds"]  # time inside the steps; the rest of the wall time is the job's fixed cost
    assert set(steps) == {"train", "validation", "test"} and all(seconds > 0 for seconds in steps.values())
    assert sum(steps.values()) < written["wall_seconds"]
    assert set(written["val"]) >= {"acc", "f1"} and set(written["test"]) >= {"acc", "f1"}
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["row_index"] for p in predictions] == list(range(10))  # the test split, in dataset order
    accuracy = sum(p["prediction"] == p["label"] for p in predictions) / len(predictions)
    assert accuracy == pytest.approx(written["test"]["acc"])

    checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the default callbacks save the best and last checkpoints"
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert list(state) == ["method.prompt"] and state["method.prompt"].shape == (3, 32)
    assert written["best_checkpoint"] and Path(written["best_checkpoint"]).exists()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scores_of(rows: list[dict]) -> dict[str, float]:
    """Accuracy, macro-F1 and verbalizer loss of classification prediction rows, as the objective computes them."""
    labels, predicted = torch.tensor([r["label"] for r in rows]), torch.tensor([r["prediction"] for r in rows])
    probabilities = torch.tensor([r["probabilities"][r["label"]] for r in rows])
    return {"acc": float((predicted == labels).float().mean()),
            "f1": float(MulticlassF1Score(len(rows[0]["probabilities"]), average="macro")(predicted, labels)),
            "loss": float(-probabilities.log().mean())}


def test_val_predictions_are_the_selected_checkpoints_validation_pass(make_cfg, local_task_overrides):
    """Four validations tie on accuracy, so the first is the best checkpoint (the tested one): the saved validation
    predictions reproduce metrics.json's val metrics, which are that pass's."""
    cfg = make_cfg([*RUN, *local_task_overrides, "trainer.max_steps=8", "method.num_virtual_tokens=3",
                    "optimizer.lr=0.3"])
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["best_step"] == 2 and summary["steps"] == 8
    rows = read_rows(out / "val_predictions.jsonl")
    assert [r["row_index"] for r in rows] == list(range(6))  # the validation split, in dataset order
    assert set(rows[0]) == set(read_rows(out / "test_predictions.jsonl")[0])  # the test predictions' row format
    for name, value in scores_of(rows).items():
        assert value == pytest.approx(summary["val"][name], abs=1e-6), name


def validation_pass(history: ValidationHistory, step: int, acc: float) -> None:
    """One validation pass seen by `history` on one process: metrics `acc`, one prediction row naming its step."""
    trainer = SimpleNamespace(sanity_checking=False, global_step=step, world_size=1, strategy=None,
                              callback_metrics={"val/acc": torch.tensor(acc)})
    history.on_validation_end(trainer, SimpleNamespace(val_predictions=[{"row_index": 0, "prediction": step}]))


def test_validation_history_keeps_the_first_best_and_the_latest_passes_predictions_through_a_checkpoint():
    history = ValidationHistory("acc")
    for step, acc in ((2, 0.5), (4, 0.75), (6, 0.75), (8, 0.625)):
        validation_pass(history, step, acc)
    assert history.best()["step"] == 4  # a tie keeps the earlier pass, as ModelCheckpoint does
    assert {step: rows[0]["prediction"] for step, rows in history.predictions.items()} == {4: 4, 8: 8}
    resumed = ValidationHistory("acc")
    resumed.load_state_dict(history.state_dict())
    validation_pass(resumed, 10, 0.5)
    assert sorted(resumed.predictions) == [4, 10] and [r["step"] for r in resumed.records] == [2, 4, 6, 8, 10]
    older = ValidationHistory("acc")
    older.load_state_dict({"records": history.records})  # a checkpoint from before predictions were kept
    assert older.predictions == {}


def test_a_run_without_checkpoints_saves_its_final_validation_predictions(make_cfg, local_task_overrides):
    """callbacks=none tests the final weights, so its val metrics and predictions are the last validation's."""
    cfg = make_cfg([*RUN, *local_task_overrides, "callbacks=none"])
    summary = run(cfg)
    rows = read_rows(Path(cfg.paths.output_dir) / "val_predictions.jsonl")
    assert summary["best_step"] == summary["steps"] == 4
    for name, value in scores_of(rows).items():
        assert value == pytest.approx(summary["val"][name], abs=1e-6), name


def test_same_config_and_seed_give_identical_metrics(make_cfg, local_task_overrides, tmp_path):
    overrides = [*RUN, *local_task_overrides, "callbacks=none"]
    first = run(make_cfg(overrides, output_dir=tmp_path / "a"))
    second = run(make_cfg(overrides, output_dir=tmp_path / "b"))
    for key in ("val", "test", "trainable_params", "steps"):
        assert first[key] == second[key]


def test_kfold_uses_the_fold_for_validation_and_the_test_split_for_test(make_cfg, local_task_overrides):
    cfg = make_cfg([*RUN, *local_task_overrides, "callbacks=none", "cv.num_folds=4",
                    "cv.fold=1"])
    summary = run(cfg)
    assert summary["fold"] == 1 and summary["num_folds"] == 4
    predictions = (Path(cfg.paths.output_dir) / "test_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 10  # the task's test split, untouched by the folds


def test_hard_prompt_skips_fitting_and_reports_zero_trainable(make_cfg, local_task_overrides):
    cfg = make_cfg([*RUN, *local_task_overrides, "method=hard_prompt"])
    summary = run(cfg)
    assert summary["trainable_params"] == 0 and summary["steps"] == 0
    assert summary["num_virtual_tokens"] == 0
    # nothing trained: its one validation pass (trainer.validate) is the one saved
    rows = read_rows(Path(cfg.paths.output_dir) / "val_predictions.jsonl")
    assert scores_of(rows)["acc"] == pytest.approx(summary["val"]["acc"])


def test_adafactor_preset_with_warmup_is_what_trains(make_cfg, local_task_overrides):
    cfg = make_cfg([*RUN, *local_task_overrides, "optimizer=adafactor",
                    "optimizer.scheduler.name=linear", "optimizer.scheduler.warmup_steps=2"])
    run(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    state = last["optimizer_states"][0]
    # Adafactor takes the method preset's lr (prompt tuning: 0.03), as AdamW does
    assert state["param_groups"][0]["initial_lr"] == 0.03 and state["param_groups"][0]["scale_parameter"] is False
    assert {"exp_avg_sq_row", "exp_avg_sq_col"} <= set(state["state"][0])  # Adafactor's factored moments
    assert last["global_step"] == 4 and last["lr_schedulers"][0]["_last_lr"][0] == 0.0  # linear decay to 0
    assert list(last["state_dict"]) == ["method.prompt"]


def test_reused_backbone_gives_the_same_results_as_a_fresh_load(make_cfg, local_task_overrides, tmp_path):
    """A sweep's later jobs reuse the loaded backbone; their metrics equal a fresh process's."""
    from softprompt.backbones.cache import BACKBONES

    overrides = [*RUN, *local_task_overrides, "callbacks=none", "method=prefix_tuning",
                 "method.reparam_hidden=8"]
    BACKBONES.clear()
    fresh = run(make_cfg([*overrides, "backbone_cache.max_entries=0"], output_dir=tmp_path / "fresh"))
    hits = BACKBONES.hits
    first = run(make_cfg(overrides, output_dir=tmp_path / "first"))
    second = run(make_cfg(overrides, output_dir=tmp_path / "second"))
    assert BACKBONES.hits == hits + 1  # the second job reused the first job's backbone
    for key in ("val", "test", "trainable_params", "backbone_fingerprint_start", "backbone_fingerprint_end"):
        assert fresh[key] == first[key] == second[key]
    BACKBONES.clear()
