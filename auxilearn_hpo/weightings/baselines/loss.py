"""Baselines that weight the task losses directly: the main task alone, all ones, learned
log-variances, ratios of epoch losses, and weights given as an option."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..base import Weighting
from ..parts import check_positive

__all__ = ["SingleTask", "EqualWeights", "UncertaintyWeighting", "DynamicWeightAverage", "FixedWeights"]


class SingleTask(Weighting):
    """Train on the main task alone: the combined loss is ``L_main`` (weights one-hot).

    The lower bar every auxiliary-learning method must clear; the auxiliary columns of the loss
    matrix are ignored (their heads receive no gradient).

    References:
        Caruana 1997, "Multitask Learning" (the single-task control).
        https://doi.org/10.1023/A:1007379606734

    Example:
        >>> w = SingleTask(3)
        >>> w(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
        tensor(2.)
    """

    learnable = False

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return losses[:, self.main_task].mean()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        w = torch.zeros(self.n_tasks)
        w[self.main_task] = 1.0
        return w


class EqualWeights(Weighting):
    """Sum of all task losses, ``sum_j L_j`` (every weight 1).

    The usual multi-task default. Each loss is averaged over the batch first, so the result is
    ``losses.sum(1).mean()``.

    WARNING: tasks with large losses (or large gradients) dominate; losses on different scales
    should be normalised before they reach this method.

    References:
        Caruana 1997, "Multitask Learning". https://doi.org/10.1023/A:1007379606734

    Example:
        >>> EqualWeights(2)(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor(5.)
    """

    learnable = False

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return losses.sum(1).mean()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return torch.ones(self.n_tasks)


# --------------------------------------------------------------------------------------------
# uncertainty weighting


class UncertaintyWeighting(Weighting):
    """Homoscedastic-uncertainty weighting: each task learns its own noise level.

    Every task ``j`` has a learned log-variance ``s_j = log sigma_j^2`` and the combined loss is

    .. math::

        \\mathcal{L} = \\sum_j e^{-s_j} L_j + s_j .

    Minimising over ``s_j`` gives ``e^{-s_j} = 1 / L_j``: each loss is divided by its own
    (running) value, so tasks on different scales contribute alike. ``log_var`` is an ordinary
    ``nn.Parameter`` trained *jointly with the model* by the model's optimizer (the learner puts
    ``weighting.parameters()`` into that optimizer and into ``params`` of :meth:`backward`);
    no hypergradient reaches it.

    Attributes:
        log_var: ``(T,)`` log-variances ``s_j``, initialised to 0 (all weights 1, i.e. the first
            step equals :class:`EqualWeights`).

    .. note::
        Kendall et al. write the regression case (their Eq. 7) as
        ``sum_j 1/(2 sigma_j^2) L_j + log sigma_j = 1/2 sum_j (e^{-s_j} L_j + s_j)`` and the
        classification case as ``1/sigma_j^2 L_j + log sigma_j``. We use twice Eq. 7 (no 1/2
        factors, one form for every task), the form of the authors' released example code:
        it has the same minimiser in ``s`` as Eq. 7, and its effective weights ``e^{-s_j}``
        start at 1 rather than 1/2, so the model's step size at initialisation matches
        :class:`EqualWeights`.

    WARNING: the method does not know which task is the main one; it down-weights whichever loss
    is largest, the main loss included. As ``L_j -> 0`` (an auxiliary task fitted perfectly)
    ``s_j -> -inf`` and its weight grows without bound, and the combined loss can be negative.
    Do not apply weight decay to ``log_var``. If ``log_var`` is left out of ``params`` it never
    moves and the method silently reduces to equal weights.

    References:
        Kendall, Gal, Cipolla 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for
        Scene Geometry and Semantics", CVPR. https://arxiv.org/abs/1705.07115

    Example:
        >>> w = UncertaintyWeighting(2)
        >>> w(torch.tensor([[1.0, 3.0]]))
        tensor(4., grad_fn=<SumBackward0>)
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None):
        super().__init__(n_tasks, main_task, task_names)
        self.log_var = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        task_losses = losses.mean(0)
        return (torch.exp(-self.log_var) * task_losses + self.log_var).sum()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return torch.exp(-self.log_var.detach())


# --------------------------------------------------------------------------------------------
# dynamic weight average


