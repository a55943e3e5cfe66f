"""The `auxilearn-hpo` command: the main job with a tiny budget, its report, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

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
    # (the tables print floats with 4 significant digits)
    assert "Best trials (2 in total: 2 completed)" in printed and f"{trials.iloc[0]['best_metric']:.4g}" in printed


def test_report_names_the_fixed_settings_of_the_run(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["tune", "--benchmark", "toy", "--trials", "1", "--epochs", "2", "--set", "update_every=4",
                 "--out", str(out), "--no-plots", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert "every trial with --set update_every=4" in captured.out and "lacks the run's settings" not in captured.err


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
    # argparse subparsers with choices: a one-line error naming the argument and the choices, exit 2
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate' (choose from 'tune', 'report', 'bench')" in err and "Traceback" not in err
    assert main(["bench", "nothing"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'nothing' (choose from 'hypergrad', 'quality', 'overhead', 'search', 'storage')" in err
    assert main(["bench"]) == 2
    assert "choose one of hypergrad, quality, overhead, search, storage" in capsys.readouterr().err


def test_each_command_keeps_its_own_help(capsys):
    # no command: the overview; "--help" after a command reaches that command's own parser
    assert main([]) == 0 and "{tune,report,bench}" in capsys.readouterr().out
    assert main(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: auxilearn-hpo tune") and "--workers" in out and "--storage" in out
    assert main(["bench", "--help"]) == 0 and "hypergrad | quality" in capsys.readouterr().out


def test_a_bad_flag_value_is_one_line_naming_the_flag(capsys):
    assert main(["tune", "--backend", "spark"]) == 2
    err = capsys.readouterr().err
    assert "argument --backend: invalid choice: 'spark' (choose from optuna, ray)" in err.replace("'optuna'", "optuna").replace("'ray'", "ray")
    assert "Traceback" not in err


# ------------------------------------------------------------------ reruns, run folders, bad state
TOY = ["tune", "--benchmark", "toy", "--backend", "optuna", "--epochs", "2", "--no-plots", "--quiet"]


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "toy"
    assert main(TOY + ["--trials", "2", "--out", str(out)]) == 0
    return out


def _snapshot(out):
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}


@pytest.mark.parametrize("flag, value, recorded", [("--epochs", "3", "2"), ("--benchmark", "graded_noise", "toy"),
                                                    ("--backend", "ray", "optuna"), ("--seed", "1", "0")])
def test_rerun_with_conflicting_settings_stops_and_rewrites_nothing(run_dir, capsys, flag, value, recorded):
    before = _snapshot(run_dir)
    args = ["tune", "--out", str(run_dir), "--quiet", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    # One line naming the conflict, the recorded value and the flag that overrides it.
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{flag} {value} conflicts with the run recorded in" in err and f"({flag} {recorded})" in err
    assert "--restart" in err
    # Nothing recorded was rewritten: run.json, the study and the tables are byte for byte the same.
    assert _snapshot(run_dir) == before


def test_rerun_without_settings_resumes_the_recorded_run(run_dir, capsys):
    assert main(["tune", "--out", str(run_dir), "--trials", "3", "--quiet", "--no-plots"]) == 0
    trials = pd.read_csv(run_dir / "trials.csv")
    # The recorded benchmark and epochs apply; the run now records three trials.
    assert len(trials) == 3 and set(trials["epochs"]) == {2}
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["trials"] == 3 and meta["epochs"] == 2 and meta["benchmark"] == "toy"


def test_restart_moves_the_recorded_run_aside(run_dir, capsys):
    before = _snapshot(run_dir)
    assert main(TOY[:5] + ["--epochs", "1", "--trials", "1", "--out", str(run_dir), "--no-plots", "--quiet",
                           "--restart"]) == 0
    (previous,) = run_dir.glob("previous-*")
    # The old run is kept whole in previous-<time>/; the new one has its own study and tables.
    assert _snapshot(previous) == before
    assert set(pd.read_csv(run_dir / "trials.csv")["epochs"]) == {1}


def test_resume_refuses_a_run_json_this_account_did_not_write(run_dir, capsys):
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "fingerprint": "0" * 64}))
    assert main(["tune", "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was not written by auxilearn-hpo under this account" in err and "trusted input" in err
    assert err.count("\n") == 1


def test_resume_refuses_a_folder_without_run_json(run_dir, capsys):
    (run_dir / "run.json").unlink()
    assert main(["tune", "--out", str(run_dir), "--quiet"]) == 2
    assert "no run.json written by auxilearn-hpo" in capsys.readouterr().err


def test_a_changed_setting_in_run_json_breaks_its_fingerprint(run_dir, capsys):
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "epochs": 5}))  # edited by hand
    assert main(["tune", "--out", str(run_dir), "--quiet"]) == 2
    assert "fingerprint does not match" in capsys.readouterr().err


def test_truncated_study_db_is_a_one_line_error(run_dir, capsys):
    db = run_dir / "study.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    assert main(["tune", "--out", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "study.db is damaged" in err and err.count("\n") == 1 and "Traceback" not in err


def test_set_fixes_learner_settings_in_every_trial_and_a_rerun_keeps_them(tmp_path, capsys):
    import optuna

    out = tmp_path / "lookahead"
    fixed = ["--set", "steps=0", "--set", "fused=true", "--solvers", "neumann"]
    assert main(TOY + ["--trials", "2", "--out", str(out)] + fixed) == 0
    assert json.loads((out / "run.json").read_text())["set"] == {"steps": 0, "fused": True}
    # A rerun without --set resumes with the recorded settings.
    assert main(["tune", "--out", str(out), "--trials", "3", "--quiet", "--no-plots"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3
    assert set(trials["config/steps"]) == {0} and set(trials["config/fused"]) == {True}
    # They are taken out of the search: the sampler drew no steps; it still drew the rest.
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}")
    assert all("steps" not in t.params and "fused" not in t.params for t in study.trials)
    assert any("aux_lr" in t.params for t in study.trials[1:])


def test_set_unlike_the_recorded_run_is_a_conflict(run_dir, capsys):
    before = _snapshot(run_dir)
    assert main(["tune", "--out", str(run_dir), "--quiet", "--set", "update_every=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "--set update_every=3 conflicts with the run recorded in" in err and "(no --set); rerun without --set" in err
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("args, expected", [
    (["--set", "bogus=1"], "--set: unknown LearnerConfig setting(s) ['bogus']"),
    (["--set", "steps=-1"], "--set: steps must be an int >= 0, got -1"),
    (["--set", "solver=cg"], "--set solver=... : use --solvers to choose it"),
])
def test_bad_set_is_a_usage_error_before_anything_runs(tmp_path, capsys, args, expected):
    out = tmp_path / "run"
    assert main(TOY + ["--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, expected", [
    (["--set", "steps=0"], "--set steps=0 does not combine with --weightings linear --solvers cg: steps must be "
                           ">= 1 with solver='cg'"),
    (["--weightings", "alignment", "--set", "compile=true"],
     "--set compile=true does not combine with --weightings alignment --solvers neumann: compile=True needs"),
    (["--seed", "-5"], "--seed must be an integer >= 0, got -5"),
    (["--weightings", "conv"], "--weightings conv cannot combine the (B, T) losses of benchmark 'toy'"),
    (["--trials", "0"], "--trials must be >= 1"),
])
def test_bad_settings_are_rejected_before_anything_runs(tmp_path, capsys, args, expected):
    out = tmp_path / "run"
    assert main(TOY + ["--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (out / "run.json").exists() and not (out / "study.db").exists()


# ------------------------------------------------------------------ report
def test_report_warns_when_trials_csv_disagrees_with_reports_and_study(run_dir, capsys):
    assert main(["tune", "--out", str(run_dir), "--trials", "4", "--quiet", "--no-plots"]) == 0
    text = (run_dir / "trials.csv").read_text()
    (run_dir / "trials.csv").write_text("\n".join(text.splitlines()[:2]) + "\n")  # cut short: 1 of 4 trials
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "trials.csv lists 1 trials but reports.csv holds 4" in err
    # The 4 trials the study holds are shown, not the 1 left in trials.csv.
    assert "Best trials (4 in total" in out


def test_report_warns_when_the_tables_lag_the_study(run_dir, capsys):
    tables = {n: (run_dir / n).read_bytes() for n in ("reports.csv", "trials.csv", "weights.csv")}
    assert main(["tune", "--out", str(run_dir), "--trials", "3", "--quiet", "--no-plots"]) == 0
    for name, data in tables.items():  # tables of 2 trials, study of 3
        (run_dir / name).write_bytes(data)
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "hold 2 trials but the study holds 3" in err and "Best trials (3 in total" in out


def test_report_reads_an_interrupted_run_from_its_study(run_dir, capsys):
    for name in ("reports.csv", "trials.csv", "weights.csv"):
        (run_dir / name).unlink()
    capsys.readouterr()
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no tables written yet" in out and "Best trials (2 in total: 2 completed)" in out


@pytest.mark.parametrize("content", [b"", b"\x00\xff\x00binary", b"trial_id,epoch\n\"1"])
def test_report_of_corrupt_tables_without_a_study_is_a_one_line_error(run_dir, capsys, content):
    (run_dir / "study.db").unlink()
    (run_dir / "reports.csv").write_bytes(content)
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "reports.csv" in err and err.count("\n") == 1 and "Traceback" not in err


def test_report_into_a_closed_pipe_exits_quietly(run_dir):
    code = "import sys; from auxilearn_hpo.cli import main; sys.exit(main(['report', sys.argv[1]]))"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert "BrokenPipeError" not in err and "Traceback" not in err


# ------------------------------------------------------------------ failures and Ctrl-C
def test_ctrl_c_writes_the_tables_labels_the_trial_and_exits_130(tmp_path, capsys, monkeypatch):
    from auxilearn_hpo.integrations.trial import Trial

    real = Trial.reports
    seen = {"epochs": 0}

    def reports(self):
        for report in real(self):
            seen["epochs"] += 1
            if seen["epochs"] == 3:  # second trial, first epoch done
                raise KeyboardInterrupt
            yield report

    monkeypatch.setattr(Trial, "reports", reports)
    _optuna_logs_to_this_stderr(monkeypatch)
    out = tmp_path / "run"
    assert main(TOY + ["--trials", "3", "--out", str(out)]) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Finished" not in captured.out
    assert "interrupted" in captured.err and "rerun the same command to resume" in captured.err
    trials = pd.read_csv(out / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    # The finished trial is kept; the stopped one is interrupted (not failed, not pruned).
    assert trials["status"].to_dict() == {"0": "completed", "1": "interrupted"}
    monkeypatch.setattr(Trial, "reports", real)
    # The rerun resumes: the interrupted trial is replaced and the run reaches 3 finished trials.
    assert main(["tune", "--out", str(out), "--quiet", "--no-plots"]) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["status"]) == ["completed", "completed", "completed", "interrupted"]


def _optuna_logs_to_this_stderr(monkeypatch):
    """Optuna's log handler keeps the stderr of the test that first used it; point it at this one's."""
    import optuna

    optuna.logging.get_logger("optuna")  # creates the handler if needed
    handler = optuna.logging._default_handler
    if handler is not None:
        monkeypatch.setattr(handler, "stream", sys.stderr)
        if hasattr(handler.formatter, "stream"):  # colorlog's formatter asks its own stream about colours
            monkeypatch.setattr(handler.formatter, "stream", sys.stderr)


def test_sigint_on_the_optuna_backend_exits_130_without_traceback(tmp_path):
    out = tmp_path / "run"
    # far more trials than can finish before the Ctrl-C below, each long (300 epochs, several seconds
    # on one thread) so that the signal, a second after the first trial finished, lands mid-trial
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli", "tune", "--benchmark", "digits", "--trials", "50",
           "--epochs", "300", "--out", str(out), "--no-plots"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=interruptible)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "study.db").exists() and _finished_one(out)):
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "Finished" not in stdout
    trials = pd.read_csv(out / "trials.csv")
    assert "interrupted" in set(trials["status"]) and set(trials["status"]) <= {"completed", "pruned", "interrupted"}


def interruptible() -> None:
    """A child's SIGINT as a terminal's Ctrl-C delivers it: a test run started as a background job
    (``cmd &``) ignores SIGINT, and its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _finished_one(out):
    import sqlite3

    try:
        with sqlite3.connect(out / "study.db") as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0] >= 1
    except sqlite3.Error:
        return False


