"""The quality table: every weighting on every shipped benchmark, over seeds.

``auxilearn-hpo bench quality [--seeds 1000-1009] [--final-data all train] [--csv F]`` runs each
weighting as a :class:`~auxilearn_hpo.integrations.trial.Trial` with the task's own training
settings (epochs, model learning rate, batch size) and, for the learned weightings, the shipped
defaults of :class:`~auxilearn_hpo.learner.LearnerConfig` (the same on every benchmark), scores
the final model on the held-out test set and prints, per ``final_data``:

* ``final_data="all"`` (default): every final model trains on all labelled training data,
  train ∪ auxiliary set; a learned weighting learns on the split, then refits a fresh model on
  all of it with what it learned (its learning run's test metric is ``learn_test_metric``).
  ``"train"``: the paper's protocol, every model on the split. ``cpu_seconds`` counts the whole
  pipeline of a row (learning and refit);
* the main-task test metric, mean +- std over seeds, and ``gain_recovered``:
  ``(weighting - best(single_task, equal)) / (oracle - best(single_task, equal))`` of the seed
  means with a 95% bootstrap interval over seeds, signed so that 1 means "as good as the
  oracle" and 0 "no better than the best trivial weighting" (blank where the oracle is not
  better than that by more than a paired standard error: no gain exists);
* ``oracle``: fixed weights known to be best by construction, or found by a documented search
  (``Task.info["oracle_weights"]``: inverse noise variance on the helpful tasks and 0 on the
  harmful ones on ``toy`` and ``graded_noise``, the main task alone on ``digits``, the helpful
  attributes at the main task's weight on ``fewshot_digits``, and on ``scaled_regression`` the
  clean ``s1`` alone, found by the validation search
  :func:`~auxilearn_hpo.tasks.scaled_regression.search_oracle`);
* the learned weights of the harmful tasks relative to the helpful ones, where a benchmark
  knows which are which;
* the checks the default AuxiLearn weighting (``linear``) must pass, each difference paired over
  seeds with its standard error.

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
from . import add_set_option, parse_set
from .seeds import parse_seeds

__all__ = ["run", "train_one", "jobs", "COMPARED", "LEARNED", "BENCHMARKS", "LABEL_BENCHMARKS", "LABEL_COMPARED",
           "table", "gains", "checks", "harm_ratios", "label_differences", "paired"]

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


def train_one(benchmark: str, weighting: str, seed: int, config: dict[str, Any] | None = None,
              final_data: str = "all") -> dict[str, Any]:
    """Run ``weighting`` on ``benchmark`` (seed ``seed``) as a trial with the shipped defaults, or
    the learner settings ``config`` over them (for the weightings in :data:`LEARNED`), under
    ``final_data``; score the final model on test. ``cpu_seconds``: the process time of the whole
    trial (task, learning, evaluation and refit)."""
    from auxilearn_hpo.integrations.trial import Trial

    start = time.process_time()
    torch.manual_seed(seed)
    task = make_task(benchmark, seed=seed)
    settings: dict[str, Any] = {"weighting": weighting, "seed": seed, "final_data": final_data}
    if weighting in ("oracle", "hand_labels"):
        key = "oracle_weights" if weighting == "oracle" else "hand_weights"
        settings.update(weighting="fixed", weighting_options={"weights": task.info[key]})
    elif weighting in LEARNED:
        settings.update(config or {})
    trial = Trial(lambda _: task, settings)
    reports = list(trial.reports())
    last = reports[-1]
    row: dict[str, Any] = {
        "benchmark": benchmark, "weighting": weighting, "seed": seed, "test_metric": last.test_metric,
        "metric_name": task.metric_name, "final_data": final_data, "cpu_seconds": time.process_time() - start,
        "learn_test_metric": last.learn_test_metric,
        "val_metric": float(task.metric_fn(trial.final.model, task.val_loader)) if task.val_loader is not None
        else math.nan,  # the final model's, for choosing settings without the test set
    }
    weights = last.weights
    row.update({f"w/{k}": v for k, v in weights.items()})
    helpful, harmful = _groups(task)
    if helpful and harmful and weighting in LEARNED:
        row["harm_ratio"] = float(np.mean([weights[n] for n in harmful]) / max(np.mean([weights[n] for n in helpful]), 1e-300))
    info = task.info
    if "w_star" in info and benchmark == "toy":  # distance of the final shared linear map to the main optimum
        w = torch.cat([p.detach().reshape(-1) for p in trial.final.model.parameters()])
        row["dist_to_w_star"] = float((w - torch.tensor(info["w_star"], dtype=w.dtype)).norm())
    if benchmark == "graded_noise":  # do the learned weights fall with the label noise?
        aux = [n for j, n in enumerate(task.task_names) if j != task.main_task]
        row["spearman_w_noise"] = _spearman([weights[n] for n in aux], list(info["noise"]))
    return row


def _worker(args: tuple) -> dict[str, Any]:
    torch.set_num_threads(1)
    return train_one(*args)


def jobs(seeds: int | list[int], benchmarks=BENCHMARKS, weightings=ALL_COMPARED) -> list[tuple[str, str, int]]:
    """``(benchmark, weighting, seed)`` of every run (``seeds``: a list, or a count N for 0..N-1):
    each benchmark runs those of ``weightings`` that apply to it (:data:`LABEL_COMPARED` on
    :data:`LABEL_BENCHMARKS`, :data:`COMPARED` elsewhere)."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)

    def applies(b: str, m: str) -> bool:
        return m in (LABEL_COMPARED if b in LABEL_BENCHMARKS else COMPARED)

    return [(b, m, s) for b in benchmarks for m in weightings if applies(b, m) for s in seeds]


