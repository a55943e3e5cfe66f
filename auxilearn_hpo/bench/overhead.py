"""What learning the weights costs: training CPU time with AuxiLearn over the same training with equal weights.

``auxilearn-hpo bench overhead [--repeats N] [--weighting linear] [--set KEY=VALUE ...]
[--compare KEY=VALUE ...]`` trains every shipped benchmark with its own training settings twice
per repeat, interleaved on one thread: once with equal weights, once with the learned weighting
at the shipped defaults, or with the :class:`~auxilearn_hpo.learner.LearnerConfig` fields that
``--set`` gives (hypersteps included; task construction and evaluation excluded from both).
With ``--compare`` each repeat also trains the learned weighting with those settings (over the
``--set`` ones), so both ratios come from the same interleaved runs. It prints, per benchmark,
the median CPU seconds of each and the median, min and max of their per-repeat ratio, then a
last line ``overhead: worst median ratio X`` (of the ``--set`` run; a line before it gives the
``--compare`` run's).

``--floor`` first prints what the least a hyperstep can cost implies, per benchmark: a training
step's CPU time (the equal-weights run's, per step), and, measured on the learner the ``--set``
settings build, the auxiliary-set gradient ``g_A`` (its forward and backward passes), the mixed
term at its cheapest (two forward passes of a training batch without a graph, as
:func:`~auxilearn_hpo.hypergrad.difference_hypergradient` takes it) and the weights' update (clip, optimizer step, projection).
Every hypergradient needs the three, so ``1 + (g_A + mixed + update) / (update_every x step)``
is a lower bound on the ratio at that cadence, whatever the solver; the last of these lines is
``floor: worst lower bound X``.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import dataclasses

import pandas as pd
import torch
from torch import nn

from ..tasks import make_task, names
from ..learner import AuxiliaryLearner, LearnerConfig
from ..task import Task
from . import add_set_option, learner_settings

__all__ = ["train_seconds", "run", "floor", "floor_ratio", "main", "COMPUTE_BOUND", "compute_bound_task"]

#: The compute-bound reference row: where arithmetic, not the autograd engine's per-call cost, sets the price.
COMPUTE_BOUND = "compute_bound"
WIDTH = 1024


class WideNet(nn.Module):
    """``digits``' model made wide: trunk ``64-1024-1024`` (ReLU; 1.12M parameters), a
    classification head ``(1024, 10)`` and a regression head ``(1024, n_aux)``; ``forward`` ->
    ``(logits (B, 10), aux (B, n_aux))``."""

    def __init__(self, n_aux: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU())
        self.classifier = nn.Linear(WIDTH, 10)
        self.regressor = nn.Linear(WIDTH, n_aux)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.classifier(z), self.regressor(z)


def compute_bound_task(seed: int = 0) -> Task:
    """The :data:`COMPUTE_BOUND` row's task: ``digits`` with 150 labelled images per class (10 of
    them the auxiliary set: 1,400 training, 100 auxiliary), batch 128, a :class:`WideNet`
    (1.14M parameters), 16 epochs (176 training steps)."""
    task = make_task("digits", seed=seed, shots=150, aux_shots=10, n_val=100, batch_size=128)
    torch.manual_seed(seed)
    model = WideNet(task.n_tasks - 1)
    return dataclasses.replace(task, name=COMPUTE_BOUND, model=model,
                               defaults=dataclasses.replace(task.defaults, epochs=16))


def _task(benchmark: str, seed: int) -> Task:
    return compute_bound_task(seed) if benchmark == COMPUTE_BOUND else make_task(benchmark, seed=seed)


def train_seconds(benchmark: str, weighting: str, seed: int = 0, config: dict[str, Any] | None = None) -> tuple[float, int]:
    """CPU seconds (``time.process_time``) of ``fit`` for ``weighting`` on ``benchmark`` (or
    :data:`COMPUTE_BOUND`), and its hypersteps; ``config``: learner settings over the task's defaults."""
    torch.manual_seed(seed)
    task = _task(benchmark, seed)
    learner = AuxiliaryLearner.from_task(task, weighting, config=config)
    start = time.process_time()
    reports = list(learner.fit(task.defaults.epochs))
    return time.process_time() - start, reports[-1].hypersteps


def run(benchmarks: list[str], weighting: str = "linear", repeats: int = 5,
        config: dict[str, Any] | None = None, compare: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per benchmark: median CPU seconds of ``equal`` and ``weighting`` (with the learner
    settings ``config``) and their ratio; with ``compare`` (settings over ``config``) also
    ``compare_s``, ``compare_hypersteps`` and ``compare_ratio_*``, timed in the same repeats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    try:
        for b in benchmarks:
            base, learned, ratios, hyper = [], [], [], 0
            other, other_ratios, other_hyper = [], [], 0
            for r in range(repeats):  # interleaved, so that load on the machine hits all alike
                t_equal, _ = train_seconds(b, "equal", seed=r)
                t_learned, hyper = train_seconds(b, weighting, seed=r, config=config)
                base.append(t_equal)
                learned.append(t_learned)
                ratios.append(t_learned / t_equal)
                if compare is not None:
                    t_other, other_hyper = train_seconds(b, weighting, seed=r, config={**(config or {}), **compare})
                    other.append(t_other)
                    other_ratios.append(t_other / t_equal)
            row = {"benchmark": b, "equal_s": statistics.median(base), f"{weighting}_s": statistics.median(learned),
                   "hypersteps": hyper, "ratio_median": statistics.median(ratios),
                   "ratio_min": min(ratios), "ratio_max": max(ratios)}
            if compare is not None:
                row.update({"compare_s": statistics.median(other), "compare_hypersteps": other_hyper,
                            "compare_ratio_median": statistics.median(other_ratios),
                            "compare_ratio_min": min(other_ratios), "compare_ratio_max": max(other_ratios)})
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def floor_ratio(step_ms: float, aux_grad_ms: float, mixed_ms: float, update_ms: float, update_every: int) -> float:
    """Lower bound on the overhead ratio: ``1 + (aux_grad + mixed + update) / (update_every * step)``."""
    return 1.0 + (aux_grad_ms + mixed_ms + update_ms) / (update_every * step_ms)


def _ms(fn: Any, calls: int, blocks: int = 5) -> float:
    """Median over ``blocks`` of the mean CPU milliseconds of ``calls`` calls of ``fn``."""
    fn()
    times = []
    for _ in range(blocks):
        start = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - start) / calls * 1e3)
    return statistics.median(times)


