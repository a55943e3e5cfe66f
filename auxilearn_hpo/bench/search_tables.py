"""``bench search``'s bookkeeping: answers against cumulative CPU-seconds, tables, checks, the plot.

An approach's answer at cumulative CPU ``c`` is the test metric of the finished trial with the
best validation score by then (:func:`trajectory`); test metrics never select. The run itself
is :mod:`auxilearn_hpo.bench.search`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..columns import write_csvs

__all__ = [
    "APPROACHES", "LEARNED", "FRACTIONS", "ACCOUNTING", "trajectory", "answer_at", "first_reaching", "summary",
    "curve", "mean_curve", "checks", "plot", "sequenced", "report",
]

#: Approach names in table order.
APPROACHES = ("auxilearn", "auxilearn_pbt", "tpe_weights", "pbt_weights", "equal")
#: The approaches that learn the weights by hypergradients.
LEARNED = ("auxilearn", "auxilearn_pbt")
#: Fractions of the budget at which ``summary.csv`` gives each approach's answer.
FRACTIONS = (0.25, 0.5, 1.0)


# ------------------------------------------------------------------------------------------- analysis
def _better(a: float, b: float, mode: str) -> bool:
    """``a`` strictly better than ``b`` (a NaN ``b`` loses to any number)."""
    if math.isnan(b):
        return not math.isnan(a)
    return a < b if mode == "min" else a > b


def _at_least(a: float, target: float, mode: str) -> bool:
    return not math.isnan(a) and (a <= target if mode == "min" else a >= target)


def trajectory(events: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The best-so-far-by-validation curve of one approach (one benchmark, one seed).

    Args:
        events: one row per unit of work, with columns ``order`` (when it ended, any clock),
            ``cpu_s`` (its CPU-seconds), ``final`` (``True`` when it ends a trial that ran all its
            epochs, whose ``val_score`` and ``test_metric`` it holds). Other rows only add CPU
            (PBT epochs, pruned trials).
        mode: ``"min"`` or ``"max"``, the direction of the metric.

    Returns:
        One row per finished trial in the order of ``order``: ``cum_cpu_s`` (all CPU spent up
        to and including that row), ``trial``, its ``val_score``/``test_metric``, and the
        current answer ``best_val``/``best_test`` (the test metric of the trial with the best
        validation score so far; on ties the earlier trial is kept; NaN never selected).
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    cols = ["cum_cpu_s", "trial", "val_score", "test_metric", "best_val", "best_test"]
    if events.empty:
        return pd.DataFrame(columns=cols)
    ev = events.sort_values("order", kind="stable").reset_index(drop=True)
    cum = ev["cpu_s"].astype(float).cumsum()
    rows, best_val, best_test = [], math.nan, math.nan
    for i, row in ev.iterrows():
        if not bool(row["final"]):
            continue
        val, test = float(row["val_score"]), float(row["test_metric"])
        if _better(val, best_val, mode):
            best_val, best_test = val, test
        rows.append({"cum_cpu_s": float(cum[i]), "trial": row.get("trial", i), "val_score": val,
                     "test_metric": test, "best_val": best_val, "best_test": best_test})
    return pd.DataFrame(rows, columns=cols)


def answer_at(traj: pd.DataFrame, cpu_s: float) -> float:
    """The answer (test metric of the best-by-validation finished trial) once ``cpu_s``
    CPU-seconds are spent: trials finished at ``cum_cpu_s <= cpu_s`` count. NaN if none."""
    done = traj[traj["cum_cpu_s"] <= cpu_s + 1e-12]
    return float(done["best_test"].iloc[-1]) if len(done) else math.nan


def first_reaching(traj: pd.DataFrame, target: float, mode: str, column: str = "best_test") -> float:
    """The first ``cum_cpu_s`` at which ``column`` is at least as good as ``target`` (NaN: never)."""
    if math.isnan(target):
        return math.nan
    for cpu, test in zip(traj["cum_cpu_s"], traj[column]):
        if _at_least(float(test), target, mode):
            return float(cpu)
    return math.nan


# ------------------------------------------------------------------------------------------- tables
def _groups(events: pd.DataFrame, info: pd.DataFrame):
    for b in info["benchmark"]:
        mode = info.loc[info["benchmark"] == b, "mode"].iloc[0]
        for a in [x for x in APPROACHES if x in set(events["approach"])]:
            for s in sorted(set(events.loc[(events["benchmark"] == b) & (events["approach"] == a), "seed"])):
                sub = events[(events["benchmark"] == b) & (events["approach"] == a) & (events["seed"] == s)]
                yield b, a, s, mode, trajectory(sub, mode)


def summary(events: pd.DataFrame, info: pd.DataFrame, fractions: Sequence[float] = FRACTIONS) -> pd.DataFrame:
    """``summary.csv``: one row per benchmark, approach, seed and budget fraction; ``test_metric``
    is the answer once ``budget_fraction x budget`` CPU-seconds are spent, ``cpu_seconds`` that
    allowance."""
    rows = []
    for b, a, s, _mode, traj in _groups(events, info):
        row = info[info["benchmark"] == b].iloc[0]
        for f in fractions:
            allowance = f * float(row["budget_cpu_s"])
            rows.append({"benchmark": b, "approach": a, "seed": int(s), "budget_fraction": f,
                         "test_metric": answer_at(traj, allowance), "metric_name": row["metric_name"],
                         "cpu_seconds": allowance, "final_data": _final_data(info, b)})
    return pd.DataFrame(rows, columns=["benchmark", "approach", "seed", "budget_fraction", "test_metric",
                                       "metric_name", "cpu_seconds", "final_data"])


def _final_data(info: pd.DataFrame, benchmark: str) -> str:
    """The benchmark's ``final_data`` (``"all"`` for tables written before the column existed)."""
    if "final_data" not in info:
        return "all"
    return str(info.loc[info["benchmark"] == benchmark, "final_data"].iloc[0])


