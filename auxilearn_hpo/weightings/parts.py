"""Pieces the weightings share: argument checks, dtype casts, task weights by autograd, and the
calibrated loss scales of AuxiLearn's combiners."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .base import Weighting

__all__ = ["check_widths", "check_bool", "check_init_total", "check_positive", "cast_like", "autograd_task_weights",
           "LossScales"]


def check_widths(name: str, widths: int | Sequence[int]) -> tuple[int, ...]:
    """``widths`` as a tuple of positive ints (a bare int is one layer)."""
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = (widths,)
    try:
        out = tuple(widths)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(widths).__name__}") from None
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in out):
        raise ValueError(f"{name} must hold positive ints, got {widths!r}")
    return out


def check_bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_init_total(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"init_total must be a finite number > 0, got {value!r}")


def cast_like(p: Tensor | None, like: Tensor) -> Tensor | None:
    """``p`` in ``like``'s dtype; a differentiable no-op when they already agree."""
    return None if p is None else p.to(dtype=like.dtype)


def autograd_task_weights(combiner: Weighting, losses: Tensor) -> Tensor:
    """Sum over batch (and pixels) of d combiner(losses) / d losses, on a detached copy.

    ``forward`` averages over the batch, so this sum is the batch mean of the per-sample
    derivatives; for loss maps, summing over pixels gives the derivative with respect to a
    uniform increase of each map. The model graph that produced ``losses`` is never touched.
    """
    x = losses.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(combiner(x), x)
    return grad.sum(dim=[0, *range(2, grad.dim())])


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``float(value)`` or raise a ``ValueError`` naming ``name`` and the value."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)



class LossScales:
    """Calibrated per-task loss scales (``loss_scale`` and ``calibrated`` buffers) for a combiner
    with ``scale_losses`` in ``(False, "first", "epoch")``; see :class:`LinearCombiner`."""

    scale_losses: str | bool
    loss_scale: Tensor
    calibrated: Tensor

    def _init_scales(self, scale_losses: bool | str) -> None:
        if scale_losses not in (False, True, "first", "epoch"):
            raise ValueError(f"scale_losses must be False, True (= 'first') or 'epoch', got {scale_losses!r}")
        self.scale_losses = "first" if scale_losses is True else scale_losses
        self.register_buffer("loss_scale", torch.ones(self.n_tasks))  # type: ignore[attr-defined]
        self.register_buffer("calibrated", torch.tensor(False))  # type: ignore[attr-defined]

    def _column_scale(self, like: Tensor) -> Tensor:
        """Multiplier of each raw loss column from the calibration, ``(T,)``: ``s_main / s_j``."""
        s = self.loss_scale.to(like)
        return s[self.main_task] / s  # type: ignore[attr-defined]

    @torch.no_grad()
    def calibrate(self, losses: Tensor) -> None:
        """Record each task's loss scale (its batch mean of ``losses`` ``(B, T)``), once.

        Does nothing without ``scale_losses`` or when already calibrated (a restored
        checkpoint keeps its scales). Scales are floored at ``1e-8`` of the largest one.
        """
        self.check(losses)  # type: ignore[attr-defined]
        if not self.scale_losses or bool(self.calibrated) or losses.shape[0] == 0:
            return
        mean = losses.detach().float().flatten(2).mean(-1).mean(0) if losses.dim() > 2 else losses.detach().float().mean(0)
        mean = mean.abs().to(self.loss_scale)
        if not bool(torch.isfinite(mean).all()) or not float(mean.max()) > 0:
            return
        self.loss_scale.copy_(mean.clamp_min(1e-8 * float(mean.max())))
        self.calibrated.fill_(True)

    @torch.no_grad()
    def epoch_end(self, task_losses: Tensor) -> None:
        """With ``scale_losses="epoch"``, the epoch's mean loss per task ``(T,)`` becomes the scale."""
        if self.scale_losses == "epoch" and bool(torch.isfinite(task_losses).all()) and float(task_losses.max()) > 0:
            t = task_losses.detach().abs().to(self.loss_scale)
            self.loss_scale.copy_(t.clamp_min(1e-8 * float(t.max())))

    def _scaled(self, losses: Tensor) -> Tensor:
        """``losses`` ``(B, T, ...)`` with each column times ``s_main / s_j`` (unchanged without scaling)."""
        if not self.scale_losses:
            return losses
        scale = self._column_scale(losses)
        return losses * scale.view(1, -1, *([1] * (losses.dim() - 2)))
