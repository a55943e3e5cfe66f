"""``MetaOptimizer``: a torch optimizer driven by implicit-differentiation hypergradients."""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor
from torch.nn.utils import clip_grad_norm_

from .hypergrad import HypergradInfo, SOLVERS, hypergradient

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
            ``1 / lambda_max(H)`` from a power iteration, warm-started across steps.
        truncate_iter: Neumann terms ``K`` (or CG iterations with ``solver="cg"``).
        max_grad_norm: clip the hypergradient's total norm; ``None`` disables clipping.
        solver: ``"neumann"``, ``"cg"`` or ``"exact"``, all through the same code path.
        damping, tol: see :func:`~auxilearn_hpo.hypergrad.hypergradient`.
        scaled: Neumann scaling; ``False`` (default) is the original behaviour.
        residual: Neumann only: also measure the solve's relative residual (about one more
            Hessian-vector product per step); CG and exact report it at no cost.
        project: called after every step taken, e.g. ``combiner.project`` to keep weights
            non-negative.
        power_iters: power iterations of the first ``hpo_lr="auto"`` estimate (later
            estimates warm-start from the previous eigenvector with one).
        power_every: with ``hpo_lr="auto"``, re-estimate the eigenvalue every this many steps
            and reuse the last step size in between (each estimate costs one Hessian-vector
            product; a stale one that is too large for the curvature only shortens the
            Neumann series, which stops when its terms grow).

    Attributes:
        steps_taken: hypersteps applied. steps_skipped: hypersteps skipped because the
        hypergradient held NaN or inf (the auxiliary parameters are then left untouched).
        last_info: :class:`~auxilearn_hpo.hypergrad.HypergradInfo` of the last call.
    """

    def __init__(
        self,
        meta_optimizer: torch.optim.Optimizer,
        hpo_lr: float,
        truncate_iter: int = 3,
        max_grad_norm: float | None = 10,
        *,
        solver: str = "neumann",
        damping: float = 0.0,
        tol: float = 1e-6,
        scaled: bool = False,
        residual: bool = False,
        project: Callable[[], Any] | None = None,
        power_iters: int = 10,
        power_every: int = 1,
    ) -> None:
        if not isinstance(meta_optimizer, torch.optim.Optimizer):
            raise TypeError(f"meta_optimizer must be a torch.optim.Optimizer, got {type(meta_optimizer).__name__}")
        if hpo_lr != "auto" and not (isinstance(hpo_lr, (int, float)) and not isinstance(hpo_lr, bool)
                                     and 0 < hpo_lr < math.inf):
            raise ValueError(f"hpo_lr must be a positive finite number or 'auto', got {hpo_lr!r}")
        for name, value in (("damping", damping), ("tol", tol)):
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if isinstance(power_iters, bool) or not isinstance(power_iters, int) or power_iters < 1:
            raise ValueError(f"power_iters must be an int >= 1, got {power_iters!r}")
        if isinstance(power_every, bool) or not isinstance(power_every, int) or power_every < 1:
            raise ValueError(f"power_every must be an int >= 1, got {power_every!r}")
        if not isinstance(truncate_iter, int) or truncate_iter < 0:
            raise ValueError(f"truncate_iter must be a non-negative int, got {truncate_iter!r}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
        if solver == "cg" and truncate_iter < 1:
            raise ValueError("truncate_iter must be >= 1 with solver='cg'")
        self.meta_optimizer = meta_optimizer
        self.hpo_lr = hpo_lr if hpo_lr == "auto" else float(hpo_lr)
        self.power_iters, self.power_every = power_iters, power_every
        self._alpha: float | None = None  # the last automatic step size
        self._eigvec: list[Tensor] = []
        self.truncate_iter = truncate_iter
        self.max_grad_norm = max_grad_norm
        self.solver, self.damping, self.tol, self.scaled = solver, damping, tol, scaled
        self.residual = residual
        self.project = project
        self.steps_taken = 0
        self.steps_skipped = 0
        self.last_info: HypergradInfo | None = None
        self._warned = False

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
    ) -> list[Tensor] | None:
        """One hyperstep: hypergradient -> ``p.grad`` -> clip -> ``meta_optimizer.step()``.

        No need to call ``backward()`` or ``zero_grad()`` first. ``parameters`` and
        ``aux_params`` may be generators. A hypergradient holding NaN or inf skips the step
        (counted in :attr:`steps_skipped`, warned about once).

        Returns:
            the hypergradients as applied (after clipping, like the original) when
            ``return_grads`` is true.
        """
        aux_params = list(aux_params)
        held = {id(p) for group in self.meta_optimizer.param_groups for p in group["params"]}
        missing = [i for i, p in enumerate(aux_params) if id(p) not in held]
        if missing:
            raise ValueError(f"aux_params{missing} are not optimised by meta_optimizer: build it over the "
                             "same auxiliary parameters, e.g. torch.optim.Adam(combiner.parameters())")
        grads, info = hypergradient(
            val_loss, train_loss, parameters, aux_params,
            solver=self.solver, steps=self.truncate_iter, alpha=self._step_size(), damping=self.damping,
            tol=self.tol, scaled=self.scaled, retain_graph=retain_graph, residual=self.residual,
            power_iters=self.power_iters, eigvec=self._eigvec, return_info=True,
        )
        self.last_info = info
        if self.hpo_lr == "auto" and math.isfinite(info.alpha):
            self._alpha = info.alpha
        return self.apply(grads, aux_params, return_grads=return_grads)

    def _step_size(self) -> float | str:
        """``hpo_lr``, or with ``"auto"`` the last estimate between re-estimates."""
        if self.hpo_lr != "auto" or self._alpha is None or (self.steps_taken + self.steps_skipped) % self.power_every == 0:
            return self.hpo_lr
        return self._alpha

    def apply(self, grads: list[Tensor], aux_params: list[Tensor], *, return_grads: bool = False) -> list[Tensor] | None:
        """Step the wrapped optimizer along ``grads`` (one per auxiliary parameter): skip and count
        the step if any holds NaN or inf, else write ``p.grad``, clip, step and project.

        :meth:`step` calls it with the IFT hypergradient; other meta-gradients (e.g.
        :meth:`~auxilearn_hpo.alignment.GradientAlignment.meta_gradient`) go through it too.
        """
        if not all(bool(torch.isfinite(g).all()) for g in grads):
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
        if self.max_grad_norm is not None:
            clip_grad_norm_(aux_params, max_norm=self.max_grad_norm)
        self.meta_optimizer.step()
        if self.project is not None:
            self.project()
        self.steps_taken += 1
        return grads if return_grads else None

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state (references, as ``torch.optim`` returns) and counters."""
        return {
            "meta_optimizer": self.meta_optimizer.state_dict(),
            "steps_taken": self.steps_taken,
            "steps_skipped": self.steps_skipped,
            "eigvec": list(self._eigvec),
            "alpha": self._alpha,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.steps_taken = int(state["steps_taken"])
        self.steps_skipped = int(state["steps_skipped"])
        self._eigvec = [t.clone() for t in state.get("eigvec", [])]
        self._alpha = state.get("alpha")

    def __repr__(self) -> str:
        return (f"MetaOptimizer({type(self.meta_optimizer).__name__}, hpo_lr={self.hpo_lr}, "
                f"truncate_iter={self.truncate_iter}, max_grad_norm={self.max_grad_norm}, "
                f"solver={self.solver!r}, scaled={self.scaled})")
