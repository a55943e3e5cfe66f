"""The quality table: every weighting on every shipped benchmark, over seeds.

``auxilearn-hpo bench quality [--seeds N] [--csv F]`` trains each weighting with the task's own
training settings (epochs, model learning rate, batch size) and, for the learned weightings,
the shipped defaults of :class:`~auxilearn_hpo.learner.LearnerConfig` (the same on every
benchmark), scores the final model on the held-out test set and prints:

* the main-task test metric, mean +- std over seeds, and ``gain_recovered``:
  ``(weighting - best(single_task, equal)) / (oracle - best(single_task, equal))``, signed so that
  1 means "as good as the oracle" and 0 "no better than the best trivial weighting" (blank
  where the oracle is not better than that by more than a standard error: no gain exists);
* ``oracle``: fixed weights known to be best by construction, or found by a documented search
  (``Task.info["oracle_weights"]``: inverse noise variance on the helpful tasks and 0 on the
  harmful ones on ``toy`` and ``graded_noise``, the main task alone on ``digits``, the helpful
  attributes at the main task's weight on ``fewshot_digits``, and on ``scaled_regression`` the
  clean ``s1`` alone, found by the validation search
  :func:`~auxilearn_hpo.tasks.scaled_regression.search_oracle`);
* the learned weights of the harmful tasks relative to the helpful ones, where a benchmark
  knows which are which;
* the checks the default AuxiLearn weighting (``linear``) must pass.

Benchmarks that learn auxiliary labels (:data:`LABEL_BENCHMARKS`, whose tasks set
``Task.label_generator``) run :data:`LABEL_COMPARED` instead: single-task, the hand-designed
auxiliary labels (``hand_labels``: ``Task.info["hand_weights"]``), and the label generator
frozen at its initialisation, trained by MAXL's one-step lookahead and trained by IFT
hypergradients (:mod:`auxilearn_hpo.label_generation`); a last table gives the paired
differences between them.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..tasks import make_task, names
from ..learner import AuxiliaryLearner
from . import add_set_option, learner_settings

__all__ = ["run", "train_one", "jobs", "COMPARED", "LEARNED", "BENCHMARKS", "LABEL_BENCHMARKS", "LABEL_COMPARED",
           "table", "gains", "checks", "harm_ratios", "label_differences"]

#: Learned weightings (AuxiLearn's combiners by implicit differentiation, and gradient alignment).
LEARNED = ["linear", "nonlinear", "alignment"]
COMPARED = ["single_task", "equal", "oracle", "uncertainty", "dwa", "gradnorm", "cosine", "pcgrad", *LEARNED]
BENCHMARKS = names()
DEFAULT = "linear"
#: Benchmarks whose auxiliary task is learned (a label generator), and what they compare.
LABEL_BENCHMARKS = ["digits_aux_labels"]
LABEL_COMPARED = ["single_task", "hand_labels", "generator_frozen", "generator_maxl", "generator_ift"]
ALL_COMPARED = [*COMPARED, *[m for m in LABEL_COMPARED if m not in COMPARED]]


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def _groups(task: Any) -> tuple[list[str], list[str]]:
    """(helpful, harmful) task names a benchmark declares, ``([], [])`` if it does not."""
    info, names = task.info, list(task.task_names)
    harmful = list(info.get("harmful") or [names[j] for j in info.get("pure_noise", [])])
    # benchmarks that name only the harmful (pure-noise) tasks compare them with all the others
    others = [n for j, n in enumerate(names) if j != task.main_task and n not in harmful]
    helpful = list(info.get("helpful") or (others if "pure_noise" in info else []))
    return helpful, harmful


def train_one(benchmark: str, weighting: str, seed: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``weighting`` on ``benchmark`` (seed ``seed``) with the shipped defaults, or the
    learner settings ``config`` over them (for the weightings in :data:`LEARNED`); score on test."""
    torch.manual_seed(seed)
    task = make_task(benchmark, seed=seed)
    if weighting in ("oracle", "hand_labels"):
        key = "oracle_weights" if weighting == "oracle" else "hand_weights"
        learner = AuxiliaryLearner.from_task(task, "fixed", weighting_options={"weights": task.info[key]})
    else:
        learner = AuxiliaryLearner.from_task(task, weighting, config=config if weighting in LEARNED else None)
    start = time.process_time()
    reports = list(learner.fit(task.defaults.epochs))
    row: dict[str, Any] = {
        "benchmark": benchmark, "weighting": weighting, "seed": seed,
        "test_metric": float(task.metric_fn(learner.model, task.test_loader)),
        "metric_name": task.metric_name, "cpu_seconds": time.process_time() - start,
    }
    weights = reports[-1].weights
    row.update({f"w/{k}": v for k, v in weights.items()})
    helpful, harmful = _groups(task)
    if helpful and harmful and weighting in LEARNED:
        row["harm_ratio"] = float(np.mean([weights[n] for n in harmful]) / max(np.mean([weights[n] for n in helpful]), 1e-300))
    info = task.info
    if "w_star" in info and benchmark == "toy":  # distance of the shared linear map to the main optimum
        w = torch.cat([p.detach().reshape(-1) for p in learner.model.parameters()])
        row["dist_to_w_star"] = float((w - torch.tensor(info["w_star"], dtype=w.dtype)).norm())
    if benchmark == "graded_noise":  # do the learned weights fall with the label noise?
        aux = [n for j, n in enumerate(task.task_names) if j != task.main_task]
        row["spearman_w_noise"] = _spearman([weights[n] for n in aux], list(info["noise"]))
    return row


