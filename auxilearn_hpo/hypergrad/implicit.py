"""The implicit-function-theorem hypergradient, ``-(dL_A/dW) (H + damping I)^{-1} d^2 L_T / (dW dphi)``."""
from __future__ import annotations

import math
from typing import Any, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

from .graph import as_tensor_list, hvp_through, reaches, relative_residual, share_graph, val_gradient
from .linalg import SolveInfo, TensorList, norm
from .solvers import Exact, Neumann, Solver, make_solver, with_damping

__all__ = ["hypergradient", "Hypergradient", "HypergradInfo"]


class HypergradInfo(NamedTuple):
    """Diagnostics of one hypergradient, plain Python numbers."""

    solver: str  #: ``"neumann"``, ``"cg"`` or ``"exact"``
    iterations: int  #: solver iterations (Hessian-vector products inside the solver)
    residual: float  #: relative residual ``||(H + damping I) v - g_A|| / ||g_A||`` (nan: not computed)
    status: str  #: the solver's :attr:`SolveInfo.status`
    norm: float  #: Euclidean norm of the whole hypergradient
    finite: bool  #: ``False`` when the hypergradient contains NaN or inf
    alpha: float = math.nan  #: the Neumann step used (``nan`` for CG and exact)
    lambda_max: float = math.nan  #: power-iteration estimate of ``|lambda|_max(H)`` (``nan``: not estimated)



class Hypergradient(NamedTuple):
    """What :func:`hypergradient` returns: the gradients and their diagnostics."""

    grads: TensorList  #: one tensor per auxiliary parameter, shaped like it
    info: HypergradInfo  #: diagnostics (plain Python numbers)

    @classmethod
    def of(cls, grads: TensorList, solver: Solver, info: SolveInfo, residual: float) -> "Hypergradient":
        """``grads`` with the diagnostics of ``solver``'s solve ``info`` and the measured ``residual``."""
        size = norm(grads)
        return cls(grads, HypergradInfo(solver.name, info.iterations, float(residual), info.status, size,
                                        math.isfinite(size), float(info.alpha), float(info.lambda_max)))


def hypergradient(
    val_loss: Tensor,
    train_loss: Tensor,
    params: Iterable[Tensor],
    aux_params: Iterable[Tensor],
    *,
    solver: Solver | str = Neumann(),
    state: dict[str, Any] | None = None,
    train_grads: Sequence[Tensor | None] | None = None,
    retain_graph: bool = False,
) -> Hypergradient:
    """IFT hypergradient ``-(dL_A/dW) (H + damping I)^{-1} d^2 L_T / (dW dphi)``.

    Args:
        val_loss: scalar auxiliary-set loss ``L_A(W)`` (the main-task loss on held-out data).
        train_loss: scalar training loss ``L_T(W, phi)``.
        params: the inner parameters ``W`` (a list, tuple, generator or ``module.parameters()``);
            a subset of a model's parameters treats the others as constants (e.g. only the
            task heads: cheaper, and an approximation of the full hypergradient).
        aux_params: the auxiliary parameters ``phi``, same kinds accepted.
        solver: a :class:`Neumann`, :class:`CG` or :class:`Exact` value holding its options,
            or a name from :data:`SOLVERS` (that solver with its default options).
        state: a dict a solver keeps warm-start data in from one call to the next (the
            power-iteration eigenvector and step of ``Neumann(alpha="auto")``); pass the same
            dict every call. ``None``: a fresh one.
        train_grads: ``dL_T/dW`` for each of ``params`` (``None`` where unused), already built
            with ``create_graph=True``, e.g. by a training step that then steps ``W`` with
            their detached values; saves building them again.
        retain_graph: keep the graphs of both losses alive after the call. (When the two
            losses share part of a forward pass, that part is kept alive during the call
            automatically; otherwise the auxiliary-set graph is freed as soon as ``g_A`` exists.)

    Returns:
        :class:`Hypergradient` ``(grads, info)``: one tensor per auxiliary parameter, in order,
        shaped like it (zeros for a parameter that does not influence ``train_loss``), and a
        :class:`HypergradInfo`.

    Raises:
        ValueError: unknown ``solver``; empty ``params``/``aux_params``; no parameter of
            ``params`` influences ``train_loss``; no auxiliary parameter influences ``train_loss``.

    Example:
        >>> phi = torch.tensor([2.0], requires_grad=True)
        >>> w = torch.tensor([2.0], requires_grad=True)                 # W*(phi) = 3 phi / (phi + 1) = 2
        >>> train, val = phi * (w - 3) ** 2 + w ** 2, (w - 1) ** 2
        >>> grads, info = hypergradient(val.sum(), train.sum(), [w], [phi], solver=Exact())
        >>> round(float(grads[0]), 4), info.solver                      # 2 (W* - 1) dW*/dphi = 2 * 3 / 9
        (0.6667, 'exact')
    """
    solver = make_solver(solver)
    if state is None:
        state = {}
    params = as_tensor_list("params", params)
    aux_params = as_tensor_list("aux_params", aux_params)
    for name, loss in (("val_loss", val_loss), ("train_loss", train_loss)):
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"{name} must be a scalar tensor, got "
                             f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
    if train_loss.grad_fn is None:
        raise ValueError("train_loss has no autograd graph: it does not depend on params or aux_params")

    # g_T = dL_T/dW with a graph, built once (or handed over) and reused by every Hessian-vector product.
    if train_grads is None:
        g_train = torch.autograd.grad(train_loss, params, create_graph=True, allow_unused=True)
    else:
        g_train = tuple(train_grads)
        if len(g_train) != len(params):
            raise ValueError(f"train_grads must hold one entry per tensor of params ({len(params)}), got {len(g_train)}")
    live = [i for i, g in enumerate(g_train) if g is not None and g.requires_grad]
    if all(g is None for g in g_train):
        raise ValueError("no tensor in params influences train_loss; check that params are the "
                         "model's parameters used to compute train_loss")
    g_val = val_gradient(val_loss, params, retain_graph=retain_graph or share_graph(val_loss, train_loss))
    outputs = [g_train[i] for i in live]

    def hvp(v: TensorList) -> TensorList:
        return hvp_through(outputs, live, params, v)

    damped = with_damping(hvp, solver.damping)
    v, info = solver.solve(damped, g_val, state)

    # The mixed term -d/dphi (g_T . v); for Neumann the same backward pass can also yield
    # H v, so the residual costs no separate Hessian-vector product.
    want_hv = solver.residual and bool(outputs)
    inputs = aux_params + (params if want_hv else [])
    if outputs:
        got = torch.autograd.grad(outputs, inputs, grad_outputs=[v[i].detach() for i in live],
                                  retain_graph=retain_graph, allow_unused=True)
    else:
        got = [None] * len(inputs)
    mixed = got[: len(aux_params)]
    if all(g is None for g in mixed) and not reaches(train_loss, aux_params):
        raise ValueError("no tensor in aux_params influences train_loss, so the hypergradient is "
                         "undefined; check that the auxiliary parameters are used to compute train_loss")
    grads = [torch.zeros_like(p) if g is None else g.neg_() for p, g in zip(aux_params, mixed)]

    res = info.residual
    if want_hv:
        hv = [torch.zeros_like(t) if g is None else g for t, g in zip(params, got[len(aux_params):])]
        if solver.damping:
            torch._foreach_add_(hv, v, alpha=solver.damping)
        res = relative_residual(hv, g_val, solver, info.alpha)
    return Hypergradient.of(grads, solver, info, res)

