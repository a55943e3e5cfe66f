"""The `auxilearn-hpo` command: the main job with a tiny budget, its report, bad input."""
import os

import pandas as pd
import pytest

from auxilearn_hpo.cli import main


def test_tune_with_optuna_writes_tables_and_report_reads_them(tmp_path, capsys):
    out = tmp_path / "toy"
    args = ["tune", "--benchmark", "toy", "--backend", "optuna", "--trials", "2", "--epochs", "2",
            "--out", str(out), "--no-plots", "--quiet"]
    assert main(args) == 0
    trials = pd.read_csv(out / "trials.csv")
    weights = pd.read_csv(out / "weights.csv")
    # Two trials of two epochs: two rows, and a weight per (trial, epoch, task) = 2 * 2 * 3.
    assert len(trials) == 2 and set(trials["epochs"]) == {2}
    assert len(weights) == 12 and set(weights["task"]) == {"main", "helpful", "harmful"}
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    # The report prints the same best trial as trials.csv holds.
    assert "Best trials (2 in total)" in printed and str(trials.iloc[0]["best_metric"])[:5] in printed


def test_rerunning_tune_resumes_instead_of_starting_over(tmp_path):
    out = tmp_path / "toy"
    base = ["tune", "--benchmark", "toy", "--backend", "optuna", "--epochs", "2", "--out", str(out), "--no-plots", "--quiet"]
    assert main(base + ["--trials", "2"]) == 0
    first = pd.read_csv(out / "trials.csv")
    assert main(base + ["--trials", "3"]) == 0
    second = pd.read_csv(out / "trials.csv")
    # The stored study keeps its two trials and adds one: three in total, the first two unchanged.
    assert sorted(second["trial_id"].astype(str)) == ["0", "1", "2"]
    merged = first.merge(second, on="trial_id", suffixes=("_a", "_b"))
    assert (merged["best_metric_a"] == merged["best_metric_b"]).all()


def test_unknown_benchmark_is_a_clear_error(tmp_path, capsys):
    assert main(["tune", "--benchmark", "imagenet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown --benchmark 'imagenet'" in err and "toy" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_a_clear_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    assert main(["tune", "--benchmark", "toy", "--out", str(locked / "run")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["tune", "--benchmark", "toy", "--out", str(blocker / "run")]) == 2
    assert "is not a writable folder" in capsys.readouterr().err


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_unknown_command_and_bench(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["bench", "nothing"]) == 2
    assert "choose one of hypergrad, quality, search" in capsys.readouterr().err
