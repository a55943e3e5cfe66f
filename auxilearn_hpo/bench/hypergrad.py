"""Cost of one hyperstep relative to one training step, side by side in one run, and accuracy at equal cost.

``auxilearn-hpo bench hypergrad`` prints two tables.

Cost, for an MLP 64-256-256-18 (ReLU) and a small CNN, batch 64, one thread: the median time
and the peak tensor memory of one hyperstep of each solver and ``K``, divided by those of one
ordinary training step (forward + backward + Adam step) of the same model. A transcription of
the original AuxiLearn hyperstep runs in the same loop as the reference at equal numerics
(unscaled Neumann); ``K = 0`` is the one-step lookahead. The ``difference`` rows take the
mixed term by a central difference of the training loss (:meth:`~auxilearn_hpo.optim.MetaOptimizer.step_by_difference`),
equal to the original's numerics up to the difference's error (about 1% relative in float32 on
a ReLU network). The ``compiled`` rows (at the two largest ``K``) run the learner's
``compile=True`` hyperstep, one ``torch.compile``-d program at the original's numerics up to
rounding, timed after it has compiled (the compile time, tens of seconds, is not in the
ratios). Its memory column is that of the same program run eagerly (``torch.func``, not
compiled), as the tensor tracker, a dispatch mode, would stop compilation. Every contender
is also timed as the learner runs it, a training step
together with its hyperstep: the original as a training step followed by its hyperstep (its
own forward pass), ours fused (one forward pass and one gradient graph serve both; the
``difference`` and ``compiled`` rows: a step, then its hyperstep);
``vs_original`` compares those totals, ``alone_vs_original`` the hypersteps alone.

Accuracy, on an MLP small enough for ``exact`` (8-32-32-4, tanh, float64, trained 300 Adam
steps, then 5 hypersteps 8 Adam steps apart, 10 seeds): each solver's cosine to the damped
exact hypergradient, with at most the 10 Hessian-vector products of the original's Neumann-10,
each solver keeping its warm-start state between hypersteps, over all parameters and over the
last two layers only (the heads and the last shared layer passed as the hypergradient's
``params``, the others held fixed). The last line compares warm-started CG-4 (5 products) to
the original.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_

from ..weightings.combiners import LinearCombiner
from ..hypergrad.functional import LossFunctions
from ..hypergrad import CG, EXACT_MAX_PARAMS, Exact, Neumann, hypergradient
from ..optim import MetaOptimizer
from .memory import PeakMemory

__all__ = ["run", "accuracy", "original_hyperstep"]


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
        self.functions: LossFunctions | None = None  # built by the first compiled hyperstep

    def losses(self, x, y):
        return (self.model(x) - y) ** 2

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        self.comb(self.losses(self.x, self.y)).backward(inputs=self.params)
        self.opt.step()

    def hyperstep(self, meta: MetaOptimizer | None, k: int, mode: str = "autograd"):
        if mode in ("compiled", "functional"):  # the learner's compile=True hyperstep (functional: not compiled)
            assert meta is not None
            if self.functions is None:
                self.functions = LossFunctions(self.model, self.comb, lambda model, b: (model(b[0]) - b[1]) ** 2,
                                               self.params, self.aux, 0)
            f = self.functions
            meta.step_functional(f.train_loss, f.val_loss, f.params(), f.aux_params(), (self.x, self.y),
                                 [(self.xa, self.ya)], compile=mode == "compiled")
            return
        val_loss = self.losses(self.xa, self.ya)[:, 0].mean()
        if mode == "difference":  # the mixed term by a central difference
            assert meta is not None
            meta.step_by_difference(lambda: self.comb(self.losses(self.x, self.y)), val_loss, self.params, self.aux)
            return
        train_loss = self.comb(self.losses(self.x, self.y))
        if meta is None:
            original_hyperstep(self.aux_opt, train_loss, val_loss, self.params, self.aux, 1e-2, k, 10.0)
        else:
            meta.step(train_loss, val_loss, self.params, self.aux)

    def step_with_hyperstep(self, meta: MetaOptimizer | None, k: int, mode: str = "autograd"):
        """A training step and its hyperstep as the learner runs them (the original, and ours by
        difference or ``compile``: one after the other; ours otherwise fused)."""
        if meta is None or mode != "autograd":
            self.train_step()
            if meta is not None:  # as the learner does, which frees the step's gradients first
                self.opt.zero_grad(set_to_none=True)
            self.hyperstep(meta, k, mode)
            return
        self.opt.zero_grad(set_to_none=True)
        train_loss = self.comb(self.losses(self.x, self.y))
        grads = torch.autograd.grad(train_loss, self.params, create_graph=True)
        meta.step(train_loss, self.losses(self.xa, self.ya)[:, 0].mean(), self.params, self.aux, train_grads=list(grads))
        for p, g in zip(self.params, grads):
            p.grad = g.detach()
        self.opt.step()


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


def run(*, repeats: int = 20, batch: int = 64, threads: int = 1, ks=(0, 1, 3, 10), compiled: bool = True) -> pd.DataFrame:
    """Measure every (model, solver, K); returns the table :func:`main` prints. ``compiled``:
    also the ``torch.compile``-d hyperstep at the two largest ``K`` (about 20 s to compile each)."""
    torch.set_num_threads(threads)
    rows = []
    for name, (factory, in_shape, n_tasks) in _models().items():
        s = _Setup(factory, in_shape, n_tasks, batch)
        n_params = sum(p.numel() for p in s.params)
        for _ in range(3):
            s.train_step()
        for solver in ("original", "neumann", "difference", "compiled", "cg", "exact"):
            for k in ks:
                if (solver == "cg" and k < 1) or (solver == "difference" and k not in (0, max(ks))):
                    continue
                if solver == "compiled" and (not compiled or k not in sorted(ks)[-2:]):
                    continue
                if solver == "exact" and (n_params > EXACT_MAX_PARAMS or k != ks[0]):
                    if k == ks[0]:
                        rows.append({"model": name, "solver": solver, "K": "-", "note": f"n/a: {n_params:,} params > {EXACT_MAX_PARAMS}"})
                    continue
                value = {"neumann": lambda: Neumann(steps=k, alpha=1e-2, scaled=False),  # the original's numerics
                         "difference": lambda: Neumann(steps=k, alpha=1e-2, scaled=False),
                         "compiled": lambda: Neumann(steps=k, alpha=1e-2, scaled=False),
                         "cg": lambda: CG(steps=k, tol=0.0, damping=1e-3),
                         "exact": lambda: Exact(damping=1e-3)}.get(solver)
                meta = None if value is None else MetaOptimizer(s.aux_opt, solver=value(), max_grad_norm=10.0)
                mode = solver if solver in ("difference", "compiled") else "autograd"
                hyper = lambda: s.hyperstep(meta, k, mode)
                both = lambda: s.step_with_hyperstep(meta, k, mode)
                warm = time.perf_counter()
                for _ in range(2):
                    hyper()
                    both()
                warm = time.perf_counter() - warm  # for the compiled rows, mostly compiling
                # Interleave so that drift on a shared machine hits all sides alike.
                t_train, t_hyper, t_both = [], [], []
                for _ in range(repeats):
                    t_train.append(_median_time(s.train_step, 1))
                    t_hyper.append(_median_time(hyper, 1))
                    t_both.append(_median_time(both, 1))
                m_train = _peak(s.train_step)
                if mode == "compiled":
                    # PeakMemory is a dispatch mode, under which torch.compile would fall back to eager for
                    # good: measured instead is the same program run eagerly (torch.func, not compiled)
                    hyper = lambda: s.hyperstep(meta, k, "functional")
                    both = lambda: s.step_with_hyperstep(meta, k, "functional")
                m_hyper, m_both = _peak(hyper), _peak(both)
                info = meta.last_info if meta is not None else None
                rows.append({
                    "model": name, "solver": solver, "K": k,
                    "train_ms": 1e3 * statistics.median(t_train), "hyper_ms": 1e3 * statistics.median(t_hyper),
                    "time_ratio": statistics.median(t_hyper) / statistics.median(t_train),
                    "step_ratio": statistics.median(t_both) / statistics.median(t_train),
                    "train_MB": m_train / 2**20, "hyper_MB": m_hyper / 2**20, "mem_ratio": max(m_hyper, m_both) / m_train,
                    "note": ("" if info is None else f"{info.iterations} it, {info.status}")
                            + (f", compiled in {warm:.0f} s" if mode == "compiled" else ""),
                })
    df = pd.DataFrame(rows)
    orig = df[df.solver == "original"].set_index(["model", "K"])
    for col, ratio in (("vs_original", "step_ratio"), ("alone_vs_original", "time_ratio")):
        df[col] = [getattr(r, ratio) / orig[ratio].get((r.model, r.K), float("nan")) if r.solver in ("neumann", "difference", "compiled")
                   else float("nan") for r in df.itertuples()]
    return df


def _small_problem(seed: int = 0):
    """A trained float64 MLP 8-32-32-4 whose 1,476 parameters ``exact`` can handle, its losses
    ``() -> (L_T, L_A)`` and ``step()``, one more Adam step of its training."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    x, xa = torch.randn(128, 8, generator=g, dtype=torch.float64), torch.randn(64, 8, generator=g, dtype=torch.float64)
    mix = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ mix) + 0.3 * torch.randn(128, 4, generator=g, dtype=torch.float64)
    ya = torch.tanh(xa @ mix) + 0.3 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    phi = torch.tensor([1.0, 0.5, 0.3, 0.1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step():
        opt.zero_grad()
        ((((model(x) - y) ** 2).mean(0)) * phi.detach()).sum().backward()
        opt.step()

    for _ in range(300):
        step()

    def losses():
        return ((((model(x) - y) ** 2).mean(0)) * phi).sum(), ((model(xa) - ya)[:, 0] ** 2).mean()

    return model, phi, losses, step


def _hessian(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The dense ``(n, n)`` Hessian of ``loss`` in ``params`` (flattened in order), by batched products."""
    grads = torch.autograd.grad(loss, params, create_graph=True)
    n = sum(p.numel() for p in params)
    eye = torch.eye(n, dtype=grads[0].dtype)
    cols = torch.autograd.grad(grads, params, grad_outputs=[e.view(n, *p.shape) for e, p in
                                                            zip(eye.split([p.numel() for p in params], dim=1), params)],
                               is_grads_batched=True)
    return torch.cat([c.reshape(n, -1) for c in cols], dim=1)


def _power_products(solver, state: dict) -> int:
    """Power-iteration products ``Neumann(alpha="auto").solve`` will spend on its next call with ``state``."""
    if not isinstance(solver, Neumann) or solver.alpha != "auto":
        return 0
    if state.get("alpha") is not None and state.get("calls", 0) % solver.power_every:
        return 0
    return max(1, solver.power_iters // 10) if state.get("eigvec") else solver.power_iters


#: The row ``bench hypergrad``'s last line reports: at most half the original's products.
HALF_COST = "cg-4 warm start (+1 product for the residual)"


def accuracy(*, damping: float = 1e-2, budget: int = 10, seeds: int = 10, hypersteps: int = 5,
             every: int = 8) -> pd.DataFrame:
    """Cosine of each solver's hypergradient to the damped exact one, at most ``budget`` products.

    On each seed's trained MLP, ``hypersteps`` hypersteps ``every`` Adam steps apart (the training
    goes on in between, as in the learner), each solver keeping its ``state`` (warm starts,
    the power iteration's eigenvector) from one hyperstep to the next. Columns: ``hvps`` (most
    products in one hyperstep, power iterations included), ``hvps_mean`` (per hyperstep),
    ``cos_first`` (mean at the first hyperstep, cold), ``cos_mean``/``cos_min`` over all
    seeds and hypersteps.
    """
    from ..learner_config import LearnerConfig

    half = budget // 2 - 1
    contenders = {
        f"original neumann-{budget} (alpha 1e-2, unscaled)": Neumann(steps=budget, alpha=1e-2, scaled=False, damping=damping),
        f"neumann-{budget - 1} alpha=auto (1 power it.)": Neumann(steps=budget - 1, alpha="auto", power_iters=1, damping=damping),
        f"neumann-{budget // 2} alpha=auto (5 power it.)": Neumann(steps=budget // 2, alpha="auto", power_iters=5, damping=damping),
        "neumann-3 alpha=auto (shipped default)": dataclasses.replace(LearnerConfig().make_solver(), damping=damping),
        f"cg-{budget}": CG(steps=budget, tol=0.0, damping=damping),
        f"cg-{half}": CG(steps=half, tol=0.0, damping=damping),
        HALF_COST: CG(steps=half, tol=0.0, damping=damping, warm_start=True),
        "identity (K = 0)": Neumann(steps=0, alpha=1.0, damping=damping),
    }
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    rows = []
    for seed in range(seeds):
        model, phi, losses, step = _small_problem(seed)
        params = list(model.parameters())
        states: dict = {}
        for hyperstep in range(hypersteps):
            for _ in range(every if hyperstep else 0):
                step()
            train, val = losses()
            hessian = _hessian(train, params).detach()
            train, val = losses()
            (ref,), _ = hypergradient(val, train, params, [phi], solver=Exact(damping=damping, hessian=hessian))
            for subset in ("all", "top"):
                inner = params if subset == "all" else params[-4:]  # the heads (last layer) and the last shared layer
                for name, solver in contenders.items():
                    state = states.setdefault((subset, name), {})
                    power = _power_products(solver, state)
                    train, val = losses()
                    (g,), info = hypergradient(val, train, inner, [phi], solver=solver, state=state)
                    rows.append({"solver": name, "implicit_params": subset, "seed": seed, "hyperstep": hyperstep,
                                 "hvps": info.iterations + power, "cosine": cosine(g, ref)})
                if subset == "top":
                    m = sum(p.numel() for p in inner)
                    train, val = losses()
                    (g,), _ = hypergradient(val, train, inner, [phi], solver=Exact(damping=damping, hessian=hessian[-m:, -m:]))
                    rows.append({"solver": "exact (damped)", "implicit_params": subset, "seed": seed,
                                 "hyperstep": hyperstep, "hvps": m, "cosine": cosine(g, ref)})
    raw = pd.DataFrame(rows)
    raw["first"] = raw.cosine.where(raw.hyperstep == 0)
    return (raw.groupby(["implicit_params", "solver"], sort=False)
            .agg(hvps=("hvps", "max"), hvps_mean=("hvps", "mean"), cos_first=("first", "mean"),
                 cos_mean=("cosine", "mean"), cos_min=("cosine", "min"))
            .reset_index())


def main(argv: list[str] | None = None) -> pd.DataFrame:
    import argparse

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench hypergrad", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed repetitions per row (median)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the reference used 1)")
    ap.add_argument("--no-compiled", action="store_true", help="skip the torch.compile rows (and their compile time)")
    args = ap.parse_args(argv)
    df = run(repeats=args.repeats, batch=args.batch, threads=args.threads, compiled=not args.no_compiled)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.2f}".format):
        print(df.fillna("").to_string(index=False))
    print("\ntime_ratio: one hyperstep / one training step (forward + backward + Adam), same model, same run; "
          "step_ratio: a training step with its hyperstep / one training step; mem_ratio: the larger peak of the two / "
          "a training step's (compiled: of the same program run eagerly).\nvs_original: ours / original step_ratio at equal K and numerics "
          "(ours fused; difference and compiled: a step, then its hyperstep); "
          "alone_vs_original: the same for the hyperstep alone.\n")
    acc = accuracy()
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(acc.to_string(index=False))
    print("\ncosine to the damped exact hypergradient (damping 1e-2) of a trained MLP 8-32-32-4, 10 seeds x 5 hypersteps "
          "8 Adam steps apart, each solver keeping its state (warm start, eigenvector) between hypersteps; hvps: most "
          "Hessian-vector products in one hyperstep (power iterations and the warm start's residual included), hvps_mean: "
          "per hyperstep; cos_first: mean at the first (cold) hyperstep; implicit_params=top: the last two layers only.")
    everything = acc[acc.implicit_params == "all"].set_index("solver")
    original, half = everything.iloc[0], everything.loc[HALF_COST]
    print(f"half cost: cosine {half.cos_mean:.3f} with {half.hvps} Hessian-vector products vs original Neumann-10 {original.cos_mean:.3f}")
    return df
