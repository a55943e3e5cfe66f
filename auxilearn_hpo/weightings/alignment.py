"""Loss weights learned by normalised gradient alignment (GraP), a cheaper alternative to IFT.

Every ``update_every`` training steps the learner hands this weighting the per-task losses of
a training batch and the main-task loss on the auxiliary set. The weighting takes one gradient
per task on the shared parameters, ``g_j`` (training batch), and the auxiliary-set gradient
``d`` of the main task, and keeps exponential moving averages of the cosines

    ``C_ij = cos(g_i, g_j)``  ``(T, T)``,    ``b_j = cos(g_j, d)``  ``(T,)``.

Its log-weights ``phi`` ``(T,)`` then take an ascent step on the alignment of the normalised
composite gradient with ``d``,

    ``u = exp(phi)``,  ``a = u / sqrt(u^T C u)``,  maximise ``b^T a``,

whose optimum over ``a >= 0`` is the non-negative least-squares fit of ``d`` by the unit task
gradients: tasks whose gradients point where the auxiliary set's does gain weight, redundant
ones share it, unrelated and conflicting ones lose it. Training then applies
``a_j / ||g_j||`` to each loss (running gradient norms), rescaled so the main task's term keeps
its own gradient scale; :meth:`task_weights` reports those weights on the raw losses.

This is GraP's "train-val" variant (training-batch task gradients aligned with a held-out
gradient) with its gradient-norm normalisation, on the shared parameters and in log space. It
needs no Hessian-vector product: one backward pass per task per update.

References:
    Karpukhin and Savchenko (2026). When Losses Align: Gradient-Based Composite Loss Weighting
    for Efficient Pretraining. arXiv:2605.07756.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import Weighting

__all__ = ["GradientAlignment"]


class GradientAlignment(Weighting):
    """Loss weights that follow the cosine alignment of task gradients with the auxiliary set's.

    Args:
        n_tasks, main_task, task_names: see :class:`~auxilearn_hpo.weightings.Weighting`.
        momentum: EMA factor of the cosines and gradient norms (the first ``1 / (1 - momentum)``
            updates use a plain running mean).

    Shape:
        - Input: ``(B, T)``, column ``main_task`` being the main loss.
        - Output: ``()``, a scalar.

    Attributes:
        weight: ``(T,)`` log-weights ``phi`` (learned by :meth:`meta_gradient` + the learner's
            auxiliary optimizer), initialised to 0.
        cos_tasks: ``(T, T)`` buffer, averaged ``C``; cos_target: ``(T,)`` buffer, averaged ``b``;
        grad_norm: ``(T,)`` buffer, averaged ``||g_j||``; updates: number of updates so far.

    Example:
        >>> w = GradientAlignment(3)
        >>> w(torch.ones(4, 3)).item()  # before any update: the plain sum
        3.0
    """

    learnable = True

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 momentum: float = 0.9) -> None:
        super().__init__(n_tasks, main_task, task_names)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.zeros(n_tasks))
        self.register_buffer("cos_tasks", torch.eye(n_tasks))
        self.register_buffer("cos_target", torch.zeros(n_tasks))
        self.register_buffer("grad_norm", torch.ones(n_tasks))
        self.register_buffer("updates", torch.tensor(0))

    def _alignment_weights(self, phi: Tensor) -> Tensor:
        """``a = u / sqrt(u^T C u)`` with ``u = exp(phi)``: ``(T,)``."""
        u = phi.exp()
        return u / (u @ self.cos_tasks.to(u) @ u).clamp_min(1e-12).sqrt()

    def _coefficients(self) -> Tensor:
        """Weight of each raw loss, ``(T,)``: ``(a_j / n_j) / (a_main / n_main)`` with ``n`` the
        averaged gradient norms, so the main loss keeps weight 1."""
        a = self._alignment_weights(self.weight)
        n = self.grad_norm.to(a).clamp_min(1e-12)
        coef = a / n
        return coef / coef[self.main_task].clamp_min(1e-12)

    def forward(self, losses: Tensor) -> Tensor:
        """Batch mean of ``losses @ coefficients`` (coefficients as :meth:`task_weights`)."""
        self.check(losses)
        if losses.shape[0] == 0:
            raise ValueError("losses is an empty batch (shape (0, n_tasks)): there is nothing to combine")
        return (losses.mean(0) * self._coefficients().detach().to(losses)).sum()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """Weight of each raw loss column, ``(T,)``; the main task's is 1."""
        if losses is not None:
            self.check(losses)
        return self._coefficients().detach().clone()

    @torch.no_grad()
    def project(self) -> None:
        """Keep the log-weights finite (within +-20)."""
        self.weight.clamp_(-20.0, 20.0)

    def meta_gradient(self, losses: Tensor, aux_loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
        """Update the averaged cosines from one batch and return ``[-d(b^T a)/d phi]``.

        Args:
            losses: ``(B, T)`` training-batch losses attached to the model's graph.
            aux_loss: scalar main-task loss on the auxiliary set.
            params: the shared parameters the gradients are taken on.

        Returns:
            One tensor shaped like :attr:`weight`: the descent direction for the auxiliary optimizer.
        """
        self.check(losses)
        params = [p for p in params if p.requires_grad]
        means = losses.mean(0) if losses.dim() == 2 else losses.flatten(2).mean(-1).mean(0)
        rows = []
        for j in range(self.n_tasks):
            got = torch.autograd.grad(means[j], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, got)]))
        grads = torch.stack(rows).double()  # (T, P)
        got = torch.autograd.grad(aux_loss, params, allow_unused=True)
        target = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, got)]).double()
        norms = grads.norm(dim=1)
        unit = grads / norms.clamp_min(1e-12)[:, None]
        cos_tasks = unit @ unit.T
        cos_target = unit @ (target / target.norm().clamp_min(1e-12))
        k = int(self.updates)
        beta = min(self.momentum, k / (k + 1))  # running mean for the first updates, then the EMA
        if bool(torch.isfinite(cos_tasks).all() and torch.isfinite(cos_target).all()):
            self.cos_tasks.mul_(beta).add_((1 - beta) * cos_tasks.to(self.cos_tasks))
            self.cos_target.mul_(beta).add_((1 - beta) * cos_target.to(self.cos_target))
            self.grad_norm.mul_(beta).add_((1 - beta) * norms.to(self.grad_norm))
            self.updates.add_(1)
        phi = self.weight.detach().double().requires_grad_(True)
        with torch.enable_grad():
            score = self.cos_target.double() @ self._alignment_weights(phi)
            (g,) = torch.autograd.grad(score, phi)
        return [(-g).to(self.weight.dtype)]

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, main_task={self.main_task}, momentum={self.momentum}"
