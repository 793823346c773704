"""softprompt-report's arguments: key=value only, each bad one a single line and exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt.cli.report import main


@pytest.mark.parametrize(("args", "named", "allowed"), [
    (["metric=test/bogus"], "metric='test/bogus'", "test/acc"),
    (["metric=acc"], "metric='acc'", "val/acc"),
    (["rank_by=val/bogus"], "rank_by='val/bogus'", "val/acc"),
    (["rank_by=acc"], "rank_by='acc'", "test/acc"),
    (["rank_by=train/loss"], "rank_by='train/loss'", "val/loss"),
    (["group_by=method,fold"], "'fold'", "num_virtual_tokens"),
    (["wandb=yes"], "wandb='yes'", "true, false"),
    (["colour=red"], "'colour'", "group_by"),
])
def test_bad_argument_exits_2_with_one_line(fake_sweep: Path, capsys, args: list[str], named: str,
                                            allowed: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(fake_sweep), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("softprompt-report: error: ")
    assert named in err and allowed in err
    assert not (fake_sweep / "results.csv").exists()


@pytest.mark.parametrize(("args", "flag"), [
    (["--out", "x"], "--out"),
    (["--group-by", "method"], "--group-by"),
    (["--rank-by=test/acc"], "--rank-by=test/acc"),
    (["--wandb"], "--wandb"),
])
def test_an_old_style_flag_is_refused_naming_the_key_value_spelling(fake_sweep: Path, capsys, args: list[str],
                                                                    flag: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(fake_sweep), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"softprompt-report: error: expected key=value, got {flag!r}")
    assert "out, group_by, metric, rank_by, wandb" in err
    assert not (fake_sweep / "results.csv").exists() and not (fake_sweep / "x").exists()


def test_a_path_is_required(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["group_by=method"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "missing PATH..." in err


def test_no_runs_found_exits_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "no runs found" in err and str(tmp_path) in err
