"""The command line's failure paths: a resumed run's best trial, missing extras, bad flags, Ctrl-C,
no matplotlib, and the package layout (``auxilearn_hpo.cli``). Optuna only; Ray's in test_cli_ray.py."""
import ast
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from auxilearn_hpo.cli import main
from auxilearn_hpo.results import write_tables

ROOT = Path(__file__).resolve().parents[1]
TOY = ["tune", "--benchmark", "toy", "--backend", "optuna", "--epochs", "2", "--quiet"]


def _reports(values, main_weight, aux_weight, test=math.nan):
    return [{"epoch": e, "val_metric": v, "higher_is_better": 0.0, "seconds": 1.0,
             "weights": {"main": main_weight, "aux": aux_weight},
             "test_metric": test if e == len(values) else math.nan} for e, v in enumerate(values, start=1)]


# ------------------------------------------------------------------ issue 32, item 1
def test_report_after_a_resume_names_a_finished_trial_as_best(tmp_path, capsys):
    # A resumed run: trial "7" was interrupted with the best score (lower is better) and huge weights;
    # "3" and "5" finished. Every "best" the report prints is a finished trial, by score.
    write_tables([("7", {"weighting": "nonlinear", "epochs": 3}, _reports([0.5, 0.01], 167.7, 0.041), "interrupted"),
                  ("3", {"weighting": "linear", "epochs": 3}, _reports([0.5, 0.3, 0.2], 2.0, 1.0, 0.25), "completed"),
                  ("5", {"weighting": "linear", "epochs": 3}, _reports([0.5, 0.4, 0.4], 1.0, 3.0, 0.45), "completed")],
                 tmp_path, plots=False)
    assert main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    best, weights, summary = (printed.split("Best trials")[1], printed.split("Learned effective weights")[1],
                              printed.split("Score by weighting")[1])
    rows = [line.split() for line in best.split("\n")[2:4]]
    # The table ranks finished trials only: 3 (score 0.3) above 5 (0.433); the interrupted 7 is left out.
    assert [r[0] for r in rows] == ["3", "5"] and "interrupted" not in best.split("Learned")[0].split("\n", 1)[1]
    # The best trial's weights, relative to its main task's: 1 and 0.5 (not 167.7 / 0.041).
    assert weights.split("\n")[2].split() == ["1", "0.5"]
    # The summary counts the two finished trials, both linear.
    assert "nonlinear" not in summary and summary.split("\n")[2].split()[1:3] == ["linear", "2"]


