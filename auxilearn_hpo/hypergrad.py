"""Implicit-function-theorem hypergradients for bilevel problems.

Inner parameters ``W`` minimise the training loss ``L_T(W, phi)``; the auxiliary parameters
``phi`` are judged by the auxiliary-set loss ``L_A(W)``. At a (near) optimum of ``L_T`` the
implicit function theorem gives

.. math::

    \\frac{dL_A}{d\\phi} = -\\frac{\\partial L_A}{\\partial W} H^{-1}
        \\frac{\\partial^2 L_T}{\\partial W \\partial \\phi}, \\qquad
    H = \\frac{\\partial^2 L_T}{\\partial W^2}.

``v ~= (H + damping I)^{-1} g_A`` is approximated by one of three solvers that share one
signature, ``solver(hvp, b, **options) -> (x, SolveInfo)``, where ``hvp`` maps a list of
tensors to the list ``A v`` and ``b`` is a list of tensors (TorchOpt style):

* :func:`neumann` -- truncated Neumann series (Lorraine et al. 2020);
* :func:`conjugate_gradient` -- CG with curvature checks (Grazzi et al. 2020);
* :func:`exact` -- a dense Hessian and a linear solve, the reference for small models.

Callers choose a solver as a value that holds its options -- :class:`Neumann`, :class:`CG`,
:class:`Exact` (or a name, :func:`make_solver`); damping wraps the Hessian-vector product.
:func:`hypergradient` wires them to losses: it builds ``g_T = dL_T/dW`` once with
``create_graph=True`` (or takes the training step's) and reuses it for every Hessian-vector
product, then returns ``-d/dphi (g_T . v)`` with its diagnostics.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = [
    "Solver",
    "Neumann",
    "CG",
    "Exact",
    "SOLVERS",
    "make_solver",
    "hypergradient",
    "difference_hypergradient",
    "difference_step",
    "Hypergradient",
    "HypergradInfo",
    "SolveInfo",
    "neumann",
    "conjugate_gradient",
    "exact",
    "largest_eigenvalue",
    "EXACT_MAX_PARAMS",
]

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


# --------------------------------------------------------------------------- list algebra
def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def _norm(a: Sequence[Tensor]) -> float:
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
    status, last = "max_steps", _norm(v) if guard else 0.0
    for k in range(steps):
        hv = hvp(v)  # a fresh list: the next term is built in its storage, v - alpha * H v
        torch._foreach_mul_(hv, -alpha)
        torch._foreach_add_(hv, v)
        v = hv
        if guard:
            size = _norm(v)
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
    rs = _dot(r, r)
    b_norm = math.sqrt(float(rs))
    if b_norm == 0.0:
        return x, SolveInfo(0, 0.0, "converged")
    status, it = "max_steps", 0
    for it in range(1, steps + 1):
        ad = hvp(d)
        curvature = _dot(d, ad)
        if not float(curvature) > 0.0:  # also catches NaN
            status, it = "negative_curvature", it - 1
            break
        step = rs / curvature
        torch._foreach_add_(x, torch._foreach_mul(d, step))
        torch._foreach_sub_(r, torch._foreach_mul(ad, step))
        rs_new = _dot(r, r)
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
            cols.append(torch.cat([t.reshape(-1) for t in hvp(_unflatten(eye[i], b))]))
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
    return _unflatten(flat_x, b), SolveInfo(n, res, "solved")


def _unflatten(flat: Tensor, like: Sequence[Tensor]) -> TensorList:
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
    size = _norm(v)
    if not size > 0 or not math.isfinite(size):
        raise ValueError("power iteration needs a finite, nonzero start vector v")
    v = torch._foreach_div(list(v), size)
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        lam = _norm(hv)
        if not lam > 0 or not math.isfinite(lam):  # zero Hessian (or NaN): nothing to scale by
            return lam, v
        v = torch._foreach_div(hv, lam)
    return lam, v


# --------------------------------------------------------------------------- solvers as values
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def _check_bool(name: str, value: Any, *, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        raise ValueError(f"{name} must be a bool{' or None' if optional else ''}, got {value!r}")


def _damped(hvp: HVP, damping: float) -> HVP:
    """``v -> (A + damping I) v`` (TorchOpt's ridge: damping wraps the product, not the solver)."""
    if not damping:
        return hvp

    def damped(v: TensorList) -> TensorList:
        hv = hvp(v)
        torch._foreach_add_(hv, list(v), alpha=damping)
        return hv

    return damped


class Solver:
    """A linear solver for ``(H + damping I) v = g_A`` as a value: its options are its fields.

    Subclasses are frozen dataclasses with a class attribute ``name`` and a :meth:`solve`;
    :func:`hypergradient` calls ``solver.solve(hvp, b, state)`` and knows nothing else of them.
    """

    name: ClassVar[str] = ""
    damping: float = 0.0
    residual: bool = False  #: whether :func:`hypergradient` measures the residual in its mixed pass

    def solve(self, hvp: HVP, b: TensorList, state: dict[str, Any]) -> tuple[TensorList, SolveInfo]:
        """``x ~= A^{-1} b`` with ``A`` given by ``hvp`` (damping already applied); ``state``
        is a dict the solver may keep warm-start data in between calls."""
        raise NotImplementedError  # pragma: no cover

    def options(self) -> dict[str, Any]:
        """The solver's options as a plain dict (``type(self)(**solver.options())`` rebuilds it)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class Neumann(Solver):
    """Truncated Neumann series (:func:`neumann`), ``alpha * sum_k (I - alpha A)^k b`` ~= ``A^{-1} b``.

    Args:
        steps: terms after the first (Hessian-vector products).
        alpha: the step; the series converges for ``0 < alpha < 2 / lambda_max(A)``. ``"auto"``:
            ``1 / lambda_max`` from a power iteration (``power_iters`` products the first time,
            then warm-started from the previous eigenvector with ``max(1, power_iters // 10)``),
            re-estimated every ``power_every`` calls and reused in between.
        scaled: ``False`` returns the unscaled sum of the original AuxiLearn code, ``1 / alpha``
            times the approximation of ``A^{-1} b``.
        stop_on_growth: stop before the first growing term (default: the value of ``scaled``).
        damping: solve with ``A + damping I``.
        residual: also measure ``||A x - b|| / ||b||``, from the mixed-term backward pass of
            :func:`hypergradient` (about one more Hessian-vector product).

    Example:
        >>> A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> x, info = Neumann(steps=60, alpha=0.5).solve(lambda v: [A @ v[0]], [torch.tensor([2.0, 1.0])], {})
        >>> torch.allclose(x[0], torch.tensor([1.0, 1.0])), info.iterations
        (True, 60)
    """

    name: ClassVar[str] = "neumann"
    steps: int = 3
    alpha: float | str = 0.1
    scaled: bool = True
    stop_on_growth: bool | None = None
    damping: float = 0.0
    power_iters: int = 10
    power_every: int = 1
    residual: bool = False

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 0)
        if self.alpha != "auto":
            try:
                _check_number("alpha", self.alpha, positive=True)
            except ValueError:
                raise ValueError(f"alpha must be a positive finite number or 'auto', got {self.alpha!r}") from None
        _check_bool("scaled", self.scaled)
        _check_bool("stop_on_growth", self.stop_on_growth, optional=True)
        _check_number("damping", self.damping)
        _check_int("power_iters", self.power_iters, 1)
        _check_int("power_every", self.power_every, 1)
        _check_bool("residual", self.residual)

    def step_size(self, hvp: HVP, b: TensorList | Callable[[], TensorList], state: dict[str, Any], *,
                  eigen: Callable[[TensorList, int], tuple[float, TensorList]] | None = None) -> tuple[float, float]:
        """``(alpha, lambda_max)``: the fixed ``alpha`` (``lambda_max`` nan), or with ``"auto"``
        a power-iteration estimate every ``power_every`` calls and the last one in between.
        ``b`` (or a function computing it, called only if needed) starts the first estimate;
        ``eigen(start, iters)`` replaces :func:`largest_eigenvalue` on ``hvp`` (same result)."""
        calls = state.get("calls", 0)
        state["calls"] = calls + 1
        if self.alpha != "auto":
            return float(self.alpha), math.nan
        if state.get("alpha") is not None and calls % self.power_every:
            return float(state["alpha"]), math.nan
        eigvec = state.get("eigvec") or []
        start = eigvec or (b() if callable(b) else b)
        if not 0 < _norm(start) < math.inf:
            start = [torch.ones_like(t) for t in start]
        iters = max(1, self.power_iters // 10) if eigvec else self.power_iters
        lam, vec = eigen(start, iters) if eigen is not None else largest_eigenvalue(hvp, start, iters=iters)
        state["eigvec"] = [t.detach() for t in vec]
        alpha = 1.0 / lam if lam > 0 and math.isfinite(lam) else 1.0
        state["alpha"] = alpha
        return alpha, lam

    def solve(self, hvp: HVP, b: TensorList, state: dict[str, Any]) -> tuple[TensorList, SolveInfo]:
        alpha, lam = self.step_size(hvp, b, state)
        x, info = neumann(hvp, b, steps=self.steps, alpha=alpha, scaled=self.scaled, stop_on_growth=self.stop_on_growth)
        return x, info._replace(alpha=alpha, lambda_max=lam)


@dataclass(frozen=True)
class CG(Solver):
    """Conjugate gradient (:func:`conjugate_gradient`) on ``(A + damping I) x = b``.

    Args:
        steps: most iterations (Hessian-vector products).
        tol: stop once ``||r|| <= tol * ||b||``.
        damping: makes an indefinite ``A`` (a network's Hessian) positive definite.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> x, info = CG(steps=10).solve(lambda v: [A @ v[0]], [A @ torch.tensor([1.0, -2.0])], {})
        >>> torch.allclose(x[0], torch.tensor([1.0, -2.0])), info.status
        (True, 'converged')
    """

    name: ClassVar[str] = "cg"
    steps: int = 10
    tol: float = 1e-6
    damping: float = 0.0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_number("tol", self.tol)
        _check_number("damping", self.damping)

    def solve(self, hvp: HVP, b: TensorList, state: dict[str, Any]) -> tuple[TensorList, SolveInfo]:
        return conjugate_gradient(hvp, b, steps=self.steps, tol=self.tol)


@dataclass(frozen=True)
class Exact(Solver):
    """Dense solve (:func:`exact`): the reference for models of at most ``max_params`` parameters.

    Args:
        damping: solve with ``A + damping I``.
        max_params: refuse larger problems (a dense ``n x n`` matrix from ``n`` products).
        hessian: the dense ``(n, n)`` Hessian if already known (``damping`` is added to it).

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> x, _ = Exact().solve(lambda v: [A @ v[0]], [A @ torch.tensor([1.0, -2.0], dtype=torch.float64)], {})
        >>> torch.allclose(x[0], torch.tensor([1.0, -2.0], dtype=torch.float64))
        True
    """

    name: ClassVar[str] = "exact"
    damping: float = 0.0
    max_params: int = EXACT_MAX_PARAMS
    hessian: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_number("damping", self.damping)
        _check_int("max_params", self.max_params, 1)
        if self.hessian is not None and (not isinstance(self.hessian, Tensor) or self.hessian.dim() != 2):
            raise ValueError(f"hessian must be a square (n, n) tensor or None, got {type(self.hessian).__name__}")

    def solve(self, hvp: HVP, b: TensorList, state: dict[str, Any]) -> tuple[TensorList, SolveInfo]:
        hessian = self.hessian
        if hessian is not None and self.damping:
            hessian = hessian + self.damping * torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
        return exact(hvp, b, hessian=hessian, max_params=self.max_params)


#: Every solver by name (the names a config or a search space uses).
SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (Neumann, CG, Exact)}


def make_solver(solver: "Solver | str", **options: Any) -> Solver:
    """A solver value: ``solver`` itself, or the class named ``solver`` built with ``options``.

    Raises:
        ValueError: an unknown name, an option the named solver does not take (the message
            lists the ones it takes), or options given with a solver value.

    Example:
        >>> make_solver("cg", steps=5, damping=1e-3)
        CG(steps=5, tol=1e-06, damping=0.001)
    """
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"solver options {sorted(options)} given with a solver value; set them on the value, "
                             f"e.g. dataclasses.replace(solver, **options)")
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)} or a Solver value, got {solver!r}")
    cls = SOLVERS[solver]
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"solver {solver!r} takes no option(s) {unknown}; it takes {known}")
    return cls(**options)


# --------------------------------------------------------------------------- hypergradient
def _as_tensor_list(name: str, tensors: Iterable[Tensor] | Tensor) -> TensorList:
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


def _reaches(loss: Tensor, targets: Sequence[Tensor]) -> bool:
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


def _share_graph(a: Tensor, b: Tensor) -> bool:
    return not _graph_nodes(a).isdisjoint(_graph_nodes(b))


class Hypergradient(NamedTuple):
    """What :func:`hypergradient` returns: the gradients and their diagnostics."""

    grads: TensorList  #: one tensor per auxiliary parameter, shaped like it
    info: HypergradInfo  #: diagnostics (plain Python numbers)


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
    params = _as_tensor_list("params", params)
    aux_params = _as_tensor_list("aux_params", aux_params)
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
    g_val = _val_gradient(val_loss, params, retain_graph=retain_graph or _share_graph(val_loss, train_loss))
    outputs = [g_train[i] for i in live]

    def hvp(v: TensorList) -> TensorList:
        return _hvp(outputs, live, params, v)

    damped = _damped(hvp, solver.damping)
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
    if all(g is None for g in mixed) and not _reaches(train_loss, aux_params):
        raise ValueError("no tensor in aux_params influences train_loss, so the hypergradient is "
                         "undefined; check that the auxiliary parameters are used to compute train_loss")
    grads = [torch.zeros_like(p) if g is None else g.neg_() for p, g in zip(aux_params, mixed)]

    res = info.residual
    if want_hv:
        hv = [torch.zeros_like(t) if g is None else g for t, g in zip(params, got[len(aux_params):])]
        if solver.damping:
            torch._foreach_add_(hv, v, alpha=solver.damping)
        res = _residual(hv, g_val, solver, info.alpha)
    norm = _norm(grads)
    return Hypergradient(grads, HypergradInfo(solver.name, info.iterations, float(res), info.status, norm,
                                              math.isfinite(norm), float(info.alpha), float(info.lambda_max)))


def _val_gradient(val_loss: Tensor, params: TensorList, retain_graph: bool = False) -> TensorList:
    """``g_A = dL_A/dW``, detached, zeros where ``L_A`` does not depend on a parameter."""
    if val_loss.grad_fn is None:
        return [torch.zeros_like(p) for p in params]
    got = torch.autograd.grad(val_loss, params, allow_unused=True, retain_graph=retain_graph)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, got)]


def _hvp(outputs: TensorList, live: list[int], params: TensorList, v: TensorList) -> TensorList:
    """``H v`` by a backward pass through ``outputs``, the ``create_graph`` entries ``live`` of ``g_T``."""
    if not outputs:
        return [torch.zeros_like(t) for t in v]
    got = torch.autograd.grad(outputs, params, grad_outputs=[v[i] for i in live], retain_graph=True, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(v, got)]


def _residual(hv: TensorList, g_val: TensorList, solver: Solver, alpha: float) -> float:
    """``||(H + damping I) v - g_A|| / ||g_A||`` from ``hv = (H + damping I) v``; an unscaled
    Neumann ``v`` is ``1 / alpha`` times the solution, so the residual is of ``alpha * v`` either way."""
    scale = 1.0 if getattr(solver, "scaled", True) else alpha
    r = torch._foreach_sub(torch._foreach_mul(hv, scale), g_val)
    gn = _norm(g_val)
    return _norm(r) / gn if gn > 0 else 0.0


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
    params = _as_tensor_list("params", params)
    aux_params = _as_tensor_list("aux_params", aux_params)
    if not isinstance(val_loss, Tensor) or val_loss.numel() != 1:
        raise ValueError(f"val_loss must be a scalar tensor, got "
                         f"{tuple(val_loss.shape) if isinstance(val_loss, Tensor) else type(val_loss).__name__}")
    if step is not None and not (isinstance(step, (int, float)) and 0 < step < math.inf):
        raise ValueError(f"step must be a positive finite number or None, got {step!r}")
    g_val = _val_gradient(val_loss, params)
    built: list[Any] = []  # (g_T's live entries with a graph, their indices), at the first product only

    def hvp(v: TensorList) -> TensorList:
        if not built:
            g_train = torch.autograd.grad(train_loss(), params, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(g_train) if g is not None and g.requires_grad]
            built.append(([g_train[i] for i in live], live))
        return _hvp(*built[0], params, v)

    damped = _damped(hvp, solver.damping)
    v, info = solver.solve(damped, g_val, state)
    v = [t.detach() for t in v]
    res = info.residual
    if solver.residual:
        res = _residual(damped(v), g_val, solver, info.alpha)
    built.clear()
    grads = _mixed_difference(train_loss, params, aux_params, v, step)
    norm = _norm(grads)
    return Hypergradient(grads, HypergradInfo(solver.name, info.iterations, float(res), info.status, norm,
                                              math.isfinite(norm), float(info.alpha), float(info.lambda_max)))


def _mixed_difference(train_loss: Callable[[], Tensor], params: TensorList, aux_params: TensorList,
                      v: TensorList, step: float | None) -> TensorList:
    """``-d/dphi (g_T . v)`` by a central difference of ``train_loss`` along ``v`` (see
    :func:`difference_hypergradient`)."""
    size = _norm(v)
    if size == 0.0 or not math.isfinite(size):
        fill = 0.0 if size == 0.0 else math.nan
        return [torch.full_like(p, fill) for p in aux_params]
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        h = (step if step is not None else difference_step(saved[0].dtype)) * max(_norm(saved), 1.0) / size
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
