"""The headline benchmark: learn the loss weights inside each trial, or search them as black-box hyperparameters?

``auxilearn-hpo bench search [--budget small|full] [--benchmarks ...] [--seed S] [--out DIR]``

Claim under test: learning the ``K`` continuous auxiliary-loss weights by implicit
differentiation *inside* each trial (AuxiLearn) reaches a given main-task test metric with far
fewer CPU-seconds than searching those ``K`` weights from *outside* the trials. Four approaches,
each given the same budget of cumulative CPU-seconds per benchmark:

==================  ==========================================================================
approach            what it does
==================  ==========================================================================
``auxilearn``       (i) AuxiLearn inside every trial; Optuna TPE searches a few outer settings:
                    combiner (``linear``, ``linear_exp`` = linear with log-weights, ``nonlinear``),
                    ``aux_lr`` (log-uniform), ``update_every``, ``steps`` (Neumann terms)
``tpe_weights``     (ii) Optuna TPE over the ``K`` auxiliary weights directly, one log-uniform
                    ``FloatDistribution`` per auxiliary task (main weight 1); every trial trains
                    with those weights fixed (:class:`~auxilearn_hpo.baselines.FixedWeights`)
``pbt_weights``     (iii) Ray Tune Population Based Training (asynchronous) adapting the same
                    ``K`` weights during training; a function trainable that checkpoints the full
                    learner state every epoch (the weights are *not* in the checkpoint, so a
                    perturbed config takes effect after an exploit). Populations are run one
                    after another, with new seeds, until the budget is spent
``equal``           (iv) all weights 1: one run, its result and its cost
==================  ==========================================================================

What is measured, and how (also printed with every table):

* **CPU-seconds of a trial** = ``time.process_time()`` of the process that trains it, from before
  the task is built to after the test metric is computed, with torch limited to one thread.
  For Ray Tune it is summed per epoch inside the trainable (restores and checkpoint writes
  included). Not counted: one warm-up per worker process (imports, a first task build), the
  sampler's time in the driver and Ray's own processes (driver, raylet, GCS); the driver's
  outside-trial CPU is printed as ``overhead_cpu_s`` and each approach's wall time too.
* **Selection**: at any cumulative CPU ``c``, an approach's answer is the finished trial (model)
  with the best **validation** metric among those finished by ``c``; the table reports that
  model's **test** metric. Test metrics are never used to select. A trial's metrics are those of
  its final epoch (the model whose test metric is known). PBT members finish only at the end
  of their population, so PBT has no answer before its first population ends.
* **Budget**: every approach keeps starting trials (populations) until its cumulative trial CPU
  reaches the budget; only trials that *finish* within the budget count at 100 %.
* **Target**: the better of the black-box approaches' (ii, iii) test metrics at 100 % of the
  budget. ``reach_cpu_s`` is the cumulative CPU at which an approach's answer first is at least
  as good as the target; ``speedup`` = the black-box winner's ``reach_cpu_s`` / this
  approach's (the goal for ``auxilearn`` is >= 10).

Both TPE approaches use ``TPESampler(seed=seed, n_startup_trials=5)`` and no pruning (pruning
would save CPU for both alike); every auxiliary weight of (ii) and (iii) is drawn log-uniform
in :data:`WEIGHT_RANGE`, ``[1e-4, 1e2]``, wide enough for the scaled tasks' good weights
(about ``c / sigma^2``) and for switching a harmful task nearly off. All approaches train the same
task seed (data, split, model initialisation), so differences come from the weighting alone.
Optuna approaches run in separate processes (two at a time by default), PBT on a local Ray
runtime with two CPUs started once (and shut down at the end if this command started it).

Budgets (``--budget``): ``small`` gives each approach 15 CPU-s per benchmark with half the
default epochs (``scaled_regression`` 50, ``digits`` 30) and populations of 4, about 3 minutes
of wall time on 2 cores; ``full`` gives 200 CPU-s with the default epochs (100, 60) and
populations of 8, 15-25 minutes (24 on a shared 2-core machine). ``--cpu-s`` overrides the budget.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

__all__ = [
    "APPROACHES", "BLACK_BOX", "BUDGETS", "Budget", "trajectory", "answer_at", "first_reaching",
    "summary_table", "run_optuna_approach", "run_equal", "run_pbt", "pbt_trainable", "run", "report", "plot",
    "main",
]

#: Approach keys in table order.
APPROACHES = ("auxilearn", "tpe_weights", "pbt_weights", "equal")
#: The black-box approaches whose final result sets the target.
BLACK_BOX = ("tpe_weights", "pbt_weights")
DESCRIPTIONS = {
    "auxilearn": "(i) AuxiLearn in each trial + TPE over outer settings",
    "tpe_weights": "(ii) TPE over the K loss weights (fixed per trial)",
    "pbt_weights": "(iii) PBT adapting the K loss weights",
    "equal": "(iv) equal weights, one run",
}
FRACTIONS = (0.25, 0.5, 1.0)

#: Range of every auxiliary weight searched by (ii) and (iii): log-uniform.
WEIGHT_RANGE = (1e-4, 1e2)


@dataclass(frozen=True)
class Budget:
    """One budget level: CPU-seconds per approach and benchmark, and the trial sizes."""

    cpu_s: float
    epochs: Mapping[str, int] = field(default_factory=dict)  # benchmark -> epochs (missing: task default)
    population: int = 4
    perturbations: int = 5  # perturbation points per PBT run: interval = epochs // (perturbations + 1)
    n_startup_trials: int = 5  # random trials before TPE models (both TPE approaches)


BUDGETS: dict[str, Budget] = {
    "small": Budget(cpu_s=15.0, epochs={"scaled_regression": 50, "digits": 30, "toy": 10}, population=4),
    "full": Budget(cpu_s=200.0, epochs={}, population=8),
}


# ------------------------------------------------------------------------------------------- analysis
def _better(a: float, b: float, mode: str) -> bool:
    """``a`` strictly better than ``b`` (a NaN ``b`` loses to any number)."""
    if math.isnan(b):
        return not math.isnan(a)
    return a < b if mode == "min" else a > b


def _at_least(a: float, target: float, mode: str) -> bool:
    return not math.isnan(a) and (a <= target if mode == "min" else a >= target)


def trajectory(events: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The best-so-far-by-validation curve of one approach.

    Args:
        events: one row per unit of work, with columns ``t_end`` (when it ended, any clock),
            ``cpu_s`` (its CPU-seconds), ``final`` (``True`` when it ends a trial, whose final
            ``val_metric`` and ``test_metric`` it holds). Rows that are not final only add CPU
            (e.g. PBT epochs).
        mode: ``"min"`` or ``"max"``, the direction of the metric.

    Returns:
        One row per finished trial in the order of ``t_end``: ``cum_cpu_s`` (all CPU spent up to
        and including that row), ``trial``, its ``val_metric``/``test_metric``, and the current
        answer ``best_val``/``best_test`` (the test metric of the trial with the best validation
        metric so far; on ties the earlier trial is kept; NaN validation never selected).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    cols = ["cum_cpu_s", "trial", "val_metric", "test_metric", "best_val", "best_test"]
    if events.empty:
        return pd.DataFrame(columns=cols)
    ev = events.sort_values("t_end", kind="stable").reset_index(drop=True)
    cum = ev["cpu_s"].astype(float).cumsum()
    rows, best_val, best_test = [], math.nan, math.nan
    for i, row in ev.iterrows():
        if not bool(row["final"]):
            continue
        val, test = float(row["val_metric"]), float(row["test_metric"])
        if _better(val, best_val, mode):
            best_val, best_test = val, test
        rows.append({"cum_cpu_s": float(cum[i]), "trial": row.get("trial", i), "val_metric": val,
                     "test_metric": test, "best_val": best_val, "best_test": best_test})
    return pd.DataFrame(rows, columns=cols)


def answer_at(traj: pd.DataFrame, cpu_s: float) -> float:
    """The approach's answer (test metric of the best-by-validation trial) once ``cpu_s``
    CPU-seconds are spent: trials finished at ``cum_cpu_s <= cpu_s`` count. NaN if none."""
    done = traj[traj["cum_cpu_s"] <= cpu_s + 1e-12]
    return float(done["best_test"].iloc[-1]) if len(done) else math.nan


def first_reaching(traj: pd.DataFrame, target: float, mode: str) -> float:
    """The first ``cum_cpu_s`` at which the answer is at least as good as ``target`` (NaN: never)."""
    if math.isnan(target):
        return math.nan
    for cpu, test in zip(traj["cum_cpu_s"], traj["best_test"]):
        if _at_least(float(test), target, mode):
            return float(cpu)
    return math.nan


def summary_table(
    events: pd.DataFrame, mode: str, budget_cpu_s: float, *, fractions: Sequence[float] = FRACTIONS,
    approaches: Sequence[str] | None = None, black_box: Sequence[str] = BLACK_BOX,
) -> tuple[pd.DataFrame, float]:
    """The budget table of one benchmark; returns ``(table, target)``.

    Columns: ``approach``, ``trials`` (finished within the budget), ``cpu_used_s`` (all trial CPU
    spent, which can exceed the budget by the last trial), ``test@<p>%`` (the answer after
    ``p`` % of ``budget_cpu_s``), ``reach_cpu_s`` and ``speedup`` (see the module docstring).
    ``target`` is the best ``test@100%`` over the ``black_box`` approaches present (NaN if none).
    """
    if approaches is None:
        approaches = [a for a in APPROACHES if a in set(events["approach"])]
        approaches += sorted(set(events["approach"]) - set(approaches))
    trajs = {a: trajectory(events[events["approach"] == a], mode) for a in approaches}
    finals = {a: answer_at(t, budget_cpu_s) for a, t in trajs.items()}
    target = math.nan
    for a in black_box:
        if a in finals and _better(finals[a], target, mode):
            target = finals[a]
    reach = {a: first_reaching(t, target, mode) for a, t in trajs.items()}
    bb_reach = [reach[a] for a in black_box if a in reach and not math.isnan(reach[a])]
    bb_cost = min(bb_reach) if bb_reach else math.nan
    rows = []
    for a in approaches:
        t = trajs[a]
        row: dict[str, Any] = {
            "approach": a,
            "trials": int((t["cum_cpu_s"] <= budget_cpu_s + 1e-12).sum()),
            "cpu_used_s": float(events.loc[events["approach"] == a, "cpu_s"].sum()),
        }
        for f in fractions:
            row[f"test@{f * 100:g}%"] = answer_at(t, f * budget_cpu_s)
        row["reach_cpu_s"] = reach[a]
        row["speedup"] = bb_cost / reach[a] if reach[a] > 0 else math.nan
        rows.append(row)
    return pd.DataFrame(rows), target


# ------------------------------------------------------------------------------------------- trials
_WARM: set[str] = set()


def _warm_up(benchmark: str, seed: int) -> None:
    """Pay a process's one-time costs outside the measured CPU: imports, a first task build and a
    first training epoch with a hyperstep and a checkpoint (torch initialises lazily on the first
    backward pass and optimizer step, about 1.5 CPU-s here, which would otherwise land on
    whichever trial a process runs first)."""
    if benchmark in _WARM:
        return
    import io

    import torch

    from auxilearn_hpo.integrations.trial import Trial

    trial = Trial(benchmark, {"seed": seed, "epochs": 1, "weighting": "linear", "update_every": 1})
    for _ in trial.reports():
        pass
    torch.save(trial.state_dict(), io.BytesIO())
    _WARM.add(benchmark)


def _aux_names(benchmark: str, seed: int) -> tuple[list[str], str]:
    from auxilearn_hpo.tasks import make_task

    task = make_task(benchmark, seed=seed)
    return [n for j, n in enumerate(task.task_names) if j != task.main_task], task.mode


def _timed_trial(benchmark: str, config: dict[str, Any]) -> dict[str, Any]:
    """Train one trial to the end; its final metrics, weights and process CPU-seconds."""
    from auxilearn_hpo.integrations.trial import Trial
    from auxilearn_hpo.report import EpochReport

    start = time.process_time()
    trial = Trial(benchmark, config)
    last = EpochReport(epoch=0)
    for report in trial.reports():
        last = report
    cpu = time.process_time() - start
    return {"cpu_s": cpu, "t_end": time.time(), "val_metric": last.val_metric, "test_metric": last.test_metric,
            "epoch": last.epoch, "weights": json.dumps({k: round(v, 6) for k, v in last.weights.items()})}


def _outer_config(trial: Any) -> dict[str, Any]:
    """(i): the outer settings TPE searches around AuxiLearn."""
    combiner = trial.suggest_categorical("weighting", ["linear", "linear_exp", "nonlinear"])
    config: dict[str, Any] = {
        "weighting": "nonlinear" if combiner == "nonlinear" else "linear",
        "aux_lr": trial.suggest_float("aux_lr", 1e-3, 0.5, log=True),
        "update_every": trial.suggest_categorical("update_every", [1, 5, 10]),
        "steps": trial.suggest_categorical("steps", [1, 3, 5]),
    }
    if combiner == "linear_exp":
        config["weighting_options"] = {"positive": "exp"}
    return config


def _weights_config(trial: Any, aux_names: Sequence[str], weight_range: tuple[float, float]) -> dict[str, Any]:
    """(ii): one log-uniform weight per auxiliary task, main weight 1, fixed during the trial."""
    low, high = weight_range
    weights = {n: trial.suggest_float(f"w_{n}", low, high, log=True) for n in aux_names}
    return {"weighting": "fixed", "weighting_options": {"weights": weights}}


def run_optuna_approach(
    benchmark: str, approach: str, budget_cpu_s: float, *, epochs: int | None = None, seed: int = 0,
    n_startup_trials: int = 5, weight_range: tuple[float, float] = WEIGHT_RANGE, max_trials: int = 10_000,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Run (i) ``"auxilearn"`` or (ii) ``"tpe_weights"`` with Optuna TPE (ask/tell, no pruning)
    until the trials' cumulative CPU reaches ``budget_cpu_s``.

    Returns ``(events, info)``: one event per trial (see :func:`trajectory`) and
    ``{"overhead_cpu_s": sampler CPU outside trials, "wall_s": ...}``.
    """
    import optuna
    import torch

    if approach not in ("auxilearn", "tpe_weights"):
        raise ValueError(f"approach must be 'auxilearn' or 'tpe_weights', got {approach!r}")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    _warm_up(benchmark, seed)
    aux, mode = _aux_names(benchmark, seed)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    study = optuna.create_study(
        direction="maximize" if mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
    )
    base = {"seed": seed, **({"epochs": int(epochs)} if epochs else {})}
    events: list[dict[str, Any]] = []
    spent = trial_cpu = 0.0
    while spent < budget_cpu_s and len(events) < max_trials:
        ot = study.ask()
        params = _outer_config(ot) if approach == "auxilearn" else _weights_config(ot, aux, weight_range)
        rec = _timed_trial(benchmark, {**base, **params})
        spent += rec["cpu_s"]
        trial_cpu += rec["cpu_s"]
        if math.isfinite(rec["val_metric"]):
            study.tell(ot, rec["val_metric"])
        else:
            study.tell(ot, state=optuna.trial.TrialState.FAIL)
        events.append({"benchmark": benchmark, "approach": approach, "run": 0, "trial": ot.number,
                       "final": True, "params": json.dumps(ot.params), **rec})
    info = {"overhead_cpu_s": time.process_time() - cpu0 - trial_cpu, "wall_s": time.perf_counter() - wall0}
    return events, info