class DynamicWeightAverage(Weighting):
    """Weights tasks by how slowly their loss is falling, from epoch to epoch.

    With ``L_j(t)`` the mean training loss of task ``j`` in epoch ``t`` (reported through
    :meth:`epoch_end`), the weights used during epoch ``t`` are

    .. math::

        r_j = \\frac{L_j(t-1)}{L_j(t-2)}, \\qquad
        w_j(t) = T \\operatorname{softmax}_j(r_j / \\tau),

    and ``w_j = 1`` for the first two epochs (before two losses are known). A task whose loss
    stalls (``r_j`` near 1) gets more weight than one that is still dropping fast; ``tau``
    (``temperature``) smooths the weights, ``tau -> inf`` giving equal weights. Weights always
    sum to ``T``.

    Args:
        temperature: ``tau > 0``; the paper uses 2.

    Attributes (buffers, so :meth:`state_dict` round-trips):
        loss_history: ``(2, T)``, rows ``[L(t-2), L(t-1)]`` of the last two reported epochs.
        n_epochs: scalar int64, how many epochs have been reported.
        weights: ``(T,)``, the weights in use, initialised to 1.

    .. note::
        A zero denominator ``L_j(t-2)`` is clamped to ``1e-12`` (the paper assumes positive
        losses), so a task that reached zero loss and then rose again gets almost all weight.

    WARNING: the learner must call :meth:`epoch_end` once per epoch with *training* losses;
    otherwise the weights stay at 1 forever. Losses must be non-negative (a ratio of negative
    log-likelihoods is meaningless); :meth:`epoch_end` rejects negative or non-finite values.

    References:
        Liu, Johns, Davison 2019, "End-to-End Multi-Task Learning with Attention", CVPR.
        https://arxiv.org/abs/1803.10704

    Example:
        >>> w = DynamicWeightAverage(2)
        >>> for epoch_losses in ([1.0, 1.0], [0.5, 1.0]):
        ...     w.epoch_end(torch.tensor(epoch_losses))
        >>> w.task_weights().sum()
        tensor(2.)
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 temperature: float = 2.0):
        super().__init__(n_tasks, main_task, task_names)
        self.temperature = check_positive("temperature", temperature)
        self.register_buffer("loss_history", torch.zeros(2, n_tasks))
        self.register_buffer("n_epochs", torch.zeros((), dtype=torch.long))
        self.register_buffer("weights", torch.ones(n_tasks))

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, temperature={self.temperature}"

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return (losses.mean(0) * self.weights.to(losses)).sum()

    def epoch_end(self, task_losses: Tensor) -> None:
        """Record the epoch's mean training loss per task ``(T,)`` and update the weights."""
        task_losses = torch.as_tensor(task_losses).detach().reshape(-1)
        if task_losses.shape != (self.n_tasks,):
            raise ValueError(
                f"task_losses must have shape ({self.n_tasks},), got {tuple(task_losses.shape)}"
            )
        if not torch.isfinite(task_losses).all() or (task_losses < 0).any():
            raise ValueError(f"task_losses must be finite and non-negative, got {task_losses.tolist()}")
        task_losses = task_losses.to(self.loss_history)
        self.loss_history[0] = self.loss_history[1]
        self.loss_history[1] = task_losses
        self.n_epochs += 1
        if int(self.n_epochs) >= 2:
            ratio = self.loss_history[1] / self.loss_history[0].clamp_min(1e-12)
            self.weights.copy_(self.n_tasks * torch.softmax(ratio / self.temperature, dim=0))

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return self.weights.detach().clone()


class FixedWeights(Weighting):
    """A weighted sum with weights given as an option and never learned: ``sum_j w_j L_j``.

    The weighting a black-box search (Optuna, Population Based Training) tunes from outside the
    trial: each trial trains with the weights its config names. The weights are a
    *non-persistent* buffer, so they are **not** part of :meth:`state_dict`: a checkpoint
    restored into a ``FixedWeights`` built with other weights (a PBT exploit with a perturbed
    config) keeps the new weights, and checkpoints of different weights load into each other.

    Args:
        weights: ``None`` (all ones, i.e. :class:`EqualWeights`); a sequence of ``T`` numbers
            in task order; or a dict ``{task_name: weight}`` naming some tasks, the others
            keeping weight 1 (so ``{"aux1": 0.1}`` leaves the main weight at 1). Every weight
            must be finite and ``>= 0``.

    Attributes (non-persistent buffer):
        weights: ``(T,)`` float32 weights.

    Example:
        >>> w = FixedWeights(3, weights={"aux1": 0.5, "aux2": 0.0})
        >>> w.task_weights()
        tensor([1.0000, 0.5000, 0.0000])
        >>> w(torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]))
        tensor(3.5000)
        >>> "weights" in w.state_dict()
        False
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 weights: Any = None):
        super().__init__(n_tasks, main_task, task_names)
        self.register_buffer("weights", self._parse(weights), persistent=False)

    def _parse(self, weights: Any) -> Tensor:
        if weights is None:
            return torch.ones(self.n_tasks)
        if isinstance(weights, dict):
            unknown = sorted(str(k) for k in weights if k not in self.task_names)
            if unknown:
                raise ValueError(f"weights names unknown task(s) {unknown}; tasks are {self.task_names}")
            values = [weights.get(name, 1.0) for name in self.task_names]
        elif isinstance(weights, (str, bytes)):
            raise TypeError(f"weights must be None, a sequence of {self.n_tasks} numbers or a dict "
                            f"{{task_name: weight}}, got {weights!r}")
        else:
            if isinstance(weights, Tensor):
                weights = weights.detach().reshape(-1).tolist()
            try:
                values = list(weights)
            except TypeError:
                raise TypeError(f"weights must be None, a sequence of {self.n_tasks} numbers or a dict "
                                f"{{task_name: weight}}, got {type(weights).__name__}") from None
            if len(values) != self.n_tasks:
                raise ValueError(f"weights must hold n_tasks={self.n_tasks} numbers, got {len(values)}: {values!r}")
        for name, v in zip(self.task_names, values):
            check_positive(f"weights[{name!r}]", v, allow_zero=True)
        return torch.tensor([float(v) for v in values])

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, weights={[round(v, 6) for v in self.weights.tolist()]}"

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return (losses.mean(0) * self.weights.to(losses)).sum()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return self.weights.detach().clone()