# ------------------------------------------------------------------ issue 32, item 3
@pytest.mark.parametrize("blocked, args, extra", [
    ("sklearn", ["tune", "--trials", "1", "--epochs", "1"], "auxilearn-hpo[digits]"),
    ("optuna", TOY + ["--trials", "1"], "auxilearn-hpo[optuna]"),
    ("ray", ["tune", "--benchmark", "toy", "--backend", "ray", "--trials", "1"], "auxilearn-hpo[ray]"),
])
def test_a_missing_extra_is_one_line_naming_it_and_nothing_is_written(tmp_path, capsys, monkeypatch, blocked,
                                                                      args, extra):
    monkeypatch.setitem(sys.modules, blocked, None)  # as if not installed
    out = tmp_path / "run"
    assert main(args + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pip install '{extra}'" in err and "Traceback" not in err
    # Checked before the run folder exists: no run.json, no lock file, no folder.
    assert not out.exists()


def test_a_rerun_checks_the_extras_of_the_recorded_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(TOY + ["--trials", "1", "--no-plots", "--out", str(out)]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setitem(sys.modules, "optuna", None)
    capsys.readouterr()
    assert main(["tune", "--out", str(out), "--trials", "2"]) == 2
    assert "--backend optuna needs Optuna" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_the_cli_knows_every_benchmark_and_which_need_scikit_learn(monkeypatch):
    from auxilearn_hpo.cli.extras import BENCHMARK_NEEDS, BENCHMARKS
    from auxilearn_hpo.tasks import make_task, names

    # The parser's list (known without torch) is the tasks' list.
    assert list(BENCHMARKS) == names()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    for name in names():
        try:
            make_task(name, seed=0)
            needs = False
        except ImportError as err:
            needs = "auxilearn-hpo[digits]" in str(err)
        # A benchmark fails without scikit-learn exactly when the CLI says it needs it.
        assert needs == (name in BENCHMARK_NEEDS), name


# ------------------------------------------------------------------ issue 32, item 7
def test_help_does_not_import_torch():
    code = "import sys; from auxilearn_hpo.cli import main; main(['tune', '--help']); sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    # --help answers from the parser alone (about 3 s sooner than with torch).
    assert done.returncode == 0, "tune --help imported torch"
    assert "--benchmark" in done.stdout and "fewshot_digits" in done.stdout


@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--trials", "0"], ["--workers", "0"]])
def test_a_zero_count_is_one_line_and_writes_nothing(tmp_path, capsys, flag):
    out = tmp_path / "run"
    assert main(TOY[:5] + ["--out", str(out)] + flag) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag[0]} must be >= 1, got 0" in err
    # Not even the folder or its lock file.
    assert not out.exists()


@pytest.mark.parametrize("item, expected", [("update_every", "--set must be KEY=VALUE, got 'update_every'"),
                                            ("=3", "--set must be KEY=VALUE, got '=3'"),
                                            ("bogus=1", "--set: unknown LearnerConfig setting(s) ['bogus']")])
def test_a_bad_set_is_one_line_without_the_usage(tmp_path, capsys, item, expected):
    out = tmp_path / "run"
    assert main(TOY + ["--out", str(out), "--set", item]) == 2
    err = capsys.readouterr().err
    # One line: the error alone, not argparse's usage block before it.
    assert err.count("\n") == 1 and expected in err and "usage:" not in err
    assert not out.exists()


def test_another_ctrl_c_after_the_interruption_prints_no_traceback(tmp_path):
    # The command (argv from the process) is interrupted twice in its search, then once more on the
    # way out (an exit handler stands for a library's clean-up): exit 130, one message, no traceback.
    script = textwrap.dedent(f"""
        import atexit, os, signal, sys
        from auxilearn_hpo.cli import backends, main

        def search(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: stop after the epoch
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
            raise AssertionError("not interrupted")

        backends.run_optuna = search
        atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))
        sys.argv = ["auxilearn-hpo", "tune", "--benchmark", "toy", "--epochs", "1", "--quiet", "--out", {str(tmp_path / "run")!r}]
        sys.exit(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even from a background job
    assert done.returncode == 130, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "rerun the same command" in done.stderr


def test_ctrl_c_during_the_imports_is_held_until_they_end():
    from auxilearn_hpo.cli.progress import held_ctrl_c

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even in a background job
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with held_ctrl_c():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the block ran to its end")  # an import of torch cut here could abort the process
        assert done == ["the block ran to its end"]
        # Python's handler is back.
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_plots_skipped_without_matplotlib_say_so_in_one_line(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(TOY + ["--trials", "1", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.split("\n") if "matplotlib" in line]
    assert lines == ["Plots: skipped, matplotlib is not installed (pip install auxilearn-hpo[plot])"]
    assert not list((tmp_path / "run").glob("*.png"))


# ------------------------------------------------------------------ issue 30, item 1: the layout
def test_the_command_line_lives_in_small_modules_of_auxilearn_hpo_cli():
    modules = sorted((ROOT / "auxilearn_hpo" / "cli").glob("*.py"))
    assert {"tune.py", "report.py", "runfolder.py", "progress.py", "settings.py"} <= {p.name for p in modules}
    for path in modules:
        # one job each, none over 500 lines
        assert len(path.read_text().splitlines()) <= 500, path.name
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                # no private name from another module
                assert not [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")], \
                    (path.name, node.module)
                # imports run down: never main_job (the old place, now a re-export of this package)
                assert not (node.module or "").endswith("main_job"), path.name


def test_the_old_import_paths_still_work():
    from auxilearn_hpo.cli.report import report
    from auxilearn_hpo.cli.tune import tune
    from auxilearn_hpo.integrations import main_job

    assert main_job.tune is tune and main_job.report is report
    done = subprocess.run([sys.executable, "-m", "auxilearn_hpo.cli", "report", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "auxilearn-hpo report" in done.stdout