def run_equal(benchmark: str, *, epochs: int | None = None, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(iv): one run with all weights 1."""
    import torch

    torch.set_num_threads(1)
    _warm_up(benchmark, seed)
    wall0 = time.perf_counter()
    config = {"seed": seed, "weighting": "equal", **({"epochs": int(epochs)} if epochs else {})}
    rec = _timed_trial(benchmark, config)
    event = {"benchmark": benchmark, "approach": "equal", "run": 0, "trial": 0, "final": True,
             "params": json.dumps({"weighting": "equal"}), **rec}
    return [event], {"overhead_cpu_s": 0.0, "wall_s": time.perf_counter() - wall0}


# ------------------------------------------------------------------------------------------- PBT
def pbt_trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable of (iii): fixed weights from ``config["w_<task>"]``, the full
    learner state checkpointed every epoch, each epoch's process CPU reported as ``cpu_s``.

    After a PBT exploit, Tune restarts it with the donor's checkpoint and this (perturbed)
    config: the weights live in a non-persistent buffer of
    :class:`~auxilearn_hpo.baselines.FixedWeights`, so the new ones take effect.
    """
    import torch
    from ray import tune

    from auxilearn_hpo.integrations.ray_tune import CHECKPOINT_FILE, load_state
    from auxilearn_hpo.integrations.trial import Trial

    torch.set_num_threads(1)
    benchmark, seed = config["benchmark"], int(config["seed"])
    _warm_up(benchmark, seed)
    mark = time.process_time()
    weights = {k[2:]: float(v) for k, v in config.items() if k.startswith("w_")}
    trial = Trial(benchmark, {"weighting": "fixed", "weighting_options": {"weights": weights},
                              "epochs": int(config["epochs"]), "seed": seed})
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trial.load_state_dict(load_state(checkpoint))
    for report in trial.reports():
        metrics = {
            "epoch": report.epoch, "val_metric": report.val_metric, "test_metric": report.test_metric,
            **{f"weights/{k}": v for k, v in report.weights.items()},
        }
        with tempfile.TemporaryDirectory(prefix="search-bench-ckpt-") as tmp:
            torch.save(trial.state_dict(), os.path.join(tmp, CHECKPOINT_FILE))
            now = time.process_time()
            metrics["cpu_s"], metrics["t_end"] = now - mark, time.time()
            mark = now  # the cost of report() itself lands in the next epoch
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _progress(result: Any) -> pd.DataFrame | None:
    """Every report of a Tune trial: its ``progress.csv`` (Ray 2.60's ``metrics_dataframe`` reads
    ``result.json``, which loses reports of a trial that PBT paused and resumed)."""
    path = os.path.join(result.path, "progress.csv")
    if os.path.exists(path):
        return pd.read_csv(path)
    return result.metrics_dataframe


def run_pbt(
    benchmark: str, budget_cpu_s: float, *, epochs: int | None = None, seed: int = 0, population: int = 4,
    perturbations: int = 5, weight_range: tuple[float, float] = WEIGHT_RANGE, storage_path: str | None = None,
    max_runs: int = 1000, cpus_per_member: float = 1.0, verbose: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """(iii): asynchronous PBT populations of ``population`` members, run one after another
    (seeds ``seed, seed+1, ...`` for the sampling of weights) until their trials' cumulative CPU
    reaches ``budget_cpu_s``. Needs a running Ray (see :func:`run`).

    Every ``epochs // (perturbations + 1)`` epochs a member in the bottom quarter copies the
    checkpoint of one in the top quarter and perturbs its weights (x0.8 / x1.2, or a fresh draw
    with probability 0.25). With ``cpus_per_member=1`` (the default) two members run at once on
    two CPUs and PBT pauses a member at each perturbation point while others wait, resuming it
    from its checkpoint later (in a reused actor); that restore is part of the measured CPU.
    Giving each member ``CPUs / population`` instead runs the whole population at once without
    pauses, but starts a worker process per member, which measured slower here (27 s against
    16 s of wall time per population on ``digits``); CPU-seconds are measured per process either way.

    Returns ``(events, info)``: one event per reported epoch (``final`` on each member's last).
    """
    import numpy as np
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    aux, mode = _aux_names(benchmark, seed)
    if epochs is None:
        from auxilearn_hpo.tasks import make_task

        epochs = make_task(benchmark, seed=seed).defaults.epochs
    interval = max(1, int(epochs) // (perturbations + 1))
    low, high = weight_range
    space = {f"w_{n}": tune.loguniform(low, high) for n in aux}
    own_storage = storage_path is None
    root = tempfile.mkdtemp(prefix="search-bench-ray-") if own_storage else os.path.abspath(storage_path)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    events: list[dict[str, Any]] = []
    spent, run_index = 0.0, 0
    try:
        while spent < budget_cpu_s and run_index < max_runs:
            random.seed(seed + run_index)  # PBT's explore/exploit draws use `random`
            np.random.seed(seed + run_index)
            scheduler = PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=interval, hyperparam_mutations=space,
                quantile_fraction=0.25, resample_probability=0.25, synch=False,
            )
            tuner = tune.Tuner(
                tune.with_resources(pbt_trainable, {"cpu": cpus_per_member}),
                param_space={**space, "benchmark": benchmark, "epochs": int(epochs), "seed": seed},
                tune_config=tune.TuneConfig(
                    metric="val_metric", mode=mode, num_samples=population, scheduler=scheduler,
                    search_alg=BasicVariantGenerator(random_state=seed + run_index), reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    storage_path=root, name=f"pbt-{benchmark}-{run_index}", verbose=0,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # PBT exploits read old ones
                    failure_config=tune.FailureConfig(max_failures=1),
                ),
            )
            run_wall = time.perf_counter()
            grid = tuner.fit()
            run_wall = time.perf_counter() - run_wall
            for result in grid:
                df = _progress(result)
                if df is None or df.empty or "cpu_s" not in df:
                    continue
                trial_id = f"{run_index}:{df['trial_id'].iloc[0] if 'trial_id' in df else len(events)}"
                last_t = float(df["t_end"].max())
                for _, row in df.iterrows():
                    t_end = float(row["t_end"])
                    final = t_end == last_t and int(row["epoch"]) >= int(epochs)
                    weights = {c.split("/", 1)[1]: round(float(row[c]), 6) for c in df.columns if c.startswith("weights/")}
                    events.append({
                        "benchmark": benchmark, "approach": "pbt_weights", "run": run_index, "trial": trial_id,
                        "final": bool(final), "epoch": int(row["epoch"]), "cpu_s": float(row["cpu_s"]),
                        "t_end": t_end, "val_metric": float(row["val_metric"]),
                        "test_metric": float(row["test_metric"]) if final else math.nan,
                        "params": json.dumps({f"w_{k}": v for k, v in weights.items() if k in aux}),
                        "weights": json.dumps(weights),
                    })
                    spent += float(row["cpu_s"])
            if verbose:
                print(f"    PBT run {run_index}: {population} members, {run_wall:.0f} s wall, "
                      f"{spent:.1f} of {budget_cpu_s:g} CPU-s spent", flush=True)
            run_index += 1
    finally:
        if own_storage:
            shutil.rmtree(root, ignore_errors=True)
    info = {"overhead_cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}
    return events, info


# ------------------------------------------------------------------------------------------- driver
def _job(args: tuple[str, str, float, int | None, int, int]) -> tuple[str, str, list[dict[str, Any]], dict[str, float]]:
    benchmark, approach, cpu_s, epochs, seed, n_startup = args
    if approach == "equal":
        events, info = run_equal(benchmark, epochs=epochs, seed=seed)
    else:
        events, info = run_optuna_approach(benchmark, approach, cpu_s, epochs=epochs, seed=seed,
                                           n_startup_trials=n_startup)
    return benchmark, approach, events, info


def run(
    benchmarks: Sequence[str] = ("scaled_regression", "digits"), *, budget: str | Budget = "small", seed: int = 0,
    approaches: Sequence[str] = APPROACHES, processes: int = 2, cpu_s: float | None = None,
    verbose: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the benchmark; returns ``(events, info)`` DataFrames.

    ``events``: the raw trajectory, one row per trial (Optuna approaches, equal) or per PBT
    epoch, with ``benchmark``, ``approach``, ``run``, ``trial``, ``final``, ``epoch``, ``cpu_s``,
    ``t_end``, ``val_metric``, ``test_metric`` (final rows), ``params`` and ``weights`` (JSON).
    ``info``: per benchmark and approach, ``wall_s``, ``overhead_cpu_s``, ``budget_cpu_s``, ``mode``.
    """
    spec = BUDGETS[budget] if isinstance(budget, str) else budget
    budget_cpu = float(cpu_s if cpu_s is not None else spec.cpu_s)
    unknown = sorted(set(approaches) - set(APPROACHES))
    if unknown:
        raise ValueError(f"unknown approach(es) {unknown}; choose from {list(APPROACHES)}")
    from auxilearn_hpo.tasks import make_task, names

    bad = [b for b in benchmarks if b not in names()]
    if bad:
        raise ValueError(f"unknown benchmark(s) {bad}; choose from {names()}")
    modes = {b: make_task(b, seed=seed).mode for b in benchmarks}
    all_events: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []

    def log(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    def collect(b: str, a: str, events: list[dict[str, Any]], info: Mapping[str, float]) -> None:
        all_events.extend(events)
        infos.append({"benchmark": b, "approach": a, "budget_cpu_s": budget_cpu, "mode": modes[b], **info})
        log(f"  {b:>18} {a:<12} {sum(1 for e in events if e['final']):4d} trials  "
            f"{sum(e['cpu_s'] for e in events):7.1f} CPU-s  {info['wall_s']:6.1f} s wall")

    jobs = [(b, a, budget_cpu, spec.epochs.get(b), seed, spec.n_startup_trials)
            for b in benchmarks for a in approaches if a != "pbt_weights"]
    # the longest jobs first, so that two processes finish together
    jobs.sort(key=lambda j: j[1] == "equal")
    if processes > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(processes, len(jobs))) as pool:
            for b, a, events, info in pool.imap_unordered(_job, jobs):
                collect(b, a, events, info)
    else:
        for job in jobs:
            collect(*_job(job))

    if "pbt_weights" in approaches:
        from auxilearn_hpo.integrations.ray_tune import init_local

        import ray

        # address='local': a new runtime even if another Ray runs on this machine (ray.init() would
        # otherwise join the cluster named in /tmp/ray/ray_current_cluster, e.g. a test's)
        started = init_local(num_cpus=max(1, processes), log_to_driver=False, address="local")
        try:
            for b in benchmarks:
                events, info = run_pbt(b, budget_cpu, epochs=spec.epochs.get(b), seed=seed,
                                       population=spec.population, perturbations=spec.perturbations,
                                       verbose=verbose)
                collect(b, "pbt_weights", events, info)
        finally:
            if started:
                ray.shutdown()
    cols = ["benchmark", "approach", "run", "trial", "final", "epoch", "cpu_s", "t_end", "val_metric",
            "test_metric", "params", "weights"]
    events_df = pd.DataFrame(all_events, columns=cols)
    return events_df, pd.DataFrame(infos)


def plot(events: pd.DataFrame, info: pd.DataFrame, path: str) -> bool:
    """Best test metric (selected by validation) vs cumulative CPU-seconds, log x, one panel per
    benchmark and one line per approach; returns ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    benchmarks = list(dict.fromkeys(events["benchmark"]))
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6 * len(benchmarks), 4.2), squeeze=False)
    for ax, b in zip(axes[0], benchmarks):
        sub = info[info["benchmark"] == b]
        mode, budget_cpu = sub["mode"].iloc[0], float(sub["budget_cpu_s"].iloc[0])
        for a in [x for x in APPROACHES if x in set(events["approach"])]:
            t = trajectory(events[(events["benchmark"] == b) & (events["approach"] == a)], mode)
            t = t[t["best_test"].notna()]
            if t.empty:
                continue
            if len(t) == 1:
                ax.plot(t["cum_cpu_s"], t["best_test"], "o", label=DESCRIPTIONS[a])
            else:
                ax.step(t["cum_cpu_s"], t["best_test"], where="post", marker=".", label=DESCRIPTIONS[a])
        ax.axvline(budget_cpu, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative trial CPU-seconds (process_time)")
        ax.set_ylabel(f"test metric of best-by-validation trial ({'lower' if mode == 'min' else 'higher'} is better)")
        ax.set_title(b)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def report(events: pd.DataFrame, info: pd.DataFrame, *, out: str | None = None) -> dict[str, pd.DataFrame]:
    """Print the budget table of every benchmark; with ``out``, write the CSVs (and the plot)."""
    tables = {}
    for b in dict.fromkeys(info["benchmark"]):
        sub = info[info["benchmark"] == b]
        mode, budget_cpu = sub["mode"].iloc[0], float(sub["budget_cpu_s"].iloc[0])
        table, target = summary_table(events[events["benchmark"] == b], mode, budget_cpu)
        table = table.merge(sub[["approach", "wall_s", "overhead_cpu_s"]], on="approach", how="left")
        tables[b] = table
        print(f"\n{b}: budget {budget_cpu:g} CPU-s per approach; metric test "
              f"{'(lower is better)' if mode == 'min' else '(higher is better)'}; "
              f"black-box target (best of ii/iii at 100%): {_fmt(target)}")
        print(table.to_string(index=False, formatters={c: _fmt for c in table.columns if table[c].dtype == float}))
    print("\nCPU-s = time.process_time() of the trial's process (torch on 1 thread), summed over trials; "
          "excludes per-process warm-up, sampler/driver CPU (overhead_cpu_s) and Ray's own daemons. "
          "Each approach's answer = test metric of the trial with the best VALIDATION metric finished by then. "
          "speedup = black-box winner's reach_cpu_s / this approach's reach_cpu_s.")
    if out:
        os.makedirs(out, exist_ok=True)
        events.to_csv(os.path.join(out, "search_bench_events.csv"), index=False)
        pd.concat([t.assign(benchmark=b) for b, t in tables.items()]).to_csv(
            os.path.join(out, "search_bench_table.csv"), index=False)
        if plot(events, info, os.path.join(out, "search_bench.png")):
            print(f"wrote {out}/search_bench_events.csv, search_bench_table.csv, search_bench.png")
        else:
            print(f"wrote {out}/search_bench_events.csv, search_bench_table.csv (no plot: matplotlib missing)")
    return tables


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench search", description=__doc__.splitlines()[0])
    ap.add_argument("--budget", choices=list(BUDGETS), default="small",
                    help="small: about 3 minutes on 2 cores; full: 15-25 minutes (default small)")
    ap.add_argument("--benchmarks", nargs="+", default=["scaled_regression", "digits"])
    ap.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=list(APPROACHES))
    ap.add_argument("--seed", type=int, default=0, help="task seed (data, split, model) and sampler seed")
    ap.add_argument("--cpu-s", type=float, default=None, help="override the budget's CPU-seconds per approach")
    ap.add_argument("--processes", type=int, default=2, help="parallel processes / Ray CPUs (default 2)")
    ap.add_argument("--out", default=None, help="folder for the raw trajectory CSV, the table CSV and a PNG plot")
    args = ap.parse_args(list(argv) if argv is not None else None)
    spec = BUDGETS[args.budget]
    wall0 = time.perf_counter()
    print(f"search bench: budget={args.budget} ({args.cpu_s or spec.cpu_s:g} CPU-s per approach and benchmark), "
          f"benchmarks={args.benchmarks}, seed={args.seed}")
    events, info = run(args.benchmarks, budget=spec, seed=args.seed, approaches=args.approaches,
                       processes=args.processes, cpu_s=args.cpu_s)
    report(events, info, out=args.out)
    print(f"\nwall time {time.perf_counter() - wall0:.0f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
