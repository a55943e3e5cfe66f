"""``MetaOptimizer``: a torch optimizer driven by implicit-differentiation hypergradients."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

from .hypergrad.functional import functional_hypergradient
from .hypergrad import SOLVERS, HypergradInfo, Solver, difference_hypergradient, hypergradient, make_solver

__all__ = ["MetaOptimizer"]


class MetaOptimizer:
    """Wraps a torch optimizer over auxiliary parameters and steps it along hypergradients.

    A drop-in for ``auxilearn.optim.MetaOptimizer``: the wrapped optimizer takes the step;
    this class computes the hypergradient (:func:`~auxilearn_hpo.hypergrad.hypergradient`),
    writes it to ``p.grad``, clips its norm and applies an optional projection.

    .. note::
        With the defaults (``solver="neumann"``, ``scaled=False``) the update reproduces the
        original AuxiLearn code numerically. Its Neumann sum is left unscaled:

        .. math::
            p = \\sum_{k=0}^{K} (I - \\alpha H)^k g_A, \\qquad
            \\nabla_\\phi = -\\frac{\\partial}{\\partial \\phi} (g_T \\cdot p)

        whereas the correctly scaled approximation of :math:`H^{-1} g_A` is :math:`\\alpha p`
        (``scaled=True``). The unscaled hypergradient is :math:`1/\\alpha` times larger, which
        under Adam changes almost nothing but under SGD multiplies the learning rate, and it
        makes the norm clipping at ``max_grad_norm`` bite earlier.

    Args:
        meta_optimizer: a ``torch.optim.Optimizer`` over the auxiliary parameters.
        hpo_lr: the Neumann step ``alpha`` (name kept from the original), or ``"auto"``:
            ``1 / lambda_max(H)`` from a power iteration, warm-started across steps. Needed
            with ``solver="neumann"``; ignored by ``"cg"`` and ``"exact"``.
        truncate_iter: Neumann terms ``K`` (or CG iterations with ``solver="cg"``); default 3.
            Like ``hpo_lr``, ignored by a named solver that does not take it (exact).
        max_grad_norm: clip the hypergradient's total norm; ``None`` disables clipping.
        solver: a solver value (:class:`~auxilearn_hpo.hypergrad.Neumann`,
            :class:`~auxilearn_hpo.hypergrad.CG`, :class:`~auxilearn_hpo.hypergrad.Exact`)
            holding all its options, or a name, ``"neumann"`` (default), ``"cg"`` or ``"exact"``,
            built from ``hpo_lr``, ``truncate_iter`` and the keywords below. With a value,
            leave ``hpo_lr``, ``truncate_iter`` and those keywords unset.
        damping: ``H + damping I`` (every solver). tol: CG tolerance.
        scaled: Neumann scaling; ``False`` (default) is the original behaviour.
        residual: Neumann only: also measure the solve's relative residual (about one more
            Hessian-vector product per step); CG and exact report it at no cost.
        power_iters, power_every: Neumann with ``hpo_lr="auto"``: power iterations of the first
            estimate (later ones warm-start with one), and re-estimate every this many steps,
            reusing the last step size in between (a stale one that is too large for the
            curvature only shortens the series, which stops when its terms grow).
        project: called after every step taken, e.g. ``combiner.project`` to keep weights
            non-negative.

    Example:
        >>> from auxilearn_hpo.hypergrad import CG
        >>> phi = torch.nn.Parameter(torch.ones(2))
        >>> MetaOptimizer(torch.optim.Adam([phi]), solver=CG(steps=5, damping=1e-3))
        MetaOptimizer(Adam, solver=CG(steps=5, tol=1e-06, damping=0.001, warm_start=False), max_grad_norm=10)

    Attributes:
        solver: the :class:`~auxilearn_hpo.hypergrad.Solver` value in use.
        steps_taken: hypersteps applied. steps_skipped: hypersteps skipped because the
        hypergradient held NaN or inf (the auxiliary parameters are then left untouched).
        last_info: :class:`~auxilearn_hpo.hypergrad.HypergradInfo` of the last call.
    """

    def __init__(
        self,
        meta_optimizer: torch.optim.Optimizer,
        hpo_lr: float | str | None = None,
        truncate_iter: int | None = None,
        max_grad_norm: float | None = 10,
        *,
        solver: Solver | str = "neumann",
        damping: float | None = None,
        tol: float | None = None,
        scaled: bool | None = None,
        residual: bool | None = None,
        power_iters: int | None = None,
        power_every: int | None = None,
        project: Callable[[], Any] | None = None,
    ) -> None:
        if not isinstance(meta_optimizer, torch.optim.Optimizer):
            raise TypeError(f"meta_optimizer must be a torch.optim.Optimizer, got {type(meta_optimizer).__name__}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
        keywords = {"damping": damping, "tol": tol, "scaled": scaled, "residual": residual,
                    "power_iters": power_iters, "power_every": power_every}
        given = {k: v for k, v in keywords.items() if v is not None}
        if isinstance(solver, Solver):
            extra = sorted(given) + [k for k, v in (("hpo_lr", hpo_lr), ("truncate_iter", truncate_iter)) if v is not None]
            if extra:
                raise ValueError(f"{extra} given with a solver value; set the options on the value instead")
        else:
            solver = self._named_solver(solver, hpo_lr, truncate_iter, given)
        self.meta_optimizer = meta_optimizer
        self.solver: Solver = solver
        self.state: dict[str, Any] = {}  # the solver's warm-start data (power-iteration eigenvector, step)
        self.max_grad_norm = max_grad_norm
        self.project = project
        self.steps_taken = 0
        self.steps_skipped = 0
        self.last_info: HypergradInfo | None = None
        self._warned = False

    @staticmethod
    def _named_solver(name: Any, hpo_lr: Any, truncate_iter: Any, given: dict[str, Any]) -> Solver:
        """The solver called ``name`` from the seed's arguments and the keyword options."""
        if not isinstance(name, str) or name not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)} or a Solver value, got {name!r}")
        if truncate_iter is not None and (isinstance(truncate_iter, bool) or not isinstance(truncate_iter, int)
                                          or truncate_iter < 0):
            raise ValueError(f"truncate_iter must be a non-negative int, got {truncate_iter!r}")
        if hpo_lr is not None and hpo_lr != "auto" and not (
                isinstance(hpo_lr, (int, float)) and not isinstance(hpo_lr, bool) and 0 < hpo_lr < math.inf):
            raise ValueError(f"hpo_lr must be a positive finite number or 'auto', got {hpo_lr!r}")
        options = dict(given)
        if name == "neumann":
            if hpo_lr is None:
                raise ValueError("hpo_lr (the Neumann step alpha, or 'auto') is required with solver='neumann'")
            options.update(alpha=hpo_lr if hpo_lr == "auto" else float(hpo_lr), steps=3 if truncate_iter is None else truncate_iter)
            options.setdefault("scaled", False)  # the original AuxiLearn update
        elif name == "cg":
            if truncate_iter is not None:
                if truncate_iter < 1:
                    raise ValueError("truncate_iter must be >= 1 with solver='cg'")
                options["steps"] = truncate_iter
        return make_solver(name, **options)

    @property
    def param_groups(self) -> list[dict]:
        return self.meta_optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.meta_optimizer.zero_grad(set_to_none=set_to_none)

    def step(
        self,
        train_loss: Tensor,
        val_loss: Tensor,
        parameters: Iterable[Tensor],
        aux_params: Iterable[Tensor],
        return_grads: bool = False,
        *,
        retain_graph: bool = False,
        train_grads: list[Tensor | None] | None = None,
    ) -> list[Tensor] | None:
        """One hyperstep: hypergradient -> ``p.grad`` -> clip -> ``meta_optimizer.step()``.

        No need to call ``backward()`` or ``zero_grad()`` first. ``parameters`` and
        ``aux_params`` may be generators. A hypergradient holding NaN or inf skips the step
        (counted in :attr:`steps_skipped`, warned about once). ``train_grads``: ``dL_T/dW``
        already built with ``create_graph=True`` (see :func:`~auxilearn_hpo.hypergrad.hypergradient`).

        Returns:
            the hypergradients as applied (after clipping, like the original) when
            ``return_grads`` is true.
        """
        aux_params = self._held(aux_params)
        grads, info = hypergradient(val_loss, train_loss, parameters, aux_params, solver=self.solver,
                                    state=self.state, train_grads=train_grads, retain_graph=retain_graph)
        self.last_info = info
        return self.apply(grads, aux_params, return_grads=return_grads, finite=info.finite or None, norm=info.norm)

    def step_by_difference(self, train_loss: Callable[[], Tensor], val_loss: Tensor, parameters: Iterable[Tensor],
                           aux_params: Iterable[Tensor]) -> None:
        """:meth:`step` with the mixed term by a central difference
        (:func:`~auxilearn_hpo.hypergrad.difference_hypergradient`): ``train_loss()`` recomputes
        the training loss at the current parameters, on the same batch with the same randomness."""
        aux_params = self._held(aux_params)
        grads, info = difference_hypergradient(val_loss, train_loss, parameters, aux_params, solver=self.solver,
                                               state=self.state)
        self.last_info = info
        self.apply(grads, aux_params, finite=info.finite or None, norm=info.norm)

    def step_functional(self, train_loss_fn: Callable[..., Tensor], val_loss_fn: Callable[..., Tensor],
                        params: dict[str, Tensor], aux_params: dict[str, Tensor], batch: Any, val_batch: Any,
                        *, compile: bool | str = False) -> None:
        """:meth:`step` with the losses as functions of parameter dicts
        (:func:`~auxilearn_hpo.hypergrad.functional_hypergradient`, compiled with ``compile``);
        ``aux_params`` maps names to the optimised tensors themselves."""
        held = self._held(aux_params.values())
        grads, info = functional_hypergradient(train_loss_fn, val_loss_fn, params, aux_params, batch, val_batch,
                                               solver=self.solver, state=self.state, compile=compile)
        self.last_info = info
        self.apply(grads, held, finite=info.finite or None, norm=info.norm)

    def _held(self, aux_params: Iterable[Tensor]) -> list[Tensor]:
        """``aux_params`` as a list, or a ``ValueError`` if the wrapped optimizer does not hold them all."""
        aux_params = list(aux_params)
        held = {id(p) for group in self.meta_optimizer.param_groups for p in group["params"]}
        missing = [i for i, p in enumerate(aux_params) if id(p) not in held]
        if missing:
            raise ValueError(f"aux_params{missing} are not optimised by meta_optimizer: build it over the "
                             "same auxiliary parameters, e.g. torch.optim.Adam(combiner.parameters())")
        return aux_params

    def apply(self, grads: list[Tensor], aux_params: list[Tensor], *, return_grads: bool = False,
              finite: bool | None = None, norm: float | None = None) -> list[Tensor] | None:
        """Step the wrapped optimizer along ``grads`` (one per auxiliary parameter): skip and count
        the step if any holds NaN or inf, else write ``p.grad``, clip, step and project.

        :meth:`step` calls it with the IFT hypergradient; other meta-gradients (e.g.
        :meth:`~auxilearn_hpo.weightings.GradientAlignment.meta_gradient`) go through it too.
        ``finite=True`` says the caller has checked already (a finite total norm); ``norm``, the
        caller's total norm of ``grads``: clipping is skipped when it is clearly below
        ``max_grad_norm`` (it would scale by exactly 1).
        """
        if not finite and not all(bool(torch.isfinite(g).all()) for g in grads):
            self.steps_skipped += 1
            if not self._warned:
                self._warned = True
                warnings.warn("MetaOptimizer: non-finite hypergradient; the step was skipped and the "
                              "auxiliary parameters left unchanged (counted in steps_skipped)",
                              RuntimeWarning, stacklevel=3)
            return grads if return_grads else None
        self.zero_grad()
        for p, g in zip(aux_params, grads):
            p.grad = g
        if self.max_grad_norm is not None and not (norm is not None and norm < 0.99 * self.max_grad_norm):
            clip_grad_norm_(aux_params, max_norm=self.max_grad_norm)
        self.meta_optimizer.step()
        if self.project is not None:
            self.project()
        self.steps_taken += 1
        return grads if return_grads else None

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state, the solver's warm-start state and the counters
        (tensors are references, as ``torch.optim`` returns them)."""
        return {
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "steps_taken": self.steps_taken,
            "steps_skipped": self.steps_skipped,
            "eigvec": list(self.state.get("eigvec") or []),
            "alpha": self.state.get("alpha"),
            "solver_calls": self.state.get("calls", 0),
            "warm_x": list(self.state.get("x") or []),  # CG(warm_start=True)'s last solution
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self.steps_skipped = int(state["steps_skipped"])
        self.state = {"eigvec": [t.clone() for t in state.get("eigvec", [])], "alpha": state.get("alpha"),
                      "calls": int(state.get("solver_calls", self.steps_taken + self.steps_skipped))}
        if state.get("warm_x"):
            self.state["x"] = [t.clone() for t in state["warm_x"]]

    def __repr__(self) -> str:
        return (f"MetaOptimizer({type(self.meta_optimizer).__name__}, solver={self.solver!r}, "
                f"max_grad_norm={self.max_grad_norm})")