def _worker(args: tuple[str, str, int, dict[str, Any] | None]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return train_one(*args)


def jobs(seeds: int, benchmarks=BENCHMARKS, weightings=ALL_COMPARED) -> list[tuple[str, str, int]]:
    """``(benchmark, weighting, seed)`` of every run: each benchmark runs those of ``weightings``
    that apply to it (:data:`LABEL_COMPARED` on :data:`LABEL_BENCHMARKS`, :data:`COMPARED` elsewhere)."""
    def applies(b: str, m: str) -> bool:
        return m in (LABEL_COMPARED if b in LABEL_BENCHMARKS else COMPARED)

    return [(b, m, s) for b in benchmarks for m in weightings if applies(b, m) for s in range(seeds)]


def run(seeds: int = 10, benchmarks=BENCHMARKS, weightings=ALL_COMPARED, processes: int = 2,
        config: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per (benchmark, weighting, seed), in that order (see :func:`jobs`); ``config``:
    learner settings over the defaults for the learned weightings."""
    jobs_ = [(*job, config) for job in jobs(seeds, benchmarks, weightings)]
    if processes > 1:
        with mp.get_context("spawn").Pool(processes) as pool:
            rows = pool.map(_worker, jobs_, chunksize=1)
    else:
        rows = [_worker(j) for j in jobs_]
    return pd.DataFrame(rows)


def _sign(raw: pd.DataFrame, benchmark: str) -> float:
    """+1 where higher is better (accuracy), -1 where lower is (mse)."""
    name = raw[raw.benchmark == benchmark]["metric_name"].iloc[0]
    return 1.0 if name in ("accuracy",) else -1.0


def gains(raw: pd.DataFrame) -> pd.DataFrame:
    """Per (benchmark, weighting): mean, standard error and ``gain_recovered`` (nan where no gain exists)."""
    out = []
    for b, part in raw.groupby("benchmark", sort=False):
        sign = _sign(raw, b)
        stats = part.groupby("weighting", sort=False)["test_metric"].agg(["mean", "sem"])
        trivial = [m for m in ("single_task", "equal") if m in stats.index]
        base, best = max((sign * stats.loc[m, "mean"], m) for m in trivial) if trivial else (math.nan, None)
        base_se = stats.loc[best, "sem"] if trivial else math.nan
        oracle = sign * stats.loc["oracle", "mean"] if "oracle" in stats.index else math.nan
        room = oracle - base
        for m, r in stats.iterrows():
            g = (sign * r["mean"] - base) / room if room > base_se else math.nan
            out.append({"benchmark": b, "weighting": m, "mean": r["mean"], "sem": r["sem"], "gain_recovered": g})
    return pd.DataFrame(out)


def table(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std of the test metric, gain recovered and diagnostics per benchmark and weighting."""
    def fmt(s: pd.Series) -> str:
        s = s.dropna()
        return "" if s.empty else f"{s.mean():.4g} ± {s.std(ddof=0):.2g}"

    cols = [c for c in ("test_metric", "harm_ratio", "dist_to_w_star", "spearman_w_noise") if c in raw]
    out = raw.groupby(["benchmark", "weighting"], sort=False)[cols].agg(fmt).reset_index()
    out.insert(2, "metric", raw.groupby(["benchmark", "weighting"], sort=False)["metric_name"].first().to_numpy())
    g = gains(raw).set_index(["benchmark", "weighting"])["gain_recovered"]
    out.insert(4, "gain_recovered", [("" if math.isnan(v) else f"{v:.2f}") for v in
                                     g.reindex(list(zip(out.benchmark, out.weighting))).to_numpy()])
    return out


def learned_weights(raw: pd.DataFrame) -> pd.DataFrame:
    """Median learned weight per task, for the learned weightings and the oracle."""
    part = raw[raw.weighting.isin([*LEARNED, "oracle"])]
    wcols = [c for c in part.columns if c.startswith("w/")]
    return part.groupby(["benchmark", "weighting"], sort=False)[wcols].median().round(3).dropna(axis=1, how="all")


def harm_ratios(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean harmful / mean helpful learned weight per benchmark and learned weighting (median over
    seeds), and in how many seeds it is below 0.1."""
    part = raw[raw.weighting.isin(LEARNED)].dropna(subset=["harm_ratio"]) if "harm_ratio" in raw else raw.iloc[:0]
    rows = []
    for (b, m), p in part.groupby(["benchmark", "weighting"], sort=False):
        rows.append({"benchmark": b, "weighting": m, "median ratio": round(float(p.harm_ratio.median()), 4),
                     "seeds below 0.1": f"{int((p.harm_ratio < 0.1).sum())}/{len(p)}"})
    return pd.DataFrame(rows)


def checks(raw: pd.DataFrame, weighting: str = DEFAULT) -> pd.DataFrame:
    """The acceptance checks of ``weighting`` on every benchmark in ``raw``."""
    rows = []
    g = gains(raw).set_index(["benchmark", "weighting"])

    def add(name: str, value: float, ok: bool) -> None:
        rows.append({"check": name, "value": round(float(value), 4), "pass": bool(ok)})

    for b in dict.fromkeys(raw.benchmark):
        if (b, weighting) not in g.index:
            continue
        sign = _sign(raw, b)
        mean = g.loc[(b, weighting), "mean"]
        trivial = {m: g.loc[(b, m), "mean"] for m in ("single_task", "equal") if (b, m) in g.index}
        best_m = max(trivial, key=lambda m: sign * trivial[m])
        gain = g.loc[(b, weighting), "gain_recovered"]
        if math.isnan(gain):  # no auxiliary helps here: match single-task within one standard error
            ref, ref_se = g.loc[(b, "single_task"), "mean"], g.loc[(b, "single_task"), "sem"]
            add(f"{b}/{weighting}: within one s.e. of single_task ({ref:.4g} ± {ref_se:.2g})", mean,
                sign * (mean - ref) >= -ref_se)
        else:
            add(f"{b}/{weighting}: beats {best_m} ({trivial[best_m]:.4g})", mean, sign * (mean - trivial[best_m]) > 0)
            add(f"{b}/{weighting}: gain_recovered >= 0.5", gain, gain >= 0.5)
        part = raw[(raw.benchmark == b) & (raw.weighting == weighting)]
        if b == "toy" and "harm_ratio" in part:
            n = int((part.harm_ratio < 0.1).sum())
            need = math.ceil(0.9 * len(part))
            add(f"toy/{weighting}: w_harmful / w_helpful < 0.1 in at least {need} of {len(part)} seeds ({n})", n, n >= need)
        if b == "graded_noise" and "spearman_w_noise" in part:
            rho = float(part.spearman_w_noise.mean())
            add(f"graded_noise/{weighting}: spearman(weight, noise) <= -0.8", rho, rho <= -0.8)
        if b == "scaled_regression":
            st = trivial.get("single_task", math.nan)
            add(f"scaled_regression/{weighting}: test mse below single_task ({st:.4g})", mean, mean < st)
    return pd.DataFrame(rows)


def label_differences(raw: pd.DataFrame) -> pd.DataFrame:
    """On :data:`LABEL_BENCHMARKS`: ``generator_ift`` and ``generator_maxl`` minus
    ``generator_frozen``, ``single_task`` and ``hand_labels``, paired by seed (mean, standard
    error of the mean difference, seeds where it is positive)."""
    rows = []
    for b in [b for b in dict.fromkeys(raw.benchmark) if b in LABEL_BENCHMARKS]:
        part = raw[raw.benchmark == b].pivot_table(index="seed", columns="weighting", values="test_metric")
        for m in ("generator_ift", "generator_maxl"):
            for ref in ("generator_frozen", "single_task", "hand_labels"):
                if m in part and ref in part:
                    d = (part[m] - part[ref]).dropna()
                    rows.append({"benchmark": b, "difference": f"{m} - {ref}", "mean": round(float(d.mean()), 4),
                                 "sem": round(float(d.sem()), 4) if len(d) > 1 else math.nan,
                                 "seeds > 0": f"{int((d > 0).sum())}/{len(d)}"})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench quality", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per benchmark and weighting (default 10)")
    ap.add_argument("--benchmarks", nargs="+", default=BENCHMARKS, choices=BENCHMARKS)
    ap.add_argument("--weightings", nargs="+", default=ALL_COMPARED, choices=ALL_COMPARED,
                    help="each benchmark runs those that apply to it (default: all)")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--csv", help="also write the raw per-seed rows to this CSV file")
    add_set_option(ap, "the learned weightings (" + ", ".join(LEARNED) + ")")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.processes < 1:
        ap.error("--seeds and --processes must be >= 1")
    config = learner_settings(ap, args.set)
    for weighting in [w for w in LEARNED if w in args.weightings] if config else []:
        try:  # settings a weighting cannot take fail here in one line, not in a worker
            AuxiliaryLearner.from_task(make_task(args.benchmarks[0], seed=0), weighting, config=config)
        except (TypeError, ValueError) as e:
            ap.error(f"--set with {weighting}: {e}")
    start = time.perf_counter()
    raw = run(args.seeds, args.benchmarks, args.weightings, args.processes, config or None)
    if args.csv:  # written next to its destination, then renamed: never a truncated file
        tmp = f"{args.csv}.tmp-{os.getpid()}"
        raw.to_csv(tmp, index=False)
        os.replace(tmp, args.csv)
    with pd.option_context("display.width", 250, "display.max_columns", 60, "display.max_colwidth", 100):
        at = ", ".join(f"{k}={v!r}" for k, v in config.items())
        print(f"Main-task test metric over {args.seeds} seeds (mean ± std; mse: lower is better, accuracy: higher"
              f"{'; learned weightings at ' + at if at else ''})\n")
        print(table(raw).to_string(index=False))
        ratios = harm_ratios(raw)
        if not ratios.empty:
            print("\nLearned weight of the harmful tasks relative to the helpful ones\n")
            print(ratios.to_string(index=False))
        diffs = label_differences(raw)
        if not diffs.empty:
            print("\nLearned auxiliary labels: paired test-metric differences (mean, s.e. over seeds)\n")
            print(diffs.to_string(index=False))
        weights = learned_weights(raw)
        if not weights.empty:
            print("\nLearned weights (median over seeds)\n")
            print(weights.to_string())
        if DEFAULT in args.weightings and {"single_task", "equal", "oracle"} <= set(args.weightings):
            print(f"\nChecks of the default weighting ({DEFAULT})\n")
            print(checks(raw).to_string(index=False))
    print(f"\n{len(raw)} runs in {time.perf_counter() - start:.0f} s")
    return raw
