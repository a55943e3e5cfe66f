"""``auxilearn-hpo tune``: search the outer settings of AuxiLearn on a shipped benchmark.

``tune`` searches with Ray Tune or Optuna, prints the best trials and writes ``reports.csv``,
``trials.csv``, ``weights.csv`` and plots to ``--out``. Running the same command again resumes
the search stored in ``--out`` (Optuna: ``study.db``; Ray Tune: the experiment folders ``ray/``,
``ray-2/``, ...) instead of starting over; ``auxilearn-hpo report DIR`` prints the tables again.

Nothing is written before the settings are checked: bad flags, a missing extra (scikit-learn
for the ``digits`` benchmarks, Optuna, Ray Tune) or a conflict with the recorded run stop with
one line and exit status 2. A rerun whose settings conflict with the recorded ones
(:mod:`.runfolder`) says so; ``--restart`` moves the recorded run into
``DIR/previous-<time>/`` and starts a new one. ``run.json`` is written when a folder is new and
its trial count updated after the search; the tables are replaced atomically.

Progress: Optuna logs a line per finished trial; while a trial runs, a line redrawn in place on
stdout shows its epoch, validation metric and time, only when stdout is a terminal (``--quiet``
silences both; Ray Tune's status tables likewise appear only on a terminal). Trials run torch
on ``--threads`` threads (default 1): the shipped benchmarks' tensors are tiny, and a second
thread only adds waiting (on a busy machine, many times over).

Exit status: 0 when the search finished; 130 when Ctrl-C interrupted it (the tables of what ran
are written; rerun the same command to resume); 1 when every trial failed; 2 for bad input.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

from . import backends
from .errors import INTERRUPTED, USAGE, UsageError, one_line
from .extras import BENCHMARKS, check_extras
from .progress import SigintSeen, held_ctrl_c
from .report import print_tables
from .runfolder import (
    FORMAT, check_out, check_sqlite, locked, move_aside, peek_meta, ray_experiments, read_meta, recorded_state,
    write_meta,
)
from .settings import check_args, merge, parse_fixed, shown, validate

__all__ = ["tune", "parser"]


def parser() -> argparse.ArgumentParser:
    """The options of ``tune`` (building it imports neither torch nor a framework: ``--help`` is instant)."""
    from auxilearn_hpo.bench import add_set_option

    ap = argparse.ArgumentParser(
        prog="auxilearn-hpo tune",
        description="Search the outer settings of AuxiLearn on a shipped benchmark with Optuna or Ray Tune, "
                    "print the best trials and write trials.csv, weights.csv, reports.csv and plots to --out. "
                    "Running the same command again resumes the search stored in --out.")
    # Defaults are None so that a rerun can tell a setting given on the command line from one
    # left out (which then comes from the recorded run).
    ap.add_argument("--benchmark", default=None, help=f"one of {list(BENCHMARKS)} (default: fewshot_digits)")
    ap.add_argument("--backend", default=None, choices=["optuna", "ray"], help="default: optuna")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials in total, resumed runs included (default 12, or the recorded run's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the benchmark's)")
    ap.add_argument("--out", default=None, help="output folder (default: runs/<benchmark>)")
    ap.add_argument("--seed", type=int, default=None, help="data split and model seed of every trial (default 0)")
    ap.add_argument("--weightings", nargs="+", default=None,
                    help="weightings to search over (learned ones and/or baselines; default: linear nonlinear)")
    ap.add_argument("--solvers", nargs="+", default=None,
                    help="hypergradient solvers to search over (default: neumann cg)")
    ap.add_argument("--space", default=None, choices=["default", "warm"],
                    help="Optuna backend: 'warm' also searches warm starts and hold_gain (a trial may train the "
                         "best learned linear weights held fixed, the auxiliaries times a searched gain; "
                         "integrations.space.warm_space) (default: default)")
    add_set_option(ap, "every trial, taken out of the search (e.g. --set steps=0 --set fused=true)")
    ap.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna backend: the study's database as a SQLAlchemy URL, e.g. "
                         "postgresql+psycopg://user@host:5432/db (default: sqlite:///<out>/study.db); workers on "
                         "several machines that name the same URL and --study share one study")
    ap.add_argument("--study", default=None, metavar="NAME", help="Optuna study name (default: the benchmark's name)")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="Optuna backend: worker processes on this machine sharing the study (default 1)")
    ap.add_argument("--threads", type=int, default=1, metavar="N",
                    help="Optuna backend: torch threads of each worker process (default 1: the shipped benchmarks' "
                         "models are small, and more threads on their tiny tensors only add waiting)")
    ap.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS",
                    help="Optuna backend: seconds between a running trial's heartbeats; a trial silent for twice "
                         "as long (its worker died) is marked failed and its place run again (default 10)")
    ap.add_argument("--restart", action="store_true",
                    help="move the run recorded in --out to --out/previous-<time>/ and start a new one there")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--quiet", action="store_true",
                    help="no per-trial lines and no per-epoch progress line (that line is drawn only on a terminal)")
    return ap


def tune(argv: list[str] | None = None) -> int:
    """Run (or resume) a search; returns the process exit status."""
    args = parser().parse_args(argv)
    try:
        return _tune(args)
    except UsageError as err:
        print(f"auxilearn-hpo tune: error: {err}", file=sys.stderr)
        return USAGE


def _tune(args: argparse.Namespace) -> int:
    check_args(args)
    where = Path(args.out or f"runs/{args.benchmark or 'fewshot_digits'}")
    # The extras first, before the folder exists: for a rerun without flags, as recorded there.
    recorded_here = peek_meta(where) if not args.restart else {}
    check_extras(args.benchmark or recorded_here.get("benchmark") or "fewshot_digits",
                 args.backend or recorded_here.get("backend") or "optuna")
    with held_ctrl_c():  # torch, pandas and the trial's modules, before a Ctrl-C can cut into their imports
        importlib.import_module("auxilearn_hpo.integrations.trial")
        importlib.import_module("auxilearn_hpo.tasks")
        from auxilearn_hpo import plots
        from auxilearn_hpo.results import TableError, trials_frame, write_tables
    fixed_given = parse_fixed(args.set)
    out = check_out(where)
    args.out_path = out
    # One process at a time decides what the folder holds and records a new run; a second worker
    # started at the same moment then finds the first one's run.json and study and joins them.
    with locked(out / ".auxilearn-hpo.lock"):
        state = recorded_state(out)
        recorded = read_meta(out) if state and not args.restart else None
        settings = merge(args, fixed_given, recorded, out)
        trials = args.trials or (recorded or {}).get("trials") or 12
        check_extras(settings["benchmark"], settings["backend"])
        task = validate(settings, trials)
        if state and args.restart:  # only once the new settings are known to be good
            moved = move_aside(out, state)
            print(f"auxilearn-hpo tune: moved the recorded run to {moved}")
        if settings["backend"] == "ray" and (args.workers > 1 or settings["storage"] or settings["study"]):
            raise UsageError("--workers, --storage and --study apply to --backend optuna (Ray Tune places its "
                             "trials itself: see examples/cluster.md)")
        url = backends.storage_url(out, settings, args.storage)
        epochs = settings["epochs"] or task.defaults.epochs
        settings["epochs"] = epochs
        meta = {"format": FORMAT, **settings, "trials": trials, "mode": task.mode, "metric": task.metric_name}
        if recorded is None:
            write_meta(out, meta)  # a new run: recorded before the search, so it can be resumed
        if settings["backend"] == "optuna":
            if settings["storage"] is None and (out / "study.db").exists():
                check_sqlite(out / "study.db")
            backends.create_optuna_storage(url)
        else:
            from auxilearn_hpo.integrations.ray_tune import check_experiment

            for exp in ray_experiments(out):
                if (exp / "tuner.pkl").exists():
                    try:
                        check_experiment(exp)
                    except ValueError as err:
                        raise UsageError(f"{err}; use a new --out, or --restart to move the run aside") from None
    fixed: dict[str, Any] = {**settings["set"], "epochs": epochs, "seed": settings["seed"]}
    args.metric_name = task.metric_name
    verb = "resuming" if recorded is not None else "starting"
    every = f", every trial with {shown('--set', settings['set'])}" if settings["set"] else ""
    print(f"auxilearn-hpo tune: {verb} {settings['benchmark']} ({task.metric_name}, "
          f"{'higher' if task.mode == 'max' else 'lower'} is better), {trials} trials x {epochs} epochs with "
          f"{settings['backend']}{every}, output in {out}")
    start = time.perf_counter()
    interrupted = False
    try:
        with SigintSeen() as sigint, sigint.as_interrupt():
            if settings["backend"] == "optuna" and args.workers > 1:
                source = backends.run_optuna_workers(args, settings, fixed, url, trials)
            elif settings["backend"] == "optuna":
                import torch

                torch.set_num_threads(args.threads)
                source = backends.run_optuna(args, settings, fixed, url, trials)
            else:
                with locked(out / ".ray.lock", wait=False) as got:
                    if not got:
                        raise UsageError(f"another auxilearn-hpo process is running the Ray Tune search in {out}; "
                                         "Ray Tune cannot share an experiment (wait for it, or use --backend "
                                         "optuna for several workers)")
                    source = backends.run_ray(args, settings, fixed, out, trials)
    except KeyboardInterrupt:
        interrupted = True
        try:
            source = backends.stored_source(out, settings, url)
        except (UsageError, ImportError):
            print(f"\nauxilearn-hpo tune: interrupted before any trial was stored in {out}; rerun the same "
                  "command to start it", file=sys.stderr)
            return INTERRUPTED
    try:
        if settings["backend"] == "ray" and not interrupted:  # Ray stops on Ctrl-C and fit() returns
            interrupted = any(backends.unfinished(grid) for grid in source)
        first_error = backends.first_error(source)
        source = backends.records_of(source)
        frame = trials_frame(source)
        written = write_tables(source, out, plots=not args.no_plots and not interrupted)
    except (TableError, ValueError, OSError) as err:
        raise UsageError(f"could not write the tables to {out}: {one_line(err)}") from None
    except KeyboardInterrupt:
        print(f"\nauxilearn-hpo tune: interrupted while writing the tables; the previous ones in {out} are "
              "intact; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    counts = frame["status"].value_counts().to_dict()
    if interrupted:
        print_tables(frame, out)
        done = counts.get("completed", 0) + counts.get("pruned", 0)
        print(f"\nauxilearn-hpo tune: interrupted after {time.perf_counter() - start:.0f} s: {done} of {trials} "
              f"trials finished ({', '.join(f'{n} {s}' for s, n in counts.items())}); rerun the same command "
              "to resume", file=sys.stderr)
        return INTERRUPTED
    if recorded is not None and trials > int(recorded.get("trials") or 0):
        write_meta(out, {**recorded, "trials": trials})  # the search brought the run to this total
    print(f"\nFinished in {time.perf_counter() - start:.0f} s.")
    print_tables(frame, out)
    drawn = sorted(p.name for p in written.values() if p.suffix == ".png")
    if drawn:
        print(f"Plots: {', '.join(drawn)}")
    elif not args.no_plots and not plots.available():
        print(f"Plots: skipped, matplotlib is not installed ({plots.INSTALL})")
    if len(frame) and not frame["status"].isin(["completed", "pruned"]).any():
        print(f"auxilearn-hpo tune: error: all {len(frame)} trials failed{first_error}", file=sys.stderr)
        return 1
    return 0