def test_two_workers_on_a_new_out_share_one_study(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli"] + TOY + ["--trials", "4", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
        assert "already exists" not in err and "Traceback" not in err
    trials = pd.read_csv(out / "trials.csv")
    assert (trials["status"] == "completed").sum() >= 4


def test_ctrl_c_before_the_first_trial_exits_130(tmp_path, capsys, monkeypatch):
    from auxilearn_hpo.cli import backends

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "run_optuna", interrupted)
    assert main(TOY + ["--trials", "2", "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "rerun the same command" in err


def test_a_bad_trial_fails_alone_and_the_study_goes_on(tmp_path, capsys, monkeypatch):
    from auxilearn_hpo.integrations.trial import Trial

    real = Trial.__init__
    calls = {"n": 0}

    def init(self, task, config):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("weights became inf at step 3")
        real(self, task, config)

    monkeypatch.setattr(Trial, "__init__", init)
    _optuna_logs_to_this_stderr(monkeypatch)
    out = tmp_path / "run"
    assert main(TOY + ["--trials", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights became inf at step 3" in err
    trials = pd.read_csv(out / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    # Trial 0 failed alone; the study went on with trials 1 and 2.
    assert trials["status"].sort_index().to_dict() == {"0": "failed", "1": "completed", "2": "completed"}


def test_every_trial_failing_exits_1_with_the_reason(tmp_path, capsys, monkeypatch):
    from auxilearn_hpo.integrations.trial import Trial

    def init(self, task, config):
        raise RuntimeError("no GPU here")

    monkeypatch.setattr(Trial, "__init__", init)
    _optuna_logs_to_this_stderr(monkeypatch)
    assert main(TOY + ["--trials", "2", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "all 2 trials failed (first: RuntimeError: no GPU here)" in err and "Traceback" not in err


def test_restart_with_bad_settings_leaves_the_recorded_run_in_place(run_dir, capsys):
    before = _snapshot(run_dir)
    assert main(["tune", "--out", str(run_dir), "--restart", "--seed", "-1", "--quiet"]) == 2
    assert _snapshot(run_dir) == before and not list(run_dir.glob("previous-*"))


def test_an_error_caused_by_ctrl_c_inside_a_library_counts_as_the_interruption():
    # Ctrl-C landing inside a storage commit surfaces as the library's own error (Optuna:
    # StorageInternalError, then an assertion); the search must still end as interrupted.
    from auxilearn_hpo.cli.progress import SigintSeen as _SigintSeen

    # Python's own handler, whatever an earlier test in this process (a Ray driver) installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_inside_a_library(_SigintSeen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_inside_a_library(_SigintSeen):
    def commit():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, inside the library's call
            time.sleep(1)
        except KeyboardInterrupt as err:
            raise RuntimeError("An exception is raised during the commit") from err

    with pytest.raises(KeyboardInterrupt):
        with _SigintSeen(announce=False) as sigint, sigint.as_interrupt():
            _first_ctrl_c(sigint)
            commit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(RuntimeError, match="no Ctrl-C"):  # other errors pass through unchanged
        with _SigintSeen() as sigint, sigint.as_interrupt():
            raise RuntimeError("no Ctrl-C")


def _first_ctrl_c(sigint):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(200):  # the handler runs at the interpreter's next check
        if sigint.seen:
            return
        time.sleep(0.01)
    raise AssertionError("the Ctrl-C was not recorded")


def test_the_first_ctrl_c_lets_the_running_work_finish_and_stops_after_it():
    # (raised from the handler, it could cut a storage commit short and leave SQLite locked)
    from auxilearn_hpo.cli.progress import SigintSeen as _SigintSeen

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with _SigintSeen(announce=False) as sigint:
                _first_ctrl_c(sigint)
                time.sleep(0.05)  # e.g. a commit: runs to its end
                done.append(True)
        assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_worker_stops_after_its_epoch_when_the_main_process_asks():
    import threading

    from auxilearn_hpo.cli.progress import SigintSeen as _SigintSeen

    stop, shown = threading.Event(), []
    watch = _SigintSeen.watch(lambda number, report, epochs: shown.append(report))
    with pytest.raises(KeyboardInterrupt):
        with _SigintSeen(announce=False, stop=stop):
            watch(0, "epoch 1", 5)
            stop.set()  # Ctrl-C reached the main process only (kill -INT <its pid>)
            watch(0, "epoch 2", 5)
    assert shown == ["epoch 1"]


def _tune_on(tmp_path, terminal, *flags):
    """Run a 2-trial x 3-epoch toy search with stdout (and stderr) on a pseudo-terminal or a pipe;
    returns what it printed."""
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli", "tune", "--benchmark", "toy", "--trials", "2", "--epochs", "3",
           "--out", str(tmp_path / "run"), "--no-plots", *flags]
    env = {**os.environ, "COLUMNS": "200"}
    if not terminal:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout + done.stderr
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: every process holding the terminal has closed it
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_inside_trials_shows_on_a_terminal(tmp_path, workers):
    printed = _tune_on(tmp_path, True, "--workers", str(workers))
    # one line redrawn in place per epoch of each trial, cleared before Optuna's "Trial n finished"
    prefix = "worker " if workers > 1 else "\r\x1b[Ktrial "
    for trial in (0, 1):
        for epoch in (1, 2, 3):
            assert f"trial {trial}: epoch {epoch}/3, mse " in printed
        assert f"Trial {trial} finished" in printed
    assert prefix in printed and "epoch 4/3" not in printed
    assert "\r\x1b[K\x1b[" in printed or "\r\x1b[K[" in printed  # the line is cleared before a log line


def test_progress_is_silent_on_a_pipe_and_with_quiet(tmp_path):
    piped = _tune_on(tmp_path / "pipe", False)
    assert "Trial 1 finished" in piped and "epoch 1/3" not in piped and "\x1b[K" not in piped
    quiet = _tune_on(tmp_path / "quiet", True, "--quiet")
    assert "Finished in" in quiet and "epoch 1/3" not in quiet and "Trial 1 finished" not in quiet


def test_threads_must_be_positive(tmp_path, capsys):
    assert main(["tune", "--benchmark", "toy", "--threads", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--threads must be >= 1, got 0" in err and "Traceback" not in err


def test_a_recorded_ctrl_c_stops_the_trial_after_its_epoch():
    # The first Ctrl-C is only recorded (the handler raises nothing); the trial stops at the end of its epoch.
    import optuna

    from auxilearn_hpo.integrations import optuna as aux_optuna
    from auxilearn_hpo.cli.progress import SigintSeen as _SigintSeen

    shown = []
    study = optuna.create_study(direction="minimize")
    with pytest.raises(KeyboardInterrupt):  # (and the block, asked to stop, ends with it too)
        with _SigintSeen() as sigint:
            objective = aux_optuna.objective("toy", fixed={"epochs": 5}, progress=_SigintSeen.watch(
                lambda number, report, epochs: shown.append(report)))
            study.optimize(objective, n_trials=1)  # no Ctrl-C: every epoch is shown
            assert len(shown) == 6 and shown[-1] is None  # (the last call clears the line)
            sigint.seen = True  # as if the handler had run
            with pytest.raises(KeyboardInterrupt):
                study.optimize(objective, n_trials=1)
    stopped = study.trials[-1]
    assert stopped.user_attrs["interrupted"] is True and len(stopped.user_attrs["reports"]) == 1
    assert shown[6:] == [None]  # the stopped epoch is not drawn; the line is cleared
    assert _SigintSeen.active is None


# ------------------------------------------------------------------ --space warm
def test_space_warm_holds_the_best_learned_weights_times_a_searched_gain(tmp_path, capsys):
    out = tmp_path / "warm"
    assert main(TOY[:5] + ["--epochs", "6", "--trials", "8", "--space", "warm", "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["space"] == "warm"
    trials = pd.read_csv(out / "trials.csv").set_index("trial_id")
    held = trials[trials["config/held_from"].notna()]
    trained = held[held["epochs"] > 0]  # a repeat of a finished held trial is pruned untrained
    assert len(trained) >= 1 and (trained["hypersteps"] == 0).all()
    for _, row in trained.iterrows():  # the source trial's end weights, every auxiliary times the gain
        source = trials.loc[int(row["config/held_from"])]
        assert source["config/weighting"] == "linear" and source["hypersteps"] > 0
        assert row["weights/main"] == pytest.approx(source["weights/main"], rel=1e-6)
        for task in ("helpful", "harmful"):
            assert row[f"weights/{task}"] == pytest.approx(source[f"weights/{task}"] * row["config/hold_gain"], rel=1e-6)
    # the summary counts held trials as held, not as the weighting they drew
    summary = printed.split("Score by weighting, finished trials")[1]
    assert "held: trials that trained another trial's weights held fixed" in summary
    shown = {line.split()[1]: int(line.split()[2]) for line in summary.strip().split("\n")[1:]
             if line.split() and line.split()[0].isdigit()}
    assert shown["held"] == len(held) and sum(shown.values()) == len(trials)


def test_space_is_recorded_and_a_rerun_keeps_it(tmp_path, capsys):
    from auxilearn_hpo.cli import runfolder

    out = tmp_path / "warm"
    assert main(TOY + ["--trials", "2", "--space", "warm", "--out", str(out)]) == 0
    assert main(["tune", "--out", str(out), "--trials", "3", "--quiet", "--no-plots"]) == 0
    assert json.loads((out / "run.json").read_text())["space"] == "warm"
    capsys.readouterr()
    assert main(["tune", "--out", str(out), "--quiet", "--space", "default"]) == 2
    err = capsys.readouterr().err
    assert "--space default conflicts with the run recorded in" in err and "(--space warm)" in err
    # a run recorded before --space existed searched the default space
    old = tmp_path / "old"
    assert main(TOY + ["--trials", "1", "--out", str(old)]) == 0
    meta = json.loads((old / "run.json").read_text())
    meta.pop("fingerprint"), meta.pop("space")
    runfolder.write_meta(old, meta)
    assert main(["tune", "--out", str(old), "--quiet", "--space", "warm"]) == 2
    assert "(--space default)" in capsys.readouterr().err
    assert main(["tune", "--out", str(old), "--quiet", "--no-plots", "--trials", "2", "--space", "default"]) == 0


def test_space_warm_with_ray_is_a_one_line_error(tmp_path, capsys):
    assert main(["tune", "--benchmark", "toy", "--backend", "ray", "--space", "warm", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--space warm applies to --backend optuna" in err
    assert main(["tune", "--space", "hot"]) == 2
    assert "argument --space: invalid choice: 'hot'" in capsys.readouterr().err
