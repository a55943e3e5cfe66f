"""``auxilearn-hpo tune`` and ``auxilearn-hpo report``: the main job from the command line.

``tune`` searches the outer settings of AuxiLearn on a shipped benchmark with Ray Tune or
Optuna, prints the best trials and writes ``reports.csv``, ``trials.csv``, ``weights.csv`` and
plots to ``--out``. Running the same command again resumes the search stored in ``--out``
(Optuna: ``study.db``; Ray Tune: the experiment folder ``ray/``) instead of starting over.
``report DIR`` prints the tables again from disk.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["tune", "report"]

_SHOW = ["trial_id", "status", "config/combiner", "config/method", "config/update_every", "config/steps",
         "config/aux_lr", "best_metric", "test_metric", "epochs", "hypersteps", "wall_time"]


class UsageError(Exception):
    """Bad command-line input; printed without a traceback."""


def _parser() -> argparse.ArgumentParser:
    from auxilearn_hpo.benchmarks import names

    ap = argparse.ArgumentParser(
        prog="auxilearn-hpo tune",
        description="Search the outer settings of AuxiLearn on a shipped benchmark with Optuna or Ray Tune, "
                    "print the best trials and write trials.csv, weights.csv, reports.csv and plots to --out. "
                    "Running the same command again resumes the search stored in --out.")
    ap.add_argument("--benchmark", default="digits", help=f"one of {names()} (default: digits)")
    ap.add_argument("--backend", default="optuna", choices=["optuna", "ray"], help="default: optuna")
    ap.add_argument("--trials", type=int, default=12, help="trials in total, resumed runs included (default 12)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the benchmark's)")
    ap.add_argument("--out", default=None, help="output folder (default: runs/<benchmark>)")
    ap.add_argument("--seed", type=int, default=0, help="data split and model seed of every trial")
    ap.add_argument("--combiners", nargs="+", default=["linear", "nonlinear"],
                    help="weighting methods to search over (combiners and/or baselines)")
    ap.add_argument("--methods", nargs="+", default=["neumann", "cg"], help="hypergradient solvers to search over")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    return ap


def _check_out(path: Path) -> Path:
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path} is not a writable folder: {err.strerror or err}") from None
    return path


def _print_tables(trials, out: Path | None = None) -> None:
    import pandas as pd

    from auxilearn_hpo.results import summary_frame

    cols = [c for c in _SHOW if c in trials.columns]
    wcols = [c for c in trials.columns if c.startswith("weights/")]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\nBest trials ({len(trials)} in total):")
        print(trials[cols].head(5).to_string(index=False))
        if wcols and len(trials):
            print("\nLearned effective weights of the best trial:")
            print(trials[wcols].head(1).rename(columns=lambda c: c.split("/", 1)[1]).to_string(index=False))
        if "config/combiner" in trials.columns and len(trials):
            print("\nBest metric by combiner:")
            print(summary_frame(trials, by="config/combiner").to_string())
    if out is not None:
        print(f"\nTables in {out}: trials.csv, weights.csv, reports.csv")


def tune(argv: list[str] | None = None) -> int:
    """Run (or resume) a search; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        return _tune(args)
    except UsageError as err:
        print(f"auxilearn-hpo tune: error: {err}", file=sys.stderr)
        return 2


