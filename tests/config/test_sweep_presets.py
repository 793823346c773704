"""Sweep presets and launcher presets as they compose: each experiment's grid, debug=fast's smaller grid, the
SLURM launcher's cluster knobs."""

from __future__ import annotations

import pytest

PRESET_GRIDS = {  # preset -> swept key -> (full grid, debug=fast grid)
    "lester_ablation": {"method.num_virtual_tokens": ("1,5,20,100", "1,5"),
                        "method.init": ("random_uniform,vocab,class_labels", "random_uniform,class_labels"),
                        "cv.fold": ("range(5)", "range(5)")},
    "method_comparison": {"method": ("glob(*)", "prompt_tuning,prefix_tuning,hard_prompt"),
                          "cv.fold": ("range(5)", "range(5)")},
    "lr_sweep": {"optimizer.lr": ("0.001,0.003,0.01,0.03,0.1,0.3", "0.01,0.3"), "cv.fold": ("range(5)", "range(5)")},
    "prefix_length": {"method.num_virtual_tokens": ("1,5,10,20,50", "1,5"), "cv.fold": ("range(5)", "range(5)")},
}


@pytest.mark.parametrize("preset", PRESET_GRIDS)
@pytest.mark.parametrize("fast", [False, True])
def test_presets_sweep_their_grid_and_debug_fast_shrinks_it(make_cfg, preset, fast):
    cfg = make_cfg([f"experiment={preset}", *(["debug=fast"] if fast else [])])
    params = dict(cfg.hydra.sweeper.params)
    assert params == {key: grids[fast] for key, grids in PRESET_GRIDS[preset].items()}
    assert cfg.cv.num_folds == 5 and preset in cfg.tags


def test_method_comparison_runs_every_method_preset_on_every_fold(make_cfg):
    """A new method (one module, one yaml) joins the comparison without any list naming it."""
    from pathlib import Path

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import create_config_search_path
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import softprompt.config.compose

    conf = Path(softprompt.config.compose.config_dir())
    params = make_cfg(["experiment=method_comparison"]).hydra.sweeper.params
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(conf)))
    overrides = OverridesParser.create(config_loader=loader).parse_overrides([f"{k}={v}" for k, v in params.items()])
    jobs = {tuple(job) for job in BasicSweeper.split_arguments(overrides, None)[0]}
    presets = sorted(path.stem for path in (conf / "method").glob("*.yaml"))
    assert len(presets) >= 5 and {"method=prompt_tuning", "method=hard_prompt"} <= {m for m, _ in jobs}
    assert jobs == {(f"method={m}", f"cv.fold={fold}") for m in presets for fold in range(5)}


def test_slurm_preset_sets_the_cluster_knobs(make_cfg):
    cfg = make_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                    "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.devices=4",
                    "hydra.launcher.setup=[module load cuda]"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 4, 4, 1)
    assert launcher.array_parallelism == 32 and launcher.max_num_timeout == 3 and launcher.timeout_min == 240
    assert list(launcher.setup) == ["module load cuda"]
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.devices == 4
