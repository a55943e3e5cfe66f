"""The one interface every loss-weighting method implements.

Learned combiners (:mod:`auxilearn_hpo.weightings.combiners`, updated by hypergradients) and the
published baselines (:mod:`auxilearn_hpo.weightings.baselines`) both turn a per-sample, per-task loss
matrix into gradients on the model, so :class:`~auxilearn_hpo.learner.AuxiliaryLearner`
treats them alike.
"""
from __future__ import annotations

from typing import ClassVar, Sequence

from torch import Tensor, nn

__all__ = ["Weighting", "default_task_names", "check_loss_matrix"]


def default_task_names(n_tasks: int, main_task: int = 0) -> list[str]:
    """``["main", "aux1", "aux2", ...]`` with ``"main"`` at index ``main_task``."""
    names, k = [], 0
    for j in range(n_tasks):
        if j == main_task:
            names.append("main")
        else:
            k += 1
            names.append(f"aux{k}")
    return names


def check_loss_matrix(losses: Tensor, n_tasks: int, *, pixelwise: bool = False) -> None:
    """Raise a ``ValueError`` naming the expected shape unless ``losses`` fits.

    Shape: ``(B, T)``, or ``(B, T, H, W)`` when ``pixelwise``; ``T == n_tasks``.
    """
    if not isinstance(losses, Tensor):
        raise TypeError(f"losses must be a torch.Tensor, got {type(losses).__name__}")
    want = "(batch, n_tasks, H, W)" if pixelwise else "(batch, n_tasks)"
    ndim = 4 if pixelwise else 2
    if losses.dim() != ndim or losses.shape[1] != n_tasks:
        raise ValueError(
            f"losses must have shape {want} with n_tasks={n_tasks}, got {tuple(losses.shape)}"
        )


class Weighting(nn.Module):
    """Turns a loss matrix ``(B, T)`` into a scalar training loss and gradients on the model.

    Subclasses override :meth:`forward` (a differentiable combination) and, when the method
    manipulates per-task gradients (GradNorm, PCGrad, ...), :meth:`backward`.

    Attributes:
        learnable: ``True`` when the method's parameters are *auxiliary parameters* updated by
            implicit-differentiation hypergradients (AuxiLearn combiners); ``False`` for
            baselines, whose own parameters (if any, e.g. uncertainty weighting's log-variances)
            are trained jointly with the model by the model's optimizer.
        pixelwise: ``True`` when the method takes per-pixel loss maps ``(B, T, H, W)``.
        n_tasks: ``T``; main_task: the column holding the main loss; task_names: ``T`` labels.
    """

    learnable: ClassVar[bool] = False
    pixelwise: ClassVar[bool] = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None):
        super().__init__()
        if not isinstance(n_tasks, int) or n_tasks < 1:
            raise ValueError(f"n_tasks must be a positive int, got {n_tasks!r}")
        if not isinstance(main_task, int) or not 0 <= main_task < n_tasks:
            raise ValueError(f"main_task must be an int in [0, {n_tasks}), got {main_task!r}")
        names = list(task_names) if task_names is not None else default_task_names(n_tasks, main_task)
        if len(names) != n_tasks or len(set(names)) != n_tasks:
            raise ValueError(f"task_names must be {n_tasks} distinct names, got {names!r}")
        self.n_tasks, self.main_task, self.task_names = n_tasks, main_task, names

    def forward(self, losses: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Combine ``losses`` ``(B, T)`` into a scalar (differentiable w.r.t. losses and own params)."""
        raise NotImplementedError

    def backward(self, losses: Tensor, params: Sequence[Tensor], shared_params: Sequence[Tensor] | None = None) -> Tensor:
        """Accumulate gradients of the training objective into ``p.grad`` for ``p`` in ``params``.

        Args:
            losses: ``(B, T)`` loss matrix attached to the model's graph.
            params: every tensor that should receive a gradient (model parameters, plus this
                method's own parameters when they are trained with the model).
            shared_params: the subset shared by all tasks (gradient-manipulation methods work
                on these); defaults to ``params``.

        Returns:
            The combined scalar loss, detached (for logging).
        """
        loss = self(losses)
        loss.backward(inputs=list(params))
        return loss.detach()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """Effective weight of each task, ``(T,)``: mean over the batch of d combined / d loss_j."""
        raise NotImplementedError

    def effective_weights(self, losses: Tensor | None = None) -> dict[str, float]:
        """:meth:`task_weights` as ``{task_name: float}`` for logging and results tables."""
        w = self.task_weights(losses).detach().double().cpu().tolist()
        return dict(zip(self.task_names, w))

    def project(self) -> None:
        """Restore the method's constraints (e.g. non-negativity) after an optimizer step."""

    def calibrate(self, losses: Tensor) -> None:
        """Called by the learner with the first training batch's detached losses ``(B, T)``
        (combiners that normalise loss scales record them here); a no-op by default."""

    def epoch_end(self, task_losses: Tensor) -> None:
        """Called once per epoch with the mean training loss per task ``(T,)`` (DWA uses it)."""

    def progress(self, fraction: float) -> None:
        """Called by the learner before each training step with the fraction of the run's
        training steps already taken, in ``[0, 1]`` (a combiner that ramps its auxiliaries in
        uses it); a no-op by default."""

    def check(self, losses: Tensor) -> None:
        check_loss_matrix(losses, self.n_tasks, pixelwise=self.pixelwise)