def run(seeds: int | list[int] = 10, benchmarks=BENCHMARKS, weightings=ALL_COMPARED, processes: int = 2,
        config: dict[str, Any] | None = None, final_data: tuple[str, ...] | list[str] = ("all",)) -> pd.DataFrame:
    """One row per (final_data, benchmark, weighting, seed), in that order (see :func:`jobs`);
    ``config``: learner settings over the defaults for the learned weightings."""
    jobs_ = [(*job, config, fd) for fd in final_data for job in jobs(seeds, benchmarks, weightings)]
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


def paired(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """``a - b`` paired by index (seed): mean, standard error of the mean, number of pairs."""
    d = (a - b).dropna()
    return float(d.mean()), (float(d.sem()) if len(d) > 1 else math.nan), len(d)


def _gain(m: np.ndarray, trivial: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """Gain recovered from signed per-seed metrics (rows: resamples or one row), see :func:`gains`."""
    base = trivial.max(axis=-1)
    return (m - base) / (oracle - base)


def gains(raw: pd.DataFrame, resamples: int = 2000) -> pd.DataFrame:
    """Per (benchmark, weighting): mean, standard error, ``gain_recovered`` (nan where no gain
    exists) and its 95% bootstrap interval over seeds (``gain_low``, ``gain_high``: seeds drawn
    with replacement, the same draw for every weighting, the best trivial weighting re-chosen)."""
    out = []
    rng = np.random.default_rng(0)
    for b, part in raw.groupby("benchmark", sort=False):
        sign = _sign(raw, b)
        by_seed = part.pivot_table(index="seed", columns="weighting", values="test_metric", sort=False) * sign
        stats = part.groupby("weighting", sort=False)["test_metric"].agg(["mean", "sem"])
        trivial = [m for m in ("single_task", "equal") if m in by_seed]
        room = False
        if trivial and "oracle" in by_seed:
            best = max(trivial, key=lambda m: by_seed[m].mean())
            diff, se, _ = paired(by_seed["oracle"], by_seed[best])
            room = diff > (se if not math.isnan(se) else 0.0)
            full = by_seed.dropna()
            draws = rng.integers(0, len(full), size=(resamples, len(full)))
            triv = np.stack([full[m].to_numpy()[draws].mean(1) for m in trivial], axis=-1)
            orac = full["oracle"].to_numpy()[draws].mean(1)
        for m, r in stats.iterrows():
            row = {"benchmark": b, "weighting": m, "mean": r["mean"], "sem": r["sem"], "gain_recovered": math.nan,
                   "gain_low": math.nan, "gain_high": math.nan}
            if room:
                point = _gain(np.array(by_seed[m].mean()), np.array([by_seed[t].mean() for t in trivial]),
                              np.array(by_seed["oracle"].mean()))
                boot = _gain(full[m].to_numpy()[draws].mean(1), triv, orac)
                row.update(gain_recovered=float(point), gain_low=float(np.nanpercentile(boot, 2.5)),
                           gain_high=float(np.nanpercentile(boot, 97.5)))
            out.append(row)
    return pd.DataFrame(out)


def table(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std of the test metric, gain recovered [95% interval], CPU-seconds and diagnostics
    per benchmark and weighting."""
    def fmt(s: pd.Series) -> str:
        s = s.dropna()
        return "" if s.empty else f"{s.mean():.4g} ± {s.std(ddof=0):.2g}"

    cols = [c for c in ("test_metric", "harm_ratio", "dist_to_w_star", "spearman_w_noise") if c in raw]
    groups = raw.groupby(["benchmark", "weighting"], sort=False)
    out = groups[cols].agg(fmt).reset_index()
    out.insert(2, "metric", groups["metric_name"].first().to_numpy())
    g = gains(raw).set_index(["benchmark", "weighting"]).reindex(list(zip(out.benchmark, out.weighting)))
    out.insert(4, "gain_recovered", ["" if math.isnan(v) else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"
                                     for v, lo, hi in zip(g.gain_recovered, g.gain_low, g.gain_high)])
    if "cpu_seconds" in raw:
        out.insert(5, "cpu_seconds", [f"{v:.2f}" for v in groups["cpu_seconds"].mean().to_numpy()])
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
    """The acceptance checks of ``weighting`` on every benchmark in ``raw`` (one ``final_data``):
    where a gain exists, it beats the best of single-task and equal by more than two paired
    standard errors and recovers at least half the oracle's gain; where none exists, it is
    within one paired standard error of single-task or above."""
    rows = []
    g = gains(raw).set_index(["benchmark", "weighting"])

    def add(name: str, value: float, ok: bool) -> None:
        rows.append({"check": name, "value": round(float(value), 4), "pass": bool(ok)})

    for b in dict.fromkeys(raw.benchmark):
        if (b, weighting) not in g.index:
            continue
        sign = _sign(raw, b)
        part = raw[raw.benchmark == b]
        by_seed = part.pivot_table(index="seed", columns="weighting", values="test_metric", sort=False)
        trivial = {m: g.loc[(b, m), "mean"] for m in ("single_task", "equal") if (b, m) in g.index}
        gain = g.loc[(b, weighting), "gain_recovered"]
        if math.isnan(gain):  # no auxiliary helps here: single-task or above, within one paired s.e.
            d, se, n = paired(sign * by_seed[weighting], sign * by_seed["single_task"])
            add(f"{b}/{weighting}: minus single_task {d:+.4g} ± {se:.2g} (paired, {n} seeds) >= -1 s.e.", d, d >= -se)
        else:
            best = max(trivial, key=lambda m: sign * trivial[m])
            d, se, n = paired(sign * by_seed[weighting], sign * by_seed[best])
            add(f"{b}/{weighting}: minus {best} {d:+.4g} ± {se:.2g} (paired, {n} seeds) > 2 s.e.", d, d > 2 * se)
            lo, hi = g.loc[(b, weighting), "gain_low"], g.loc[(b, weighting), "gain_high"]
            add(f"{b}/{weighting}: gain_recovered >= 0.5 (95% interval {lo:.2f} to {hi:.2f})", gain, gain >= 0.5)
        mine = part[part.weighting == weighting]
        if b == "toy" and "harm_ratio" in mine:
            k = int((mine.harm_ratio < 0.1).sum())
            need = math.ceil(0.9 * len(mine))
            add(f"toy/{weighting}: w_harmful / w_helpful < 0.1 in at least {need} of {len(mine)} seeds ({k})", k, k >= need)
        if b == "graded_noise" and "spearman_w_noise" in mine:
            rho = float(mine.spearman_w_noise.mean())
            add(f"graded_noise/{weighting}: spearman(weight, noise) <= -0.8", rho, rho <= -0.8)
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


def _report(raw: pd.DataFrame, seeds: list[int], at: str) -> None:
    """Print the tables and checks of one ``final_data``."""
    fd = raw["final_data"].iloc[0]
    what = ("every final model on train ∪ auxiliary set; learned weightings refit" if fd == "all"
            else "every model on the training split (the paper's protocol)")
    print(f"\nfinal_data={fd} ({what}). Main-task test metric over {len(seeds)} seeds {_seed_text(seeds)} "
          f"(mean ± std; mse: lower is better, accuracy: higher; gain_recovered with its 95% bootstrap interval"
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
    if {DEFAULT, "single_task", "equal", "oracle"} <= set(raw.weighting):
        print(f"\nChecks of the default weighting ({DEFAULT}), final_data={fd}\n")
        print(checks(raw).to_string(index=False))


def _settings(ap: Any, items: list[str]) -> dict[str, Any]:
    """``--set`` items as trial settings of the learned weightings (a ``LearnerConfig`` field, or
    the refit's ``folds`` / ``refit_gains``), checked; ``ap.error`` (exit 2) if not."""
    from auxilearn_hpo.integrations.trial import OUTER_SETTINGS, check_config
    from auxilearn_hpo.learner import LearnerConfig

    try:
        config = parse_set(items)
        fixed = {"weighting", "seed", "final_data", "epochs"}
        unknown = sorted(set(config) - (OUTER_SETTINGS - fixed))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}: a LearnerConfig field, folds or refit_gains")
        LearnerConfig.from_dict({k: v for k, v in config.items() if k in LearnerConfig.__dataclass_fields__})
        check_config(config)
    except (TypeError, ValueError) as e:
        ap.error(f"--set: {e}" if not str(e).startswith("--set") else str(e))
    return config


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench quality", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="10",
                    help="a count N (seeds 0..N-1), a range A-B (both ends) or a list 3,7,9 (default 10); report "
                         "seeds that chose no default, e.g. 1000-1009")
    ap.add_argument("--final-data", nargs="+", default=["all"], choices=["all", "train"],
                    help="all (default): every final model trains on train ∪ auxiliary set, learned weightings "
                         "refit; train: every model on the split (the paper's protocol); both: one table each")
    ap.add_argument("--benchmarks", nargs="+", default=BENCHMARKS, choices=BENCHMARKS)
    ap.add_argument("--weightings", nargs="+", default=ALL_COMPARED, choices=ALL_COMPARED,
                    help="each benchmark runs those that apply to it (default: all)")
    ap.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--csv", help="also write the raw per-seed rows to this CSV file")
    add_set_option(ap, "the learned weightings (" + ", ".join(LEARNED) + "), or the refit's folds / refit_gains")
    args = ap.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as e:
        ap.error(str(e))
    if args.processes < 1:
        ap.error("--processes must be >= 1")
    config = _settings(ap, args.set)
    if config:
        from auxilearn_hpo.integrations.trial import Trial

        for weighting in [w for w in LEARNED if w in args.weightings]:
            try:  # settings a weighting cannot take fail here in one line, not in a worker
                Trial(args.benchmarks[0], {"weighting": weighting, **config})
            except (TypeError, ValueError) as e:
                ap.error(f"--set with {weighting}: {e}")
    start = time.perf_counter()
    final_data = list(dict.fromkeys(args.final_data))
    raw = run(seeds, args.benchmarks, args.weightings, args.processes, config or None, final_data)
    if args.csv:  # written next to its destination, then renamed: never a truncated file
        tmp = f"{args.csv}.tmp-{os.getpid()}"
        raw.to_csv(tmp, index=False)
        os.replace(tmp, args.csv)
    with pd.option_context("display.width", 250, "display.max_columns", 60, "display.max_colwidth", 100):
        at = ", ".join(f"{k}={v!r}" for k, v in config.items())
        for fd in final_data:
            _report(raw[raw.final_data == fd].reset_index(drop=True), seeds, at)
    print(f"\n{len(raw)} runs in {time.perf_counter() - start:.0f} s")
    return raw
