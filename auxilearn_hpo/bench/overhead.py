"""What learning the weights costs: training CPU time with AuxiLearn over the same training with equal weights.

``auxilearn-hpo bench overhead [--repeats N] [--weighting linear] [--set KEY=VALUE ...]`` trains
every shipped benchmark with its own training settings twice per repeat, interleaved on one
thread: once with equal weights, once with the learned weighting at the shipped defaults, or
with the :class:`~auxilearn_hpo.learner.LearnerConfig` fields that ``--set`` gives (hypersteps included; task
construction and evaluation excluded from both). It prints, per benchmark, the median CPU
seconds of each and the median, min and max of their per-repeat ratio, then a last line
``overhead: worst median ratio X``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import pandas as pd
import torch

from ..tasks import make_task, names
from ..learner import AuxiliaryLearner
from . import add_set_option, learner_settings

__all__ = ["train_seconds", "run", "main"]


def train_seconds(benchmark: str, weighting: str, seed: int = 0, config: dict[str, Any] | None = None) -> tuple[float, int]:
    """CPU seconds (``time.process_time``) of ``fit`` for ``weighting`` on ``benchmark``, and its
    hypersteps; ``config``: learner settings over the task's defaults."""
    torch.manual_seed(seed)
    task = make_task(benchmark, seed=seed)
    learner = AuxiliaryLearner.from_task(task, weighting, config=config)
    start = time.process_time()
    reports = list(learner.fit(task.defaults.epochs))
    return time.process_time() - start, reports[-1].hypersteps


def run(benchmarks: list[str], weighting: str = "linear", repeats: int = 5,
        config: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per benchmark: median CPU seconds of ``equal`` and ``weighting`` (with the learner
    settings ``config``) and their ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    try:
        for b in benchmarks:
            base, learned, ratios, hyper = [], [], [], 0
            for r in range(repeats):  # interleaved, so that load on the machine hits both alike
                t_equal, _ = train_seconds(b, "equal", seed=r)
                t_learned, hyper = train_seconds(b, weighting, seed=r, config=config)
                base.append(t_equal)
                learned.append(t_learned)
                ratios.append(t_learned / t_equal)
            rows.append({"benchmark": b, "equal_s": statistics.median(base), f"{weighting}_s": statistics.median(learned),
                         "hypersteps": hyper, "ratio_median": statistics.median(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios)})
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", nargs="+", default=names(), choices=names())
    ap.add_argument("--weighting", default="linear", help="the learned weighting to time (default: linear)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per benchmark (default 5)")
    add_set_option(ap, "the learned weighting")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    from ..registry import weighting_names

    if args.weighting not in weighting_names():
        ap.error(f"--weighting must be one of {weighting_names()}, got {args.weighting!r}")
    config = learner_settings(ap, args.set)
    table = run(args.benchmarks, args.weighting, args.repeats, config or None)
    settings = ", ".join(f"{k}={v!r}" for k, v in config.items()) or "the shipped defaults"
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(f"Training CPU seconds on one thread, {args.weighting} at {settings} vs equal weights "
              f"(median of {args.repeats} interleaved repeats)\n")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    worst = table.loc[table.ratio_median.idxmax()]
    print(f"\noverhead: worst median ratio {worst.ratio_median:.2f} ({worst.benchmark})")
    return table
