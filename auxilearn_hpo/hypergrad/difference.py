"""The hypergradient with its mixed term taken by a central difference of the training loss."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .graph import as_tensor_list, hvp_through, relative_residual, val_gradient
from .implicit import Hypergradient
from .linalg import TensorList, norm
from .solvers import Neumann, Solver, make_solver, with_damping

__all__ = ["difference_hypergradient", "difference_step"]


def difference_step(dtype: torch.dtype) -> float:
    """The default relative step of :func:`difference_hypergradient`: ``sqrt(eps)`` of the dtype
    (3.5e-4 in float32, 1.5e-8 in float64). A piecewise-linear network (ReLU) makes the
    difference's error grow with the step (units that change sign), not with its square, so
    the step that balances it against rounding (``O(eps / h)``) is ``sqrt(eps)``; on a ReLU
    MLP in float32 it gave 1% relative error against 5% at ``eps ** (1/3)``."""
    return float(torch.finfo(dtype).eps) ** 0.5


def difference_hypergradient(
    val_loss: Tensor,
    train_loss: Callable[[], Tensor],
    params: Iterable[Tensor],
    aux_params: Iterable[Tensor],
    *,
    solver: Solver | str = Neumann(),
    state: dict[str, Any] | None = None,
    step: float | None = None,
) -> Hypergradient:
    """The hypergradient of :func:`hypergradient` with its mixed term taken by a central difference.

    ``g_T . v`` is the derivative of ``L_T`` along ``v``, so

    .. math::

        -\\frac{\\partial}{\\partial\\phi} (g_T \\cdot v) \\approx
        -\\frac{\\partial}{\\partial\\phi} \\frac{L_T(W + h v, \\phi) - L_T(W - h v, \\phi)}{2 h}

    with an ``O(h^2)`` error: two evaluations of the training loss with ``W`` held fixed (no
    graph through the model, only through ``phi``) replace the double-backward pass through
    ``g_T``. ``g_T`` itself (with ``create_graph=True``) is built only if the solver asks for a
    Hessian-vector product, so the one-step lookahead (``Neumann(steps=0)`` with a fixed
    ``alpha``, or between the re-estimates of ``alpha="auto"``) needs none.

    Args:
        val_loss: scalar auxiliary-set loss ``L_A(W)``.
        train_loss: recomputes the scalar ``L_T(W, phi)`` at the current values of ``params``,
            on the same batch with the same randomness (dropout masks) each call.
        params, aux_params, solver, state: as in :func:`hypergradient`.
        step: ``h = step * max(||W||, 1) / ||v||``, a relative step; ``None``:
            :func:`difference_step` of ``params``' dtype.

    ``params`` are moved by ``+-h v`` in place, evaluated with ``requires_grad`` off, and
    restored exactly (copied back), also when ``train_loss`` raises.
    """
    solver = make_solver(solver)
    if state is None:
        state = {}
    params = as_tensor_list("params", params)
    aux_params = as_tensor_list("aux_params", aux_params)
    if not isinstance(val_loss, Tensor) or val_loss.numel() != 1:
        raise ValueError(f"val_loss must be a scalar tensor, got "
                         f"{tuple(val_loss.shape) if isinstance(val_loss, Tensor) else type(val_loss).__name__}")
    if step is not None and not (isinstance(step, (int, float)) and 0 < step < math.inf):
        raise ValueError(f"step must be a positive finite number or None, got {step!r}")
    g_val = val_gradient(val_loss, params)
    built: list[Any] = []  # (g_T's live entries with a graph, their indices), at the first product only

    def hvp(v: TensorList) -> TensorList:
        if not built:
            g_train = torch.autograd.grad(train_loss(), params, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(g_train) if g is not None and g.requires_grad]
            built.append(([g_train[i] for i in live], live))
        return hvp_through(*built[0], params, v)

    damped = with_damping(hvp, solver.damping)
    v, info = solver.solve(damped, g_val, state)
    v = [t.detach() for t in v]
    res = info.residual
    if solver.residual:
        res = relative_residual(damped(v), g_val, solver, info.alpha)
    built.clear()
    grads = _mixed_difference(train_loss, params, aux_params, v, step)
    return Hypergradient.of(grads, solver, info, res)


def _mixed_difference(train_loss: Callable[[], Tensor], params: TensorList, aux_params: TensorList,
                      v: TensorList, step: float | None) -> TensorList:
    """``-d/dphi (g_T . v)`` by a central difference of ``train_loss`` along ``v`` (see
    :func:`difference_hypergradient`)."""
    size = norm(v)
    if size == 0.0 or not math.isfinite(size):
        fill = 0.0 if size == 0.0 else math.nan
        return [torch.full_like(p, fill) for p in aux_params]
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        h = (step if step is not None else difference_step(saved[0].dtype)) * max(norm(saved), 1.0) / size
    flags = [p.requires_grad for p in params]
    values = []
    try:
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, s, d in zip(params, saved, v):
                    p.copy_(s).add_(d, alpha=sign * h)
            for p in params:
                p.requires_grad_(False)
            try:
                values.append(train_loss())
            finally:
                for p, f in zip(params, flags):
                    p.requires_grad_(f)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    if not isinstance(values[0], Tensor) or values[0].numel() != 1:
        raise ValueError("train_loss() must return a scalar tensor")
    slope = (values[0] - values[1]) / (2.0 * h)
    if not slope.requires_grad:
        raise ValueError("no tensor in aux_params influences train_loss, so the hypergradient is "
                         "undefined; check that the auxiliary parameters are used to compute train_loss")
    got = torch.autograd.grad(slope, aux_params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.neg() for p, g in zip(aux_params, got)]