def curve(events: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """``curve.csv``: the answer (test metric of the best-by-validation finished trial) against
    cumulative CPU-seconds, one row per finished trial of each benchmark, approach and seed."""
    rows = [{"benchmark": b, "approach": a, "seed": int(s), "cpu_seconds": c, "test_metric": t,
             "final_data": _final_data(info, b)}
            for b, a, s, _mode, traj in _groups(events, info) for c, t in zip(traj["cum_cpu_s"], traj["best_test"])]
    return pd.DataFrame(rows, columns=["benchmark", "approach", "seed", "cpu_seconds", "test_metric", "final_data"])


def mean_curve(curves: pd.DataFrame, benchmark: str, approach: str) -> pd.DataFrame:
    """The answer averaged over seeds against CPU-seconds (``cpu_seconds``, ``test_metric``),
    defined once every seed has an answer."""
    sub = curves[(curves["benchmark"] == benchmark) & (curves["approach"] == approach)]
    if sub.empty:
        return pd.DataFrame(columns=["cpu_seconds", "test_metric"])
    seeds = {s: g.rename(columns={"cpu_seconds": "cum_cpu_s", "test_metric": "best_test"})
             for s, g in sub.groupby("seed")}
    points = sorted(set(sub["cpu_seconds"]))
    rows = []
    for c in points:
        answers = [answer_at(g, c) for g in seeds.values()]
        if not any(math.isnan(x) for x in answers):
            rows.append({"cpu_seconds": c, "test_metric": sum(answers) / len(answers)})
    return pd.DataFrame(rows, columns=["cpu_seconds", "test_metric"])


def checks(summary_df: pd.DataFrame, curves: pd.DataFrame, info: pd.DataFrame) -> pd.DataFrame:
    """Per benchmark: the final (100 %) mean test metric of each approach over seeds, the best
    learned approach, whether it is at least TPE-over-weights', its ``lead`` over TPE (paired over
    seeds, positive when the learned answer is better, whatever the metric's direction) with the
    standard error ``lead_se`` (NaN with one seed), and the CPU-seconds each needs for its
    seed-mean answer to reach TPE's final mean (``speedup`` = TPE's / the learned one's)."""
    rows = []
    final = summary_df[summary_df["budget_fraction"] == 1.0]
    for b in info["benchmark"]:
        mode = info.loc[info["benchmark"] == b, "mode"].iloc[0]
        here = final[final["benchmark"] == b]
        per_seed = here.pivot_table(index="seed", columns="approach", values="test_metric")
        means = here.groupby("approach")["test_metric"].mean()
        learned = [a for a in LEARNED if a in means.index and not math.isnan(means[a])]
        if not learned or "tpe_weights" not in means.index:
            continue
        best = max(learned, key=lambda a: means[a] if mode == "max" else -means[a])
        target = float(means["tpe_weights"])
        ours = first_reaching(mean_curve(curves, b, best).rename(columns={"cpu_seconds": "cum_cpu_s"}),
                              target, mode, column="test_metric")
        tpe = first_reaching(mean_curve(curves, b, "tpe_weights").rename(columns={"cpu_seconds": "cum_cpu_s"}),
                             target, mode, column="test_metric")
        lead = (per_seed[best] - per_seed["tpe_weights"]) * (1 if mode == "max" else -1)  # > 0: learned ahead
        rows.append({"benchmark": b, "best_learned": best, "learned_final": float(means[best]),
                     "tpe_final": target, "at_least_tpe": _at_least(float(means[best]), target, mode),
                     "lead": float(lead.mean()), "lead_se": float(lead.std() / math.sqrt(lead.count())),
                     "learned_cpu_to_tpe_final": ours, "tpe_cpu_to_tpe_final": tpe,
                     "speedup": tpe / ours if ours > 0 else math.nan})
    return pd.DataFrame(rows)


def plot(curves: pd.DataFrame, info: pd.DataFrame, path: str) -> bool:
    """Seed-mean answer against cumulative CPU-seconds, log x, one panel per benchmark and one
    line per approach; returns ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    benchmarks = list(info["benchmark"])
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(6 * len(benchmarks), 4.2), squeeze=False)
    for ax, (_, row) in zip(axes[0], info.iterrows()):
        for a in [x for x in APPROACHES if x in set(curves["approach"])]:
            m = mean_curve(curves, row["benchmark"], a)
            if m.empty:
                continue
            if len(m) == 1:
                ax.plot(m["cpu_seconds"], m["test_metric"], "o", label=a)
            else:
                ax.step(m["cpu_seconds"], m["test_metric"], where="post", marker=".", markersize=3, label=a)
        ax.axvline(float(row["budget_cpu_s"]), color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative trial CPU-seconds (process_time)")
        better = "lower" if row["mode"] == "min" else "higher"
        ax.set_ylabel(f"test {row['metric_name']} of best-by-validation trial ({better} is better)")
        ax.set_title(f"{row['benchmark']} (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


ACCOUNTING = ("CPU-s = time.process_time() of the processes that train, summed over trials (torch on 1 thread); "
              "Optuna's sampler counted (it suggests inside the trial); checkpoint writes counted for no approach; "
              "per-process warm-up, Ray's searchers/schedulers in the driver and Ray's daemons not counted. Answer = test metric of the finished trial with the best VALIDATION score "
              "(mean validation metric of its final model's last 3 epochs, the refit's where there is one) by then; test data never selects.")


def sequenced(events: pd.DataFrame) -> pd.DataFrame:
    """``events`` with ``order`` replaced by each row's position in time order (0, 1, ...) within
    its benchmark, approach and seed, so that a table read back from CSV sorts as it ran (PBT's
    ``order`` is a tuple, whose text would sort lexicographically)."""
    out = events.reset_index(drop=True)  # merged tables may repeat index labels
    for _, idx in out.groupby(["benchmark", "approach", "seed"]).groups.items():
        ranked = sorted(idx, key=lambda i: out.at[i, "order"])  # stable: ties keep row order
        out.loc[ranked, "order"] = range(len(ranked))
    return out.assign(order=out["order"].astype(int))


def report(events: pd.DataFrame, info: pd.DataFrame, *, out: str | None = None) -> dict[str, pd.DataFrame]:
    """Print the seed-mean table of every benchmark and the checks; with ``out``, write
    ``summary.csv``, ``curve.csv``, ``events.csv`` and ``search.png``."""
    summ, curves = summary(events, info), curve(events, info)
    trials = events.groupby(["benchmark", "approach", "seed"])["trial"].nunique().groupby(
        ["benchmark", "approach"]).mean()
    twins = events["twin_of"].notna() if "twin_of" in events else pd.Series(False, index=events.index)
    trained = events[~twins].groupby(["benchmark", "approach", "seed"])["trial"].nunique().groupby(
        ["benchmark", "approach"]).mean()
    for _, row in info.iterrows():
        b = row["benchmark"]
        sub = summ[summ["benchmark"] == b]
        if sub.empty:
            continue
        table = sub.pivot_table(index="approach", columns="budget_fraction", values="test_metric", aggfunc="mean",
                               dropna=False)
        table.columns = [f"test@{f * 100:g}%" for f in table.columns]
        table["std@100%"] = sub[sub["budget_fraction"] == 1.0].groupby("approach")["test_metric"].std()
        table.insert(0, "trained/seed", trained.loc[b])  # without the held repeats (twin_of)
        table.insert(0, "trials/seed", trials.loc[b])
        table = table.reindex([a for a in APPROACHES if a in table.index])
        n_seeds = sub["seed"].nunique()
        source = ("validation data separate from the auxiliary set" if row["val_source"] == "validation"
                  else "the AUXILIARY SET doubles as validation (no separate validation data)")
        print(f"\n{b}: {row['metric_name']} ({'lower' if row['mode'] == 'min' else 'higher'} is better), "
              f"budget {float(row['budget_cpu_s']):g} CPU-s per approach and seed, mean over {n_seeds} seed(s); "
              f"selection on {source}")
        print(table.to_string(formatters={c: _fmt for c in table.columns}))
    verdict = checks(summ, curves, info)
    if not verdict.empty:
        print("\nbest learned approach against TPE over the weights (seed means at 100 % of the budget):")
        print(verdict.to_string(index=False, formatters={c: _fmt for c in verdict.columns
                                                         if verdict[c].dtype == float}))
    print("\n" + ACCOUNTING)
    if out:
        os.makedirs(out, exist_ok=True)
        folder = Path(out)
        write_csvs({folder / "summary.csv": summ, folder / "curve.csv": curves,
                    folder / "events.csv": sequenced(events)})
        drawn = plot(curves, info, os.path.join(out, "search.png"))
        print(f"wrote {out}/summary.csv, curve.csv, events.csv" + (", search.png" if drawn else
                                                                    " (no plot: matplotlib missing)"))
    return {"summary": summ, "curve": curves, "checks": verdict}
