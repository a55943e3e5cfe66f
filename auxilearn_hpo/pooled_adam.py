"""``PooledAdam``: Adam whose per-coordinate scale is floored at its tensor's mean.

The learner's default optimizer for the auxiliary parameters. Adam divides each coordinate's
momentum by that coordinate's own root-mean-square gradient, so every coordinate whose
hypergradient keeps its sign moves by about the learning rate per step, however small its
hypergradient is next to the others'. For task weights that throws away what tells the tasks
apart: on ``fewshot_digits`` the hypergradients of the two helpful attributes and of the eight
random-label tasks all push their weights up at slightly more than half of the hypersteps, the
attributes' 2.5 to 4 times larger in magnitude, and under Adam all ten weights rose at the
same pace. Here each coordinate is divided by its own second moment or by the mean second
moment of its tensor, whichever is larger: a coordinate with
a typical or large hypergradient steps as under Adam (at most about ``lr``), one with a small
hypergradient steps in proportion to it. The update stays invariant to the scale of the
hypergradient, so ``lr`` keeps Adam's meaning.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["PooledAdam"]


class PooledAdam(torch.optim.Optimizer):
    """Adam with each coordinate's second moment floored at the mean over its tensor.

    For every parameter tensor ``p`` with gradient ``g`` (step ``t``, Adam's moments ``m`` and
    ``v`` and their bias corrections ``m_hat``, ``v_hat``)::

        p -= lr * m_hat / (sqrt(max(v_hat, mean(v_hat))) + eps)

    where ``mean`` runs over the elements of ``p``. A one-element tensor, or one whose
    coordinates have equal second moments, takes Adam's step exactly.

    Args:
        params: iterable of tensors or parameter-group dicts.
        lr: learning rate, finite and ``> 0``.
        betas: ``(beta1, beta2)``, each in ``[0, 1)``.
        eps: added to the denominator, finite and ``>= 0``.

    Example:
        >>> w = torch.zeros(3, requires_grad=True)
        >>> opt = PooledAdam([w], lr=0.1)
        >>> w.grad = torch.tensor([1.0, 1.0, 0.01])
        >>> opt.step()
        >>> print(w.detach())  # the small coordinate moves in proportion, not by lr
        tensor([-0.1000, -0.1000, -0.0012])
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        super().__init__(params, {"lr": float(lr), "betas": tuple(float(b) for b in betas), "eps": float(eps)})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PooledAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = t = int(state["step"]) + 1  # an int (Adam's state stores a tensor)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                v_hat = v / (1 - beta2 ** t)
                denom = torch.maximum(v_hat, v_hat.mean()).sqrt_().add_(group["eps"])  # no host sync
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1 ** t))
        return loss
