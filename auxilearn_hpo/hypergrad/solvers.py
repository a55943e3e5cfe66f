"""Solvers as values: :class:`Neumann`, :class:`CG` and :class:`Exact` hold their options.

:func:`~auxilearn_hpo.hypergrad.hypergradient` calls ``solver.solve(hvp, b, state)`` and knows
nothing else of them; damping wraps the Hessian-vector product (TorchOpt's ridge), not the
solver. :func:`make_solver` builds one from a name and options, as a config or a search space
gives them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from .linalg import EXACT_MAX_PARAMS, HVP, SolveInfo, TensorList, conjugate_gradient, exact, largest_eigenvalue, neumann, norm

__all__ = ["Solver", "Neumann", "CG", "Exact", "SOLVERS", "make_solver", "with_damping"]


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


def with_damping(hvp: HVP, damping: float) -> HVP:
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
        if not 0 < norm(start) < math.inf:
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
        warm_start: start from the previous call's solution ``x0`` (kept in ``state``) when it
            has ``b``'s shapes: one more product for ``r0 = b - A x0``, then ``steps`` CG
            iterations on ``A d = r0``, returning ``x0 + d``. Across the hypersteps of a run this
            is restarted CG on a slowly moving system (measured in ``bench hypergrad``).

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
    warm_start: bool = False

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_number("tol", self.tol)
        _check_number("damping", self.damping)
        _check_bool("warm_start", self.warm_start)

    def solve(self, hvp: HVP, b: TensorList, state: dict[str, Any]) -> tuple[TensorList, SolveInfo]:
        x0 = state.get("x") if self.warm_start else None
        if not x0 or len(x0) != len(b) or any(u.shape != t.shape or u.dtype != t.dtype or u.device != t.device
                                              for u, t in zip(x0, b)):
            x, info = conjugate_gradient(hvp, b, steps=self.steps, tol=self.tol)
        else:  # restart from x0: solve A d = b - A x0 (one more product), return x0 + d
            r0 = [t - u for t, u in zip(b, hvp(x0))]
            b_norm, r_norm = norm(b), norm(r0)
            if not r_norm > self.tol * b_norm:  # already converged (or NaN: fall through to the checks below)
                x, info = [u.clone() for u in x0], SolveInfo(0, r_norm / b_norm if b_norm else 0.0, "converged")
            else:
                d, info = conjugate_gradient(hvp, r0, steps=self.steps, tol=self.tol * b_norm / r_norm)
                x = [u + t for u, t in zip(x0, d)]
                info = info._replace(residual=info.residual * r_norm / b_norm if b_norm else info.residual)
            info = info._replace(iterations=info.iterations + 1)
        if self.warm_start:
            state["x"] = [t.detach().clone() for t in x] if norm(x) < math.inf else None
        return x, info


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
        CG(steps=5, tol=1e-06, damping=0.001, warm_start=False)
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

