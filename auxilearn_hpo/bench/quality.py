"""The quality table: every weighting method on every shipped benchmark, over seeds.

``auxilearn-hpo bench quality [--seeds N]`` trains each method (the baselines, and AuxiLearn
with the linear and nonlinear combiners) with the task's default settings, scores the final
model on the held-out test set and prints the main-task test metric as mean +- std, AuxiLearn's
learned weights, and the checks each benchmark is expected to pass.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..benchmarks import make_task
from ..learner import AuxiliaryLearner

__all__ = ["run", "train_one", "METHODS", "BENCHMARKS", "checks"]

METHODS = ["single_task", "equal", "uncertainty", "dwa", "gradnorm", "cosine", "pcgrad", "linear", "nonlinear"]
BENCHMARKS = ["toy", "graded_noise", "scaled_regression", "digits"]


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def train_one(benchmark: str, method: str, seed: int) -> dict[str, Any]:
    """Train ``method`` on ``benchmark`` (seed ``seed``) with the task's defaults; score on test."""
    torch.manual_seed(seed)
    task = make_task(benchmark, seed=seed)
    learner = AuxiliaryLearner.from_task(task, method)
    start = time.perf_counter()
    reports = list(learner.fit(int(task.defaults.get("epochs", 10))))
    row: dict[str, Any] = {
        "benchmark": benchmark, "method": method, "seed": seed,
        "test_metric": float(task.metric_fn(learner.model, task.test_loader)),
        "metric_name": task.metric_name, "seconds": time.perf_counter() - start,
    }
    weights = reports[-1]["weights"]
    row.update({f"w/{k}": v for k, v in weights.items()})
    info = task.info
    if "w_star" in info:  # toy: distance of the shared linear map to the main optimum
        w = torch.cat([p.detach().reshape(-1) for p in learner.model.parameters()])
        row["dist_to_w_star"] = float((w - torch.tensor(info["w_star"], dtype=w.dtype)).norm())
    if benchmark == "graded_noise":  # do the learned weights fall with the label noise?
        aux = [n for j, n in enumerate(task.task_names) if j != task.main_task]
        row["spearman_w_noise"] = _spearman([weights[n] for n in aux], list(info["noise"]))
    return row


def _worker(args: tuple[str, str, int]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return train_one(*args)


def run(seeds: int = 10, benchmarks=BENCHMARKS, methods=METHODS, processes: int = 2) -> pd.DataFrame:
    """One row per (benchmark, method, seed)."""
    jobs = [(b, m, s) for b in benchmarks for m in methods for s in range(seeds)]
    if processes > 1:
        with mp.get_context("spawn").Pool(processes) as pool:
            rows = pool.map(_worker, jobs, chunksize=1)
    else:
        rows = [_worker(j) for j in jobs]
    return pd.DataFrame(rows)


def table(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std of the test metric (and diagnostics) per benchmark and method."""
    def fmt(s: pd.Series) -> str:
        s = s.dropna()
        return "" if s.empty else f"{s.mean():.4g} ± {s.std(ddof=0):.2g}"

    cols = [c for c in ("test_metric", "dist_to_w_star", "spearman_w_noise") if c in raw]
    out = raw.groupby(["benchmark", "method"], sort=False)[cols].agg(fmt).reset_index()
    out.insert(2, "metric", raw.groupby(["benchmark", "method"], sort=False)["metric_name"].first().to_numpy())
    return out


def learned_weights(raw: pd.DataFrame) -> pd.DataFrame:
    """AuxiLearn's mean learned effective weight per task (one row per benchmark and combiner)."""
    aux = raw[raw.method.isin(["linear", "nonlinear"])]
    wcols = [c for c in aux.columns if c.startswith("w/")]
    return aux.groupby(["benchmark", "method"], sort=False)[wcols].mean().round(3).dropna(axis=1, how="all")


def checks(raw: pd.DataFrame) -> pd.DataFrame:
    """The expectations of each benchmark, evaluated on the raw rows."""
    rows = []

    def mean(b: str, m: str, col: str = "test_metric") -> float:
        return float(raw[(raw.benchmark == b) & (raw.method == m)][col].mean())

    def add(name: str, value: float, ok: bool) -> None:
        rows.append({"check": name, "value": round(value, 4), "pass": bool(ok)})

    for m in ("linear", "nonlinear"):
        if "toy" in set(raw.benchmark):
            t = raw[(raw.benchmark == "toy") & (raw.method == m)]
            ratio = float(t["w/harmful"].mean() / t["w/helpful"].mean())
            ok = int((t["w/harmful"] < 0.1 * t["w/helpful"]).sum())
            add(f"toy/{m}: mean w_harmful / mean w_helpful < 0.1 (true in {ok}/{len(t)} seeds)", ratio, ratio < 0.1)
            d, ds, de = mean("toy", m, "dist_to_w_star"), mean("toy", "single_task", "dist_to_w_star"), mean("toy", "equal", "dist_to_w_star")
            add(f"toy/{m}: |W - W*| < single_task ({ds:.3g}) and equal ({de:.3g})", d, d < ds and d < de)
        if "graded_noise" in set(raw.benchmark):
            rho = mean("graded_noise", m, "spearman_w_noise")
            add(f"graded_noise/{m}: spearman(weight, noise) <= -0.8", rho, rho <= -0.8)
            e, ee = mean("graded_noise", m), mean("graded_noise", "equal")
            add(f"graded_noise/{m}: test mse < equal ({ee:.4g})", e, e < ee)
        if "scaled_regression" in set(raw.benchmark):
            e, ee, es = (mean("scaled_regression", x) for x in (m, "equal", "single_task"))
            add(f"scaled_regression/{m}: test mse < equal ({ee:.4g}) and single_task ({es:.4g})", e, e < ee and e < es)
        if "digits" in set(raw.benchmark):
            a = mean("digits", m)
            best = raw[(raw.benchmark == "digits") & ~raw.method.isin(["linear", "nonlinear"])].groupby("method")["test_metric"].mean()
            add(f"digits/{m}: accuracy >= best baseline ({best.idxmax()} {best.max():.4g})", a, a >= best.max())
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench quality", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--benchmarks", nargs="+", default=BENCHMARKS, choices=BENCHMARKS)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--csv", help="also write the raw per-seed rows to this CSV file")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    raw = run(args.seeds, args.benchmarks, args.methods, args.processes)
    if args.csv:
        raw.to_csv(args.csv, index=False)
    with pd.option_context("display.width", 220, "display.max_columns", 40, "display.max_colwidth", 90):
        print(f"Main-task test metric over {args.seeds} seeds (mean ± std; mse: lower is better, accuracy: higher)\n")
        print(table(raw).to_string(index=False))
        print("\nAuxiLearn's learned effective weights (mean over seeds)\n")
        print(learned_weights(raw).to_string())
        print("\nChecks\n")
        print(checks(raw).to_string(index=False))
    print(f"\n{len(raw)} runs in {time.perf_counter() - start:.0f} s")
    return raw
