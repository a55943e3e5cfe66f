"""Autograd plumbing the hypergradients share: argument checks, graph queries, ``g_A``, ``H v``."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from .linalg import TensorList, norm
from .solvers import Solver

__all__ = ["as_tensor_list", "reaches", "share_graph", "val_gradient", "hvp_through", "relative_residual"]


def as_tensor_list(name: str, tensors: Iterable[Tensor] | Tensor) -> TensorList:
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    try:
        out = list(tensors)
    except TypeError:
        raise TypeError(f"{name} must be an iterable of tensors (a list, a generator or module.parameters()), "
                        f"got {type(tensors).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.requires_grad:
            raise ValueError(f"{name}[{i}] (shape {tuple(t.shape)}) does not require grad; "
                             "pass only tensors that are optimised")
    if not out:
        raise ValueError(f"{name} is empty: pass at least one tensor (was a generator already consumed?)")
    return out


def reaches(loss: Tensor, targets: Sequence[Tensor]) -> bool:
    """Whether any of ``targets`` (leaves or not) lies on ``loss``'s autograd graph."""
    ids = {id(t) for t in targets}
    non_leaf = {t.grad_fn for t in targets if t.grad_fn is not None}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        if fn in non_leaf:
            return True
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None and id(var) in ids:
            return True
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return False


def _graph_nodes(loss: Tensor) -> set:
    """The non-leaf autograd nodes of ``loss`` (those that hold saved tensors)."""
    seen, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen or hasattr(fn, "variable"):
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return seen


def share_graph(a: Tensor, b: Tensor) -> bool:
    return not _graph_nodes(a).isdisjoint(_graph_nodes(b))



def val_gradient(val_loss: Tensor, params: TensorList, retain_graph: bool = False) -> TensorList:
    """``g_A = dL_A/dW``, detached, zeros where ``L_A`` does not depend on a parameter."""
    if val_loss.grad_fn is None:
        return [torch.zeros_like(p) for p in params]
    got = torch.autograd.grad(val_loss, params, allow_unused=True, retain_graph=retain_graph)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, got)]


def hvp_through(outputs: TensorList, live: list[int], params: TensorList, v: TensorList) -> TensorList:
    """``H v`` by a backward pass through ``outputs``, the ``create_graph`` entries ``live`` of ``g_T``."""
    if not outputs:
        return [torch.zeros_like(t) for t in v]
    got = torch.autograd.grad(outputs, params, grad_outputs=[v[i] for i in live], retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(v, got)]


def relative_residual(hv: TensorList, g_val: TensorList, solver: Solver, alpha: float) -> float:
    """``||(H + damping I) v - g_A|| / ||g_A||`` from ``hv = (H + damping I) v``; an unscaled
    Neumann ``v`` is ``1 / alpha`` times the solution, so the residual is of ``alpha * v`` either way."""
    scale = 1.0 if getattr(solver, "scaled", True) else alpha
    r = torch._foreach_sub(torch._foreach_mul(hv, scale), g_val)
    gn = norm(g_val)
    return norm(r) / gn if gn > 0 else 0.0