def _tune(args: argparse.Namespace) -> int:
    from auxilearn_hpo.benchmarks import make_task, names
    from auxilearn_hpo.methods import method_names
    from auxilearn_hpo.results import trials_frame, write_tables

    if args.benchmark not in names():
        raise UsageError(f"unknown --benchmark {args.benchmark!r}; choose one of {names()}")
    if args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    bad = [c for c in args.combiners if c not in method_names()]
    if bad:
        raise UsageError(f"unknown --combiners {bad}; choose from {method_names()}")
    bad = [m for m in args.methods if m not in ("neumann", "cg", "exact")]
    if bad:
        raise UsageError(f"unknown --methods {bad}; choose from ['neumann', 'cg', 'exact']")
    out = _check_out(Path(args.out or f"runs/{args.benchmark}"))
    task = make_task(args.benchmark, seed=args.seed)
    epochs = args.epochs or int(task.defaults.get("epochs", 10))
    fixed: dict[str, Any] = {"epochs": epochs, "seed": args.seed}
    meta = {"benchmark": args.benchmark, "backend": args.backend, "trials": args.trials, "epochs": epochs,
            "seed": args.seed, "mode": task.mode, "metric": task.metric_name}
    (out / "run.json").write_text(json.dumps(meta, indent=2))
    print(f"auxilearn-hpo tune: {args.benchmark} ({task.metric_name}, {'higher' if task.mode == 'max' else 'lower'} "
          f"is better), {args.trials} trials x {epochs} epochs with {args.backend}, output in {out}")
    start = time.perf_counter()
    if args.backend == "optuna":
        source = _run_optuna(args, fixed, out)
    else:
        source = _run_ray(args, fixed, out, epochs)
    written = write_tables(source, out, plots=not args.no_plots)
    trials = trials_frame(source)
    print(f"\nFinished in {time.perf_counter() - start:.0f} s.")
    _print_tables(trials, out)
    extra = sorted(p.name for p in written.values() if p.suffix == ".png")
    if extra:
        print(f"Plots: {', '.join(extra)}")
    return 0


def _run_optuna(args: argparse.Namespace, fixed: dict[str, Any], out: Path):
    import optuna

    from auxilearn_hpo.integrations import optuna as aux_optuna

    # Optuna logs one line per finished trial: that is the progress display.
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.quiet else optuna.logging.INFO)
    space = aux_optuna.default_space()
    space["combiner"] = aux_optuna.Categorical(tuple(args.combiners))
    space["method"] = aux_optuna.Categorical(tuple(args.methods))
    # Early epochs say little (every trial starts near chance): no pruning in the first third.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, fixed["epochs"] // 3))
    _, study = aux_optuna.run(
        args.benchmark, n_trials=args.trials, space=space, fixed=fixed,
        storage=f"sqlite:///{out / 'study.db'}", study_name=args.benchmark, pruner=pruner,
    )
    return study


def _run_ray(args: argparse.Namespace, fixed: dict[str, Any], out: Path, epochs: int):
    from auxilearn_hpo.integrations import ray_tune

    space = ray_tune.search_space(combiners=tuple(args.combiners), methods=tuple(args.methods))
    _, grid = ray_tune.run(
        args.benchmark, param_space=space, fixed=fixed, num_samples=args.trials,
        storage_path=str(out), name="ray", scheduler="asha", resume=True, verbose=0 if args.quiet else 1,
    )
    return grid


def report(argv: list[str] | None = None) -> int:
    """Print the tables of a finished (or interrupted) ``tune`` run from its folder."""
    from auxilearn_hpo.results import read_tables

    ap = argparse.ArgumentParser(prog="auxilearn-hpo report", description="print the tables of a tune run")
    ap.add_argument("dir", help="the --out folder of 'auxilearn-hpo tune'")
    args = ap.parse_args(argv)
    path = Path(args.dir)
    if not path.is_dir():
        print(f"auxilearn-hpo report: error: {path} is not a folder", file=sys.stderr)
        return 2
    try:
        tables = read_tables(path)
    except FileNotFoundError as err:
        print(f"auxilearn-hpo report: error: {err}", file=sys.stderr)
        return 2
    meta_file = path / "run.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        print(f"{meta['benchmark']} with {meta['backend']}: {meta['trials']} trials x {meta['epochs']} epochs "
              f"({meta['metric']}, {'higher' if meta['mode'] == 'max' else 'lower'} is better)")
    _print_tables(tables["trials"])
    return 0
