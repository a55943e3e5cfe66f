"""The Neumann hypergradient as a pure function of parameter dicts, for ``torch.compile``.

:func:`~auxilearn_hpo.hypergrad.hypergradient` works on autograd graphs the caller has built,
one ``torch.autograd.grad`` call per Hessian-vector product. Here the caller passes functions
of the parameters instead, so the whole hyperstep -- ``g_A``, the ``steps`` Hessian-vector
products of the Neumann series and the mixed term -- is one function of tensors
(``torch.func.grad`` and ``torch.func.vjp``) that ``torch.compile`` can turn into one program.
The numbers are those of ``hypergradient`` with the same :class:`~auxilearn_hpo.hypergrad.Neumann`
solver, up to floating-point reassociation; the growth guard of the scaled series is a mask
rather than an early exit, so the program has no data-dependent branch.

Compiling costs seconds to a minute once per model and batch shape (a new shape, e.g. a
smaller last batch, compiles once more), and pays only over many hypersteps.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.utils._pytree
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp

from .implicit import Hypergradient
from .linalg import SolveInfo
from .solvers import Neumann, Solver, make_solver

__all__ = ["functional_hypergradient", "neumann_kernel", "power_kernel", "LossFunctions", "check_compile"]

Params = dict[str, Tensor]
TrainLossFn = Callable[[Params, Params, Any], Tensor]
ValLossFn = Callable[[Params, Any], Tensor]


def check_compile(value: Any) -> None:
    """Raise a ``ValueError`` unless ``value`` is a bool or a registered ``torch.compile`` backend name."""
    if isinstance(value, bool):
        return
    if isinstance(value, str) and value:
        import torch._dynamo

        if value in torch._dynamo.list_backends(exclude_tags=()):
            return
    raise ValueError(f"compile must be a bool or a torch.compile backend name (e.g. 'inductor', 'aot_eager'), "
                     f"got {value!r}")


def _tree_norm(d: Mapping[str, Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in d.values()]))


def neumann_kernel(
    train_loss_fn: TrainLossFn, val_loss_fn: ValLossFn, params: Params, aux_params: Params, batch: Any,
    val_batch: Any, alpha: Tensor, *, steps: int, scaled: bool, guard: bool, damping: float,
) -> tuple[Params, Tensor, Tensor]:
    """``(-d/dphi (g_T . v), iterations, converging)`` with ``v`` the truncated Neumann series for ``H^{-1} g_A``.

    ``train_loss_fn(params, aux_params, batch)`` and ``val_loss_fn(params, val_batch)`` are the
    scalar losses ``L_T(W, phi)`` and ``L_A(W)``; ``alpha`` is a 0-dim tensor (a new value
    compiles nothing new). ``guard``: drop the first growing term and every later one (the
    ``stop_on_growth`` of :func:`~auxilearn_hpo.hypergrad.neumann`). Returns a dict shaped like
    ``aux_params``, the Hessian-vector products the eager series would have made and whether no
    term grew (0-dim tensors).
    """
    g_val = grad(val_loss_fn)(params, val_batch)

    def g_train(p: Params, a: Params) -> Params:
        return grad(train_loss_fn)(p, a, batch)

    # one linearisation of g_T in (W, phi): its transpose gives H v (H is symmetric) and the mixed term
    _, pullback = vjp(g_train, params, aux_params)
    v, total = g_val, dict(g_val)
    alive = torch.ones((), dtype=torch.bool, device=alpha.device)  # no term has grown yet
    last = _tree_norm(v)
    made = torch.zeros((), dtype=torch.long, device=alpha.device)
    for _ in range(steps):
        hv = pullback(v)[0]
        nxt = {k: v[k] - alpha * (hv[k] + damping * v[k] if damping else hv[k]) for k in v}
        if guard:
            made = made + alive.long()
            size = _tree_norm(nxt)
            alive = alive & (size <= last)  # NaN compares false: a NaN term stops the series too
            last = torch.where(alive, size, last)
            total = {k: total[k] + torch.where(alive, nxt[k], torch.zeros_like(nxt[k])) for k in total}
        else:
            made = made + 1
            total = {k: total[k] + nxt[k] for k in total}
        v = nxt
    if scaled:
        total = {k: alpha * t for k, t in total.items()}
    mixed = pullback(total)[1]
    return {k: -t for k, t in mixed.items()}, made, alive


def power_kernel(
    train_loss_fn: TrainLossFn, params: Params, aux_params: Params, batch: Any, start: Params, *, iters: int,
    damping: float,
) -> tuple[Tensor, Params]:
    """:func:`~auxilearn_hpo.hypergrad.largest_eigenvalue` of ``H + damping I`` (``H`` of
    ``train_loss_fn`` in ``params``) from the nonzero ``start``, without data-dependent branches:
    ``(|lambda|, unit vector)`` as 0-dim tensor and dict; a zero or non-finite product ends the
    iteration as there (``|lambda|`` that value, the vector the last good one)."""
    def g_train(p: Params) -> Params:
        return grad(train_loss_fn)(p, aux_params, batch)

    _, pullback = vjp(g_train, params)
    size = _tree_norm(start)
    v = {k: t / size for k, t in start.items()}
    lam = torch.zeros((), dtype=size.dtype, device=size.device)
    ok = torch.ones((), dtype=torch.bool, device=size.device)
    for _ in range(iters):
        hv = pullback(v)[0]
        if damping:
            hv = {k: hv[k] + damping * v[k] for k in hv}
        new = _tree_norm(hv)
        good = ok & (new > 0) & torch.isfinite(new)
        lam = torch.where(ok, new, lam)
        v = {k: torch.where(good, hv[k] / new, v[k]) for k in v}
        ok = good
    return lam, v


def _kernels(state: dict[str, Any], solver: Neumann, compile: bool | str) -> dict[str, Callable[..., Any]]:
    """The (compiled) Neumann and power-iteration kernels for these solver options, built once
    and kept in ``state``."""
    key = ("kernel", solver.steps, solver.scaled, solver.stop_on_growth, solver.damping, compile)
    kernels = state.get(key)
    if kernels is None:
        guard = solver.scaled if solver.stop_on_growth is None else solver.stop_on_growth

        def run(train_loss_fn, val_loss_fn, params, aux_params, batch, val_batch, alpha):
            return neumann_kernel(train_loss_fn, val_loss_fn, params, aux_params, batch, val_batch, alpha,
                                  steps=solver.steps, scaled=solver.scaled, guard=guard, damping=solver.damping)

        def power(train_loss_fn, params, aux_params, batch, start, iters):
            return power_kernel(train_loss_fn, params, aux_params, batch, start, iters=iters, damping=solver.damping)

        if compile:
            # static shapes: a new batch size compiles once more (dropout under grad fails with symbolic sizes)
            run, power = (torch.compile(f, backend="inductor" if compile is True else compile, dynamic=False)
                          for f in (run, power))
        kernels = state[key] = {"neumann": run, "power": power}
    return kernels


def functional_hypergradient(
    train_loss_fn: TrainLossFn,
    val_loss_fn: ValLossFn,
    params: Mapping[str, Tensor],
    aux_params: Mapping[str, Tensor],
    batch: Any,
    val_batch: Any,
    *,
    solver: Solver | str = Neumann(),
    state: dict[str, Any] | None = None,
    compile: bool | str = False,
) -> Hypergradient:
    """:func:`~auxilearn_hpo.hypergrad.hypergradient` for losses given as functions of the parameters.

    Args:
        train_loss_fn: ``(params, aux_params, batch) -> L_T``, a scalar; ``params`` and
            ``aux_params`` are dicts of tensors keyed as given here.
        val_loss_fn: ``(params, val_batch) -> L_A``, a scalar.
        params: the inner parameters ``W`` by name (detached values are fine: nothing here
            builds a graph outside the function transforms).
        aux_params: the auxiliary parameters ``phi`` by name.
        batch, val_batch: passed through to the loss functions (tensors or containers of them).
        solver: a :class:`~auxilearn_hpo.hypergrad.Neumann` (or ``"neumann"``); ``alpha="auto"``
            runs its power iteration (:func:`power_kernel`, compiled too) every ``power_every``
            calls. ``residual=True`` is not supported.
        state: as in ``hypergradient``; also holds the built kernels, so pass the same dict
            every call to compile only once.
        compile: ``False`` (eager ``torch.func``), ``True`` (``torch.compile``, inductor) or
            the name of a ``torch.compile`` backend (e.g. ``"aot_eager"``).

    Returns:
        :class:`~auxilearn_hpo.hypergrad.Hypergradient`, ``grads`` in the order of
        ``aux_params``; ``residual`` is nan.
    """
    solver = make_solver(solver)
    if not isinstance(solver, Neumann):
        raise ValueError(f"solver must be a Neumann solver for the functional hypergradient, got {solver.name!r}")
    if solver.residual:
        raise ValueError("residual=True is not supported by the functional hypergradient")
    check_compile(compile)
    if not params or not aux_params:
        raise ValueError("params and aux_params must each hold at least one tensor")
    if state is None:
        state = {}
    params = {k: t.detach() for k, t in params.items()}
    aux = {k: t.detach() for k, t in aux_params.items()}

    kernels = _kernels(state, solver, compile)

    def eigen(start: list[Tensor], iters: int) -> tuple[float, list[Tensor]]:
        lam, vec = kernels["power"](train_loss_fn, params, aux, batch, dict(zip(params, start)), iters)
        return float(lam), [vec[k] for k in params]

    def g_val() -> list[Tensor]:
        got = grad(val_loss_fn)(params, val_batch)
        return [got[k] for k in params]

    def no_hvp(v: list[Tensor]) -> list[Tensor]:  # pragma: no cover - eigen stands in for it
        raise AssertionError("the power iteration runs in power_kernel")

    with torch.no_grad():
        alpha, lam = solver.step_size(no_hvp, g_val, state, eigen=eigen)
        first = next(iter(params.values()))
        mixed, made, alive = kernels["neumann"](train_loss_fn, val_loss_fn, params, aux, batch, val_batch,
                                                torch.tensor(alpha, dtype=first.dtype, device=first.device))
    grads = [mixed[k] for k in aux]
    iterations = int(made)
    status = "max_steps" if bool(alive) else "diverging"
    return Hypergradient.of(grads, solver, SolveInfo(iterations, math.nan, status, float(alpha), float(lam)), math.nan)


class _Root(nn.Module):
    def __init__(self, model: nn.Module, weighting: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor]) -> None:
        super().__init__()
        self.model, self.weighting, self.loss_fn = model, weighting, loss_fn

    def forward(self, batch: Any, combine: bool) -> Tensor:
        losses = self.loss_fn(self.model, batch)
        return self.weighting(losses) if combine else losses


class LossFunctions:
    """A learner's training and auxiliary-set losses as functions of parameter dicts.

    ``model``, ``weighting`` and ``loss_fn(model, batch) -> (B, T)`` as the learner holds them;
    ``params`` (a subset of the model's parameters: the implicit ones) and ``aux_params``
    (the weighting's learned ones) become the dict arguments of :meth:`train_loss` and
    :meth:`val_loss`, keyed by their names in the model and the weighting. Every other
    parameter is a constant; buffers are copied at each call, so batch-norm statistics are
    used but not updated.
    """

    def __init__(self, model: nn.Module, weighting: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor],
                 params: list[Tensor], aux_params: list[Tensor], main_task: int) -> None:
        self._root = _Root(model, weighting, loss_fn)
        self._main = main_task
        names = {id(t): k for k, t in self._root.named_parameters(remove_duplicate=False)}
        model_ids = {id(t) for t in model.parameters()}
        weighting_ids = {id(t) for t in weighting.parameters()}
        if any(id(t) not in model_ids for t in params):
            raise ValueError("params must be parameters of model")
        if any(id(t) not in weighting_ids for t in aux_params):
            raise ValueError("aux_params must be parameters of the weighting (compile needs every auxiliary "
                             "parameter to act through the weighting module)")
        self._params = [(names[id(t)], t) for t in params]
        self._aux = [(names[id(t)], t) for t in aux_params]
        self._buffers = list(self._root.named_buffers())

    @staticmethod
    def batch_size(batch: Any) -> int:
        """Samples in ``batch``: the first dimension of its first tensor."""
        for leaf in torch.utils._pytree.tree_leaves(batch):
            if isinstance(leaf, Tensor) and leaf.dim() > 0:
                return int(leaf.shape[0])
        raise ValueError("a batch must hold at least one tensor with a batch dimension")

    def params(self) -> Params:
        """The inner parameters by name (the tensors themselves)."""
        return dict(self._params)

    def aux_params(self) -> Params:
        """The auxiliary parameters by name (the tensors themselves)."""
        return dict(self._aux)

    def _call(self, params: Params, batch: Any, aux_params: Params | None = None) -> Tensor:
        values = {**params, **(aux_params or {}), **{k: b.clone() for k, b in self._buffers}}
        return functional_call(self._root, values, (batch, aux_params is not None), strict=False)

    def train_loss(self, params: Params, aux_params: Params, batch: Any) -> Tensor:
        """``L_T(W, phi)``: the weighting's combined loss of ``batch``, a scalar."""
        return self._call(params, batch, aux_params)

    def val_loss(self, params: Params, batches: list[Any]) -> Tensor:
        """``L_A(W)``: the mean main-task loss over the samples of ``batches``, a scalar."""
        total, count = None, 0
        for batch in batches:
            main = self._call(params, batch)[:, self._main]
            part = main.flatten(1).mean(1).sum() if main.dim() > 1 else main.sum()
            total = part if total is None else total + part
            count += main.shape[0]
        assert total is not None, "batches is empty"
        return total / max(count, 1)