def floor(benchmarks: list[str], weighting: str = "linear", config: dict[str, Any] | None = None,
          calls: int = 100) -> pd.DataFrame:
    """One row per benchmark: ``step_ms`` (a training step of the equal-weights run, median of 3), the
    hyperstep's irreducible parts ``aux_grad_ms``, ``mixed_ms`` and ``update_ms`` (see the module
    docstring), ``update_every`` and ``floor_ratio`` (:func:`floor_ratio`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    try:
        for b in benchmarks:
            task = _task(b, 0)
            seconds = statistics.median(train_seconds(b, "equal", seed=r)[0] for r in range(3))
            step_ms = seconds * 1e3 / (task.defaults.epochs * len(task.train_loader))
            learner = AuxiliaryLearner.from_task(task, weighting, config=config)
            if learner.meta is None:
                raise ValueError(f"weighting {weighting!r} learns no weights by hypergradients: it has no hyperstep")
            aux_batches, batch = learner.aux_batches(), next(iter(learner.train_loader))
            params, aux_params = learner.model_params, learner.aux_params
            zeros = [torch.zeros_like(p) for p in aux_params]

            def aux_grad() -> None:
                torch.autograd.grad(learner.aux_loss(aux_batches), params, allow_unused=True)

            def mixed() -> None:
                with torch.no_grad():
                    for _ in range(2):
                        learner.weighting(learner.loss_fn(learner.model, batch))

            def update() -> None:
                learner.meta.apply(zeros, aux_params, finite=True, norm=0.0)

            row = {"benchmark": b, "step_ms": step_ms, "aux_grad_ms": _ms(aux_grad, calls),
                   "mixed_ms": _ms(mixed, calls), "update_ms": _ms(update, calls),
                   "update_every": learner.config.update_every}
            row["floor_ratio"] = floor_ratio(row["step_ms"], row["aux_grad_ms"], row["mixed_ms"], row["update_ms"],
                                             row["update_every"])
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", nargs="+", default=[*names(), COMPUTE_BOUND], choices=[*names(), COMPUTE_BOUND],
                    help=f"benchmarks to time (default: every shipped one and {COMPUTE_BOUND}, a 1.1M-parameter "
                         "MLP at batch 128)")
    ap.add_argument("--weighting", default="linear", help="the learned weighting to time (default: linear)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats per benchmark (default 5)")
    add_set_option(ap, "the learned weighting")
    ap.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE",
                    help="also time the learned weighting with these LearnerConfig fields (over --set's) in the "
                         "same interleaved repeats, e.g. --compare steps=0 --compare fused=true (repeatable)")
    ap.add_argument("--floor", action="store_true",
                    help="first print the lower bound on the ratio that a hyperstep's irreducible parts give")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    from ..weightings import weighting_names

    if args.weighting not in weighting_names():
        ap.error(f"--weighting must be one of {weighting_names()}, got {args.weighting!r}")
    config = learner_settings(ap, args.set)
    compare = None
    if args.compare:
        compare = learner_settings(ap, args.compare, "--compare")
        try:
            LearnerConfig.from_dict({**config, **compare})
        except (TypeError, ValueError) as e:
            ap.error(f"--compare over --set: {e}")
    settings = _describe(config) or "the shipped defaults"
    if args.floor:
        try:
            bound = floor(args.benchmarks, args.weighting, config or None)
        except ValueError as e:
            ap.error(str(e))
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(f"A hyperstep's irreducible parts, CPU milliseconds on one thread, {args.weighting} at {settings}: "
                  "floor_ratio = 1 + (aux_grad + mixed + update) / (update_every x step)\n")
            print(bound.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        low = bound.loc[bound.floor_ratio.idxmax()]
        print(f"\nfloor: worst lower bound {low.floor_ratio:.2f} ({low.benchmark})\n")
    table = run(args.benchmarks, args.weighting, args.repeats, config or None, compare)
    also = f" (compare_*: with {_describe(compare)})" if compare else ""
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(f"Training CPU seconds on one thread, {args.weighting} at {settings}{also} vs equal weights "
              f"(median of {args.repeats} interleaved repeats)\n")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    if compare:
        other = table.loc[table.compare_ratio_median.idxmax()]
        print(f"with {_describe(compare)}: worst median ratio {other.compare_ratio_median:.2f} ({other.benchmark})")
    worst = table.loc[table.ratio_median.idxmax()]
    print(f"overhead: worst median ratio {worst.ratio_median:.2f} ({worst.benchmark})")
    return table


def _describe(config: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in (config or {}).items())
