"""Linear solvers for ``A x = b`` on lists of tensors, with ``A`` given by its products.

Every solver has one signature, ``solver(hvp, b, **options) -> (x, SolveInfo)``, where ``hvp``
maps a list of tensors to the list ``A v`` and ``b`` is a list of tensors (TorchOpt style):

* :func:`neumann` -- truncated Neumann series (Lorraine et al. 2020);
* :func:`conjugate_gradient` -- CG with curvature checks (Grazzi et al. 2020);
* :func:`exact` -- a dense matrix and a linear solve, the reference for small models;

and :func:`largest_eigenvalue` estimates ``|lambda|_max`` by power iteration. :func:`dot`,
:func:`norm` and :func:`unflatten` are the list algebra they share.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["SolveInfo", "neumann", "conjugate_gradient", "exact", "largest_eigenvalue", "EXACT_MAX_PARAMS",
           "TensorList", "HVP", "dot", "norm", "unflatten"]

TensorList = list[Tensor]
HVP = Callable[[TensorList], TensorList]

#: Largest number of inner parameters :func:`exact` accepts by default (a dense ``n x n`` Hessian).
EXACT_MAX_PARAMS = 4096


class SolveInfo(NamedTuple):
    """What a linear solver did; plain Python numbers, safe to put in reports."""

    iterations: int  #: Hessian-vector products spent inside the solver
    residual: float  #: ``||(H + damping I) x - b|| / ||b||``; ``nan`` if not known yet
    status: str  #: ``"max_steps"``, ``"converged"``, ``"negative_curvature"``, ``"diverging"`` or ``"solved"``
    alpha: float = math.nan  #: the Neumann step used (``nan`` for other solvers)
    lambda_max: float = math.nan  #: power-iteration estimate of ``|lambda|_max`` (``nan``: not estimated)


# --------------------------------------------------------------------------- list algebra
def dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def norm(a: Sequence[Tensor]) -> float:
    if not a:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in a])))


# --------------------------------------------------------------------------- solvers
def neumann(
    hvp: HVP, b: TensorList, *, steps: int = 3, alpha: float = 0.1, scaled: bool = True, stop_on_growth: bool | None = None
) -> tuple[TensorList, SolveInfo]:
    """Truncated Neumann series for ``A x = b`` (``A`` given by ``hvp``).

    Runs ``p = v = b; repeat steps times: v = v - alpha * A v; p = p + v`` so that
    ``p = sum_{k=0}^{steps} (I - alpha A)^k b``, which approximates ``(alpha A)^{-1} b``.
    With ``scaled=True`` (default) the result is ``alpha * p``, an approximation of
    ``A^{-1} b`` that converges to it as ``steps`` grows whenever ``0 < alpha < 2 / lambda_max(A)``
    and ``A`` is positive definite. ``scaled=False`` returns the unscaled ``p`` of the original
    AuxiLearn code, ``1 / alpha`` times larger.

    When ``alpha`` is too large for the curvature (``alpha * lambda_max > 2``) or ``A`` has
    negative eigenvalues, the terms ``(I - alpha A)^k b`` grow and the sum is garbage. With
    ``stop_on_growth`` (default: the value of ``scaled``) the series stops before the first
    term whose norm exceeds its predecessor's, keeping the sum so far (at worst ``alpha * b``,
    the identity approximation of ``A^{-1}``), with status ``"diverging"``. The unscaled,
    seed-compatible series always runs all ``steps`` terms, as the original does.

    References:
        Lorraine, Vicol, Duvenaud (2020). Optimizing Millions of Hyperparameters by Implicit
        Differentiation. https://arxiv.org/abs/1911.02590

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> x, info = neumann(lambda v: [A @ v[0]], [torch.tensor([2.0, 1.0])], steps=60, alpha=0.5)
        >>> torch.allclose(x[0], torch.tensor([1.0, 1.0]))
        True
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    guard = scaled if stop_on_growth is None else stop_on_growth
    v = list(b)
    p = [t.clone() for t in b]
    status, last = "max_steps", norm(v) if guard else 0.0
    for k in range(steps):
        hv = hvp(v)  # a fresh list: the next term is built in its storage, v - alpha * H v
        torch._foreach_mul_(hv, -alpha)
        torch._foreach_add_(hv, v)
        v = hv
        if guard:
            size = norm(v)
            if not size <= last:  # growing (or NaN): the series diverges for this alpha
                status, steps = "diverging", k + 1
                break
            last = size
        torch._foreach_add_(p, v)
    if scaled:
        torch._foreach_mul_(p, alpha)
    return p, SolveInfo(steps, math.nan, status)


