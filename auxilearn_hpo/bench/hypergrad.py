"""Cost of one hyperstep relative to one training step, side by side in one run.

``auxilearn-hpo bench hypergrad`` prints, for an MLP 64-256-256-18 (ReLU) and a small CNN,
batch 64, one thread: the median time and the peak tensor memory of one hyperstep of each
solver and ``K``, divided by those of one ordinary training step (forward + backward +
Adam step) of the same model. A transcription of the original AuxiLearn hyperstep runs in
the same loop as the reference at equal numerics (unscaled Neumann).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..combiners import LinearCombiner
from ..hypergrad import EXACT_MAX_PARAMS
from ..optim import MetaOptimizer
from .memory import PeakMemory

__all__ = ["run", "original_hyperstep"]


def original_hyperstep(meta_optimizer, train_loss, val_loss, params, aux_params, lr, truncate_iter, max_grad_norm):
    """The original AuxiLearn ``MetaOptimizer.step`` (auxilearn v1), transcribed with lists."""
    meta_optimizer.zero_grad()
    dval = torch.autograd.grad(val_loss, params, retain_graph=True, allow_unused=True)
    dtrain = torch.autograd.grad(train_loss, params, allow_unused=True, create_graph=True)
    p = v = dval
    for _ in range(truncate_iter):
        grad = torch.autograd.grad(dtrain, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        grad = [g * lr for g in grad]
        v = [cv - cg for cv, cg in zip(v, grad)]
        p = [cp + cv for cp, cv in zip(p, v)]
    v3 = torch.autograd.grad(dtrain, aux_params, grad_outputs=p, allow_unused=True)
    for a, g in zip(aux_params, [-g for g in v3]):
        a.grad = g
    clip_grad_norm_(aux_params, max_norm=max_grad_norm)
    meta_optimizer.step()


def _models() -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]]:
    mlp = lambda: nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 18))
    cnn = lambda: nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 8),
    )
    return {"mlp 64-256-256-18": (mlp, (64,), 18), "cnn 3x16x16": (cnn, (3, 16, 16), 8)}


class _Setup:
    """A model, a linear combiner over its outputs as tasks, data, and both optimizers."""

    def __init__(self, factory, in_shape, n_tasks, batch, seed=0):
        torch.manual_seed(seed)
        self.model = factory()
        self.comb = LinearCombiner(n_tasks)
        self.params = list(self.model.parameters())
        self.aux = list(self.comb.parameters())
        g = torch.Generator().manual_seed(seed)
        self.x, self.y = torch.randn(batch, *in_shape, generator=g), torch.randn(batch, n_tasks, generator=g)
        self.xa, self.ya = torch.randn(batch, *in_shape, generator=g), torch.randn(batch, n_tasks, generator=g)
        self.opt = torch.optim.Adam(self.params, lr=1e-4)
        self.aux_opt = torch.optim.Adam(self.aux, lr=1e-4)

    def losses(self, x, y):
        return (self.model(x) - y) ** 2

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        self.comb(self.losses(self.x, self.y)).backward(inputs=self.params)
        self.opt.step()

    def hyperstep(self, meta: MetaOptimizer | None, k: int):
        train_loss = self.comb(self.losses(self.x, self.y))
        val_loss = self.losses(self.xa, self.ya)[:, 0].mean()
        if meta is None:
            original_hyperstep(self.aux_opt, train_loss, val_loss, self.params, self.aux, 1e-2, k, 10.0)
        else:
            meta.step(train_loss, val_loss, self.params, self.aux)


def _median_time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def _peak(fn) -> int:
    with PeakMemory() as mem:
        fn()
    return mem.peak


def run(*, repeats: int = 20, batch: int = 64, threads: int = 1, ks=(1, 3, 10)) -> pd.DataFrame:
    """Measure every (model, solver, K); returns the table :func:`main` prints."""
    torch.set_num_threads(threads)
    rows = []
    for name, (factory, in_shape, n_tasks) in _models().items():
        s = _Setup(factory, in_shape, n_tasks, batch)
        n_params = sum(p.numel() for p in s.params)
        for _ in range(3):
            s.train_step()
        for solver in ("original", "neumann", "cg", "exact"):
            for k in ks:
                if solver == "exact" and (n_params > EXACT_MAX_PARAMS or k != ks[0]):
                    if k == ks[0]:
                        rows.append({"model": name, "solver": solver, "K": "-", "note": f"n/a: {n_params:,} params > {EXACT_MAX_PARAMS}"})
                    continue
                meta = None if solver == "original" else MetaOptimizer(
                    s.aux_opt, hpo_lr=1e-2, truncate_iter=k, max_grad_norm=10.0, solver=solver, tol=0.0,
                    damping=1e-3 if solver != "neumann" else 0.0)
                hyper = lambda: s.hyperstep(meta, k)
                for _ in range(2):
                    hyper()
                # Interleave so that drift on a shared machine hits both sides alike.
                t_train, t_hyper = [], []
                for _ in range(repeats):
                    t_train.append(_median_time(s.train_step, 1))
                    t_hyper.append(_median_time(hyper, 1))
                m_train, m_hyper = _peak(s.train_step), _peak(hyper)
                info = meta.last_info if meta is not None else None
                rows.append({
                    "model": name, "solver": solver, "K": k,
                    "train_ms": 1e3 * statistics.median(t_train), "hyper_ms": 1e3 * statistics.median(t_hyper),
                    "time_ratio": statistics.median(t_hyper) / statistics.median(t_train),
                    "train_MB": m_train / 2**20, "hyper_MB": m_hyper / 2**20, "mem_ratio": m_hyper / m_train,
                    "note": "" if info is None else f"{info.iterations} it, {info.status}",
                })
    df = pd.DataFrame(rows)
    orig = df[df.solver == "original"].set_index(["model", "K"])["time_ratio"]
    df["vs_original"] = [
        r.time_ratio / orig.get((r.model, r.K), float("nan")) if r.solver == "neumann" else float("nan")
        for r in df.itertuples()
    ]
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench hypergrad", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed repetitions per row (median)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the reference used 1)")
    args = ap.parse_args(argv)
    df = run(repeats=args.repeats, batch=args.batch, threads=args.threads)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        print(df.fillna("").to_string(index=False))
    print("\ntime_ratio, mem_ratio: one hyperstep / one training step (forward + backward + Adam), "
          "same model, same run. vs_original: ours / original at equal K and numerics.")
    return df
