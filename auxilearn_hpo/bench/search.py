"""Learn the loss weights inside each trial, or search them as black-box hyperparameters?

``auxilearn-hpo bench search [--budget small|full] [--benchmarks ...] [--seeds N|A-B|a,b] [--final-data all|train] [--out DIR]``

Claim under test: learning the ``K`` auxiliary-loss weights by implicit differentiation *inside*
each trial, with an outer search over the settings that gradients cannot reach, reaches a better
main-task test metric for the same CPU-seconds than searching those ``K`` weights from outside.
Every approach runs the shipped adapters exactly as users call them
(:func:`auxilearn_hpo.integrations.optuna.objective` in an Optuna study,
:func:`auxilearn_hpo.integrations.ray_tune.run` with its trainable); nothing here trains:

==================  ==========================================================================
approach            what it runs
==================  ==========================================================================
``auxilearn``       Optuna TPE over :func:`~auxilearn_hpo.integrations.space.warm_space`: the
                    default outer space (weighting, its parametrisation, normalisation and
                    starting weights, ``aux_lr`` over three decades, ``update_every``, solver and
                    steps) plus ``hold_gain``. After the first trial, a trial either learns on
                    from the best finished trial's weights (same parametrisation) or trains with
                    the best learned per-task weights held fixed, every auxiliary weight times
                    ``hold_gain`` (a held trial that would repeat one is pruned untrained); the
                    shipped pruner setup (median, after a quarter of the epochs, over the
                    learning trials' curves; held trials never pruned)
``auxilearn_pbt``   Ray Tune Population Based Training: members learn the weights by
                    hypergradients, PBT copies the full learner state of good members into bad
                    ones and perturbs ``aux_lr``, ``update_every``, solver and steps
                    (``ray_tune.run(..., scheduler="pbt")``); populations one after another
``tpe_weights``     Optuna TPE over the ``K`` auxiliary weights, one log-uniform
                    ``[1e-4, 1e2]`` per auxiliary (``weighting="fixed"``, main weight 1), same
                    study setup as ``auxilearn``
``pbt_weights``     Population Based Training over the same ``K`` weights (fixed within an
                    interval, perturbed on exploit), same setup as ``auxilearn_pbt``
``equal``           all weights 1: one trial
==================  ==========================================================================

Every search's first trial is its user's natural default (:func:`first_point`): the shipped
learner defaults for ``auxilearn`` (what ``integrations.optuna.run`` and ``ray_tune.run`` start
from) and for one member of every ``auxilearn_pbt`` population; all auxiliary weights 1 for the
first ``tpe_weights`` trial and one member of every ``pbt_weights`` population.

Accounting (printed with every table):

* **CPU-seconds** = ``time.process_time()`` of the process that trains each trial, summed over
  every trial of every process (two Optuna processes, or two Ray workers, at a time): the
  objective's ``user_attrs["cpu_s"]`` (the sampler's suggestions, task build, training,
  evaluation, reporting) and the
  trainable's per-epoch ``cpu_s`` (the same, restores after PBT exploits included). Torch runs on
  one thread in every process. **Checkpoints are counted for no approach**: the trainable
  leaves its checkpoint writes out of ``cpu_s`` (Optuna approaches write none). Not counted
  either: each process's one-time start (imports, torch's lazy initialisation: a warm-up trial
  in Optuna processes, a worker set-up hook in Ray's), Ray's searchers and schedulers in the
  driver, and Ray's own daemons.
* **Selection**: an approach's answer at cumulative CPU ``c`` is the test metric of the trial
  with the best **validation score** (:func:`~auxilearn_hpo.records.trial_score`, the mean
  validation metric of its final model's last epochs, a refit's where the final model is one;
  the one definition of best of the study, the Ray grid and every table) among the trials that ran all their epochs by ``c``. Test metrics are never used to
  select. Pruned trials cost CPU and are never an answer. PBT members finish when their
  population does.
* **Budget**: every approach keeps starting trials (populations) until its trials' cumulative CPU
  reaches the budget; ``summary.csv`` gives the answer at 25 %, 50 % and 100 % of it.

Budgets (``--budget``): ``small``, 15 CPU-s per approach, benchmark and seed with half the
default epochs (``scaled_regression`` 50, ``digits`` 30) and populations of 4; ``full``, 200 CPU-s
with the default epochs and populations of 8. ``--cpu-s`` overrides the budget.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
from .seeds import parse_seeds
from .search_tables import (ACCOUNTING, APPROACHES, FRACTIONS, LEARNED, answer_at, checks, curve, first_reaching,
                            mean_curve, plot, report, summary, trajectory)

__all__ = [
    "APPROACHES", "BENCHMARKS", "LEARNED", "FRACTIONS", "ACCOUNTING", "BUDGETS", "Budget", "WEIGHT_RANGE", "trajectory", "answer_at",
    "first_reaching", "weights_space", "approach_space", "first_point", "run_optuna_approach", "run_pbt_approach",
    "run", "summary", "curve", "mean_curve", "checks", "plot", "report", "main",
]

#: The benchmarks searched by default: two where auxiliaries help, one where they do not.
BENCHMARKS = ("scaled_regression", "digits", "fewshot_digits")

#: Range of every auxiliary weight searched by ``tpe_weights`` and ``pbt_weights``: log-uniform.
WEIGHT_RANGE = (1e-4, 1e2)

@dataclass(frozen=True)
class Budget:
    """One budget level: CPU-seconds per approach, benchmark and seed, and the trial sizes."""

    cpu_s: float
    epochs: Mapping[str, int] = field(default_factory=dict)  # benchmark -> epochs (missing: task default)
    population: int = 4
    n_startup_trials: int = 5  # random trials before TPE models (both TPE approaches)


BUDGETS: dict[str, Budget] = {
    "small": Budget(cpu_s=15.0, epochs={"scaled_regression": 50, "digits": 30, "toy": 10}, population=4),
    "full": Budget(cpu_s=200.0, epochs={}, population=8),
}


# ------------------------------------------------------------------------------------------- spaces
def _task_info(benchmark: str, seed: int) -> dict[str, Any]:
    from auxilearn_hpo.integrations.trial import Trial

    trial = Trial(benchmark, {"seed": seed, "epochs": 1, "weighting": "equal"})
    task = trial.task
    return {"aux": [n for j, n in enumerate(task.task_names) if j != task.main_task], "mode": task.mode,
            "metric_name": task.metric_name, "epochs": task.defaults.epochs, "val_source": trial.val_source}


def weights_space(aux_names: Sequence[str], weight_range: tuple[float, float] = WEIGHT_RANGE) -> dict[str, Any]:
    """One log-uniform weight per auxiliary task, main weight 1, fixed within a trial (or a PBT interval)."""
    from auxilearn_hpo.integrations.space import LogUniform

    low, high = weight_range
    return {"weighting": "fixed", "weighting_options": {"weights": {n: LogUniform(low, high) for n in aux_names}}}


def approach_space(approach: str, aux_names: Sequence[str]) -> dict[str, Any]:
    """The space an approach searches (outer settings, or the weights themselves)."""
    from auxilearn_hpo.integrations.space import default_space, warm_space

    if approach in LEARNED:
        return warm_space() if approach == "auxilearn" else default_space()
    if approach in ("tpe_weights", "pbt_weights"):
        return weights_space(aux_names)
    if approach == "equal":
        return {"weighting": "equal"}
    raise ValueError(f"unknown approach {approach!r}; choose from {list(APPROACHES)}")


def first_point(approach: str, aux_names: Sequence[str]) -> dict[str, Any]:
    """Each search's first trial (nested like its space), its user's natural default: the shipped
    learner defaults for the learned approaches
    (:func:`~auxilearn_hpo.integrations.space.default_point`, what the adapters' ``run`` starts
    from), every auxiliary weight 1 for the weight searches, nothing for ``equal``."""
    from auxilearn_hpo.integrations.space import default_point

    if approach in LEARNED:
        return default_point(approach_space(approach, aux_names))
    if approach in ("tpe_weights", "pbt_weights"):
        return {"weighting_options": {"weights": {n: 1.0 for n in aux_names}}}
    return {}


# ------------------------------------------------------------------------------------------- runs
_WARM: set[str] = set()


def _warm_up(benchmarks: Sequence[str], seed: int = 0) -> None:
    """Pay a process's one-time costs outside the measured CPU: imports, a first task build and a
    first epoch with hypersteps and a checkpoint (torch initialises lazily on the first backward
    pass and optimizer step, about 1.5 CPU-s here, which would otherwise land on the first trial)."""
    import io

    import torch

    from auxilearn_hpo.integrations.trial import Trial

    torch.set_num_threads(1)
    for benchmark in benchmarks:
        if benchmark in _WARM:
            continue
        trial = Trial(benchmark, {"seed": seed, "epochs": 1, "weighting": "linear", "update_every": 1})
        for _ in trial.reports():
            pass
        torch.save(trial.state_dict(), io.BytesIO())
        _WARM.add(benchmark)


def _ray_worker_setup() -> None:
    """``worker_process_setup_hook`` of the Ray workers: quiet loggers and the warm-up."""
    from auxilearn_hpo.integrations.ray_tune import quiet_worker

    quiet_worker()
    names = [b for b in os.environ.get("AUXILEARN_BENCH_WARM", "").split(",") if b]
    _warm_up(names)


def run_optuna_approach(
    benchmark: str, approach: str, budget_cpu_s: float, *, epochs: int | None = None, seed: int = 0,
    n_startup_trials: int = 5, max_trials: int = 10_000, final_data: str = "all",
) -> list[dict[str, Any]]:
    """``auxilearn``, ``tpe_weights`` or ``equal`` with :func:`~auxilearn_hpo.integrations.optuna.objective`
    in an Optuna study (TPE, median pruner) until the trials' CPU reaches ``budget_cpu_s``
    (``equal``: one trial). Returns one event per trial (see :func:`trajectory`)."""
    from auxilearn_hpo.integrations import optuna as aux_optuna
    from auxilearn_hpo.integrations.space import flat_params

    from .studies import optimize_within, quiet, tpe_sampler

    quiet()
    _warm_up([benchmark], seed)
    info = _task_info(benchmark, seed)
    fixed = {"seed": seed, "final_data": final_data, **({"epochs": int(epochs)} if epochs else {})}
    func = aux_optuna.objective(benchmark, approach_space(approach, info["aux"]), fixed=fixed)
    first = flat_params(first_point(approach, info["aux"]))
    trials = optimize_within(
        func, budget_cpu_s, direction="maximize" if info["mode"] == "max" else "minimize",
        sampler=tpe_sampler(seed, n_startup_trials), max_trials=1 if approach == "equal" else max_trials,
        enqueue=[first] if first else [])
    events = []
    for t in trials:
        attrs, finished = t["user_attrs"], t["state"] == "complete" and t["value"] is not None
        events.append({
            "benchmark": benchmark, "approach": approach, "seed": seed, "final_data": final_data,
            "trial": str(t["number"]),
            "order": t["number"], "final": bool(finished), "cpu_s": float(attrs.get("cpu_s") or 0.0),
            "val_score": float(t["value"]) if finished else math.nan,
            "test_metric": float(attrs.get("test_metric") or math.nan) if finished else math.nan,
            "state": t["state"], "warm_started_from": attrs.get("warm_started_from"),
            "held": bool(attrs.get("held")), "twin_of": attrs.get("twin_of"),
        })
    return events


def run_pbt_approach(
    benchmark: str, approach: str, budget_cpu_s: float, *, epochs: int | None = None, seed: int = 0,
    population: int = 4, max_runs: int = 1000, final_data: str = "all",
) -> list[dict[str, Any]]:
    """``auxilearn_pbt`` or ``pbt_weights``: ``ray_tune.run(..., scheduler="pbt")`` populations one
    after another (new seeds) until their CPU reaches ``budget_cpu_s``. Needs a running Ray.
    Returns one event per reported epoch (``final`` on each member's last)."""
    import numpy as np

    from auxilearn_hpo.integrations import ray_tune
    from auxilearn_hpo.integrations.space import to_tune

    info = _task_info(benchmark, seed)
    epochs = int(epochs or info["epochs"])
    space = to_tune(approach_space(approach, info["aux"]))
    first = first_point(approach, info["aux"])  # one member of every population starts there
    root = tempfile.mkdtemp(prefix="search-bench-ray-")
    events: list[dict[str, Any]] = []
    spent, run_index = 0.0, 0
    try:
        while spent < budget_cpu_s and run_index < max_runs:
            random.seed(seed * 1000 + run_index)  # PBT's explore/exploit draws use `random`
            np.random.seed(seed * 1000 + run_index)
            _, grid = ray_tune.run(
                benchmark, param_space=space, fixed={"seed": seed, "epochs": epochs, "final_data": final_data},
                num_samples=population,
                scheduler="pbt", search_alg=ray_tune.random_search(seed * 1000 + run_index, [first]),
                storage_path=root, name=f"{approach}-{benchmark}-{seed}-{run_index}", resume=False,
                max_failures=1, keep_checkpoints=4,
            )
            for result in grid:
                progress = os.path.join(result.path, "progress.csv")
                df = pd.read_csv(progress) if os.path.exists(progress) else result.metrics_dataframe
                if df is None or df.empty or "cpu_s" not in df:
                    continue
                trial_id = f"{run_index}:{df['trial_id'].iloc[0] if 'trial_id' in df else len(events)}"
                for k, row in enumerate(df.to_dict("records")):
                    final = k == len(df) - 1 and int(row["epoch"]) >= epochs
                    events.append({
                        "benchmark": benchmark, "approach": approach, "seed": seed, "final_data": final_data,
                        "trial": trial_id,
                        # PBT members run two at a time: order epochs by when they were reported
                        "order": (run_index, float(row.get("timestamp", 0)), float(row.get("time_total_s", 0))),
                        "final": bool(final), "cpu_s": float(row["cpu_s"]),
                        "val_score": float(row["score"]) if final else math.nan,
                        "test_metric": float(row["test_metric"]) if final else math.nan,
                        "state": "completed" if final else "epoch", "warm_started_from": None,
                        "held": False, "twin_of": None,
                    })
                    spent += float(row["cpu_s"])
            run_index += 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return events


def _job(args: tuple[str, str, float, int | None, int, int, str]) -> list[dict[str, Any]]:
    benchmark, approach, cpu_s, epochs, seed, n_startup, final_data = args
    import torch

    torch.set_num_threads(1)
    return run_optuna_approach(benchmark, approach, cpu_s, epochs=epochs, seed=seed, n_startup_trials=n_startup,
                               final_data=final_data)


def run(
    benchmarks: Sequence[str] = BENCHMARKS, *, budget: str | Budget = "small",
    seeds: Sequence[int] = (0,), approaches: Sequence[str] = APPROACHES, processes: int = 2,
    cpu_s: float | None = None, verbose: bool = True, final_data: str = "all",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the benchmark; returns ``(events, info)``. ``final_data`` is every trial's
    (:data:`~auxilearn_hpo.integrations.trial.FINAL_DATA`): ``"all"``, every final model on
    train ∪ auxiliary set (a learned trial's cross-fitting and refit in its CPU-seconds).

    ``events``: one row per trial (Optuna approaches) or per PBT epoch, with ``benchmark``,
    ``approach``, ``seed``, ``final_data``, ``trial``, ``order``, ``final``, ``cpu_s``,
    ``val_score``, ``test_metric``, ``state``, ``warm_started_from``, ``held`` (a held trial)
    and ``twin_of`` (the finished trial a pruned held repeat names). ``info``: one row per benchmark with ``mode``,
    ``metric_name``, ``val_source``, ``budget_cpu_s``, ``final_data``.
    """
    from auxilearn_hpo.integrations.trial import FINAL_DATA

    if final_data not in FINAL_DATA:
        raise ValueError(f"--final-data must be one of {list(FINAL_DATA)}, got {final_data!r}")
    spec = BUDGETS[budget] if isinstance(budget, str) else budget
    budget_cpu = float(cpu_s if cpu_s is not None else spec.cpu_s)
    unknown = sorted(set(approaches) - set(APPROACHES))
    if unknown:
        raise ValueError(f"--approaches: unknown approach(es) {unknown}; choose from {list(APPROACHES)}")
    from auxilearn_hpo.tasks import names

    bad = [b for b in benchmarks if b not in names()]
    if bad:
        raise ValueError(f"--benchmarks: unknown benchmark(s) {bad}; choose from {names()}")
    if not budget_cpu > 0:
        raise ValueError(f"--cpu-s must be > 0, got {budget_cpu!r}")
    info = pd.DataFrame([{"benchmark": b, **{k: v for k, v in _task_info(b, 0).items() if k != "aux"},
                          "budget_cpu_s": budget_cpu, "final_data": final_data} for b in benchmarks])
    all_events: list[dict[str, Any]] = []

    def log(events: list[dict[str, Any]]) -> None:
        all_events.extend(events)
        if verbose and events:
            e = events[0]
            print(f"  {e['benchmark']:>18} {e['approach']:<14} seed {e['seed']}  "
                  f"{len({x['trial'] for x in events}):4d} trials  {sum(x['cpu_s'] for x in events):7.1f} CPU-s",
                  flush=True)

    jobs = [(b, a, budget_cpu, spec.epochs.get(b), s, spec.n_startup_trials, final_data)
            for s in seeds for b in benchmarks for a in approaches if a in ("auxilearn", "tpe_weights", "equal")]
    jobs.sort(key=lambda j: j[1] == "equal")  # the long jobs first, so that the processes end together
    if processes > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
            for events in pool.imap_unordered(_job, jobs):
                log(events)
    else:
        for job in jobs:
            log(_job(job))

    ray_approaches = [a for a in approaches if a in ("auxilearn_pbt", "pbt_weights")]
    if ray_approaches:
        from auxilearn_hpo.integrations import ray_tune

        started = ray_tune.init_local(num_cpus=max(1, processes), log_to_driver=False, runtime_env={
            "worker_process_setup_hook": _ray_worker_setup, "env_vars": {"AUXILEARN_BENCH_WARM": ",".join(benchmarks)}})
        try:
            for s in seeds:
                for b in benchmarks:
                    for a in ray_approaches:
                        log(run_pbt_approach(b, a, budget_cpu, epochs=spec.epochs.get(b), seed=s,
                                             population=spec.population, final_data=final_data))
        finally:
            if started:
                ray_tune.shutdown()
    cols = ["benchmark", "approach", "seed", "final_data", "trial", "order", "final", "cpu_s", "val_score", "test_metric", "state",
            "warm_started_from", "held", "twin_of"]
    return pd.DataFrame(all_events, columns=cols), info


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench search", description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=list(BUDGETS), default="small",
                    help="small: 15 CPU-s per approach, benchmark and seed; full: 200 (default small)")
    ap.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS),
                    help=f"default: {' '.join(BENCHMARKS)}")
    ap.add_argument("--final-data", choices=["all", "train"], default="all",
                    help="all (default): every final model trains on train ∪ auxiliary set, a learned trial's "
                         "cross-fitting and refit counted; train: the paper's protocol")
    ap.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=list(APPROACHES))
    ap.add_argument("--seeds", default="1", help="task (data, split, model) and sampler seeds: a count N (0..N-1), "
                    "a range A-B (both ends) or a list 3,7,9 (default 1)")
    ap.add_argument("--cpu-s", type=float, default=None, help="override the budget's CPU-seconds per approach")
    ap.add_argument("--processes", type=int, default=2, help="parallel processes / Ray CPUs (default 2)")
    ap.add_argument("--out", default=None, help="folder for summary.csv, curve.csv, events.csv and search.png")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        print(f"auxilearn-hpo bench search: error: {err}", file=sys.stderr)
        return 2
    if args.processes < 1:
        print("auxilearn-hpo bench search: error: --processes must be >= 1", file=sys.stderr)
        return 2
    spec = BUDGETS[args.budget]
    wall0 = time.perf_counter()
    print(f"search bench: budget={args.budget} ({args.cpu_s or spec.cpu_s:g} CPU-s per approach, benchmark and "
          f"seed), benchmarks={args.benchmarks}, seeds={args.seeds}, final data: "
          f"{'train ∪ auxiliary set' if args.final_data == 'all' else 'the training split (the paper)'}")
    try:
        events, info = run(args.benchmarks, budget=spec, seeds=seeds, approaches=args.approaches,
                           processes=args.processes, cpu_s=args.cpu_s, final_data=args.final_data)
    except ValueError as err:
        print(f"auxilearn-hpo bench search: error: {err}", file=sys.stderr)
        return 2
    report(events, info, out=args.out)
    print(f"\nwall time {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