def conjugate_gradient(hvp: HVP, b: TensorList, *, steps: int = 10, tol: float = 1e-6) -> tuple[TensorList, SolveInfo]:
    """Conjugate gradient for ``A x = b`` with ``A`` symmetric (``hvp`` gives ``A v``).

    Stops after ``steps`` iterations, when ``||r|| <= tol ||b||``, or when a search direction
    ``d`` has ``d . A d <= 0`` (negative or zero curvature: ``A`` is not positive definite
    there, as a network's Hessian often is). In that last case it returns the best iterate so
    far (``x = 0`` if it happens at the first iteration) with status ``"negative_curvature"``;
    add ``damping`` in :func:`hypergradient` to make ``A`` positive definite.

    References:
        Grazzi, Franceschi, Pontil, Salzo (2020). On the Iteration Complexity of Hypergradient
        Computation. https://arxiv.org/abs/2006.16218

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x, info = conjugate_gradient(lambda v: [A @ v[0]], [A @ torch.tensor([1.0, -2.0])])
        >>> torch.allclose(x[0], torch.tensor([1.0, -2.0])), info.status
        (True, 'converged')
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    d = [t.clone() for t in b]
    rs = dot(r, r)
    b_norm = math.sqrt(float(rs))
    if b_norm == 0.0:
        return x, SolveInfo(0, 0.0, "converged")
    status, it = "max_steps", 0
    for it in range(1, steps + 1):
        ad = hvp(d)
        curvature = dot(d, ad)
        if not float(curvature) > 0.0:  # also catches NaN
            status, it = "negative_curvature", it - 1
            break
        step = rs / curvature
        torch._foreach_add_(x, torch._foreach_mul(d, step))
        torch._foreach_sub_(r, torch._foreach_mul(ad, step))
        rs_new = dot(r, r)
        if math.sqrt(float(rs_new)) <= tol * b_norm:
            rs, status = rs_new, "converged"
            break
        torch._foreach_mul_(d, rs_new / rs)
        torch._foreach_add_(d, r)
        rs = rs_new
    return x, SolveInfo(it, math.sqrt(float(rs)) / b_norm, status)


def exact(hvp: HVP, b: TensorList, *, hessian: Tensor | None = None, max_params: int = EXACT_MAX_PARAMS) -> tuple[TensorList, SolveInfo]:
    """Solve ``A x = b`` with a dense ``A`` built from ``n`` Hessian-vector products.

    For small problems only: refuses ``n > max_params``. ``A`` is symmetrised; a singular
    ``A`` falls back to the least-squares (minimum-norm) solution.

    Args:
        hessian: the dense ``(n, n)`` matrix if the caller already has it (skips the build).

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x, _ = exact(lambda v: [A @ v[0]], [A @ torch.tensor([1.0, -2.0], dtype=torch.float64)])
        >>> torch.allclose(x[0], torch.tensor([1.0, -2.0], dtype=torch.float64))
        True
    """
    n = sum(t.numel() for t in b)
    if n > max_params:
        raise ValueError(
            f"solver='exact' builds a dense {n}x{n} Hessian; that exceeds max_params={max_params}. "
            "Use solver='cg' or 'neumann' for models this size."
        )
    flat_b = torch.cat([t.reshape(-1) for t in b])
    if hessian is None:
        cols = []
        eye = torch.eye(n, dtype=flat_b.dtype, device=flat_b.device)
        for i in range(n):
            cols.append(torch.cat([t.reshape(-1) for t in hvp(unflatten(eye[i], b))]))
        hessian = torch.stack(cols, dim=1)
    a = 0.5 * (hessian + hessian.T)
    bn = float(torch.linalg.vector_norm(flat_b))

    def rel_residual(x: Tensor) -> float:
        return float(torch.linalg.vector_norm(a @ x - flat_b)) / bn if bn > 0 else 0.0

    try:
        flat_x = torch.linalg.solve(a, flat_b)
        res = rel_residual(flat_x) if torch.isfinite(flat_x).all() else math.inf
    except RuntimeError:
        res = math.inf
    # A singular A (e.g. parameters outside the loss give zero rows) can make solve() return
    # a finite but wrong answer: fall back to the SVD-based minimum-norm least-squares solution.
    if not res <= 100 * torch.finfo(a.dtype).eps ** 0.5:
        flat_x = torch.linalg.lstsq(a, flat_b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        res = rel_residual(flat_x)
    return unflatten(flat_x, b), SolveInfo(n, res, "solved")


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> TensorList:
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def largest_eigenvalue(hvp: HVP, v: TensorList, *, iters: int = 10) -> tuple[float, TensorList]:
    """Power iteration for the largest-magnitude eigenvalue of the symmetric ``A`` behind ``hvp``.

    Starts from ``v`` (a previous estimate of the top eigenvector warm-starts it; any nonzero
    list of tensors shaped like the parameters works), runs ``iters`` Hessian-vector products
    and returns ``(|lambda|, unit vector)``, where ``|lambda| = ||A v|| / ||v||`` at the last
    iterate. The estimate approaches ``max |lambda_i|`` from below.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 1.0]))
        >>> lam, _ = largest_eigenvalue(lambda v: [A @ v[0]], [torch.ones(2)], iters=40)
        >>> round(lam, 4)
        3.0
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    size = norm(v)
    if not size > 0 or not math.isfinite(size):
        raise ValueError("power iteration needs a finite, nonzero start vector v")
    v = torch._foreach_div(list(v), size)
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        lam = norm(hv)
        if not lam > 0 or not math.isfinite(lam):  # zero Hessian (or NaN): nothing to scale by
            return lam, v
        v = torch._foreach_div(hv, lam)
    return lam, v

