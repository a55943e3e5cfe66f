"""`auxilearn-hpo tune --backend ray`: more trials on a rerun, Ctrl-C, resume (real Ray runs)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from auxilearn_hpo.cli import main

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOY = ["tune", "--benchmark", "toy", "--backend", "ray", "--epochs", "1", "--no-plots", "--quiet"]


def test_rerun_with_more_trials_runs_more_trials(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TOY + ["--trials", "2", "--out", str(out)]) == 0
    first = pd.read_csv(out / "trials.csv")
    assert main(["tune", "--out", str(out), "--trials", "3", "--no-plots", "--quiet"]) == 0
    second = pd.read_csv(out / "trials.csv")
    # Ray cannot grow a stored experiment: the third trial runs as a second one, and both are in the tables.
    assert len(first) == 2 and len(second) == 3 and set(first["trial_id"]) < set(second["trial_id"])
    assert (second["status"] == "completed").all()
    assert sorted(p.name for p in out.glob("ray*")) == ["ray", "ray-2"]
    assert json.loads((out / "run.json").read_text())["trials"] == 3
    # Rerunning the finished run runs nothing new.
    assert main(["tune", "--out", str(out), "--no-plots", "--quiet"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 3


def test_damaged_experiment_state_is_a_one_line_error(ray_session, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TOY + ["--trials", "1", "--out", str(out)]) == 0
    (state,) = (out / "ray").glob("experiment_state-*.json")
    state.write_text(state.read_text()[:50])
    before = (out / "trials.csv").read_bytes()
    capsys.readouterr()
    assert main(["tune", "--out", str(out), "--trials", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is damaged" in err and err.count("\n") == 1 and "Traceback" not in err
    # No new experiment was started over it and the tables still hold the finished trial.
    assert sorted(p.name for p in out.glob("ray*")) == ["ray"] and (out / "trials.csv").read_bytes() == before


def test_ctrl_c_exits_130_labels_unfinished_trials_and_report_reads_the_ray_folder(tmp_path, capsys):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli", "tune", "--benchmark", "digits", "--backend", "ray",
           "--trials", "4", "--epochs", "200", "--out", str(out), "--no-plots", "--quiet"]  # trials far longer than 1 s
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not any(os.path.getsize(f) > 0 for f in glob.glob(str(out / "ray/*/result.json"))):
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Finished" not in stdout and "rerun the same command to resume" in stderr
    trials = pd.read_csv(out / "trials.csv")
    # Unfinished trials are interrupted or not started, never "pruned" or "completed" short of their epochs.
    short = trials[trials["epochs"] < 200]
    assert set(short["status"]) <= {"interrupted", "not_started"} and len(short) >= 1
    assert "pruned" not in set(trials["status"])
    # Without tables (interrupted before they were written), report reads the Ray folder itself.
    for name in ("reports.csv", "trials.csv", "weights.csv"):
        (out / name).unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no tables written yet" in printed and f"Best trials ({len(trials)} in total" in printed
    assert "interrupted" in printed or "not_started" in printed


def test_ray_prints_no_status_tables_off_a_terminal(ray_session, tmp_path, capfd):
    out = tmp_path / "run"
    args = ["tune", "--benchmark", "toy", "--backend", "ray", "--epochs", "1", "--trials", "1", "--no-plots"]
    assert main(args + ["--out", str(out)]) == 0  # no --quiet
    printed = capfd.readouterr().out
    # stdout is a pipe here: the run's own lines and tables, none of Ray Tune's status tables.
    assert "Best trials (1 in total: 1 completed)" in printed
    assert "Trial status" not in printed and "Current time" not in printed and "│" not in printed
