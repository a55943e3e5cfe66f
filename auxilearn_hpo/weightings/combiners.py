"""AuxiLearn's learned loss combiners and auxiliary-label generator.

The combiners turn a per-sample, per-task loss matrix into the training loss
``L_T(W, phi)``; their parameters ``phi`` are *auxiliary parameters*
(``learnable = True``), updated by implicit-differentiation hypergradients
(:class:`~auxilearn_hpo.optim.MetaOptimizer`, with ``project=combiner.project``) rather than by
the model's optimizer. All of them are monotone non-decreasing in every loss, so no auxiliary
task can be rewarded for getting worse, and all keep a skip connection on the main loss by
default, so the main task is never switched off.

* :class:`LinearCombiner` -- non-negative task weights (``MonoLinearHyperNet``);
* :class:`NonlinearCombiner` -- a monotone MLP per sample (``MonoNonlinearHyperNet``);
* :class:`ConvCombiner` -- a monotone CNN over per-pixel loss maps (``MonoNoFCCNNHyperNet``);
* :class:`AuxiliaryLabelGenerator` -- AuxiLearn's second use: learned soft auxiliary labels,
  trained with :func:`soft_label_loss`.

References:
    Navon, Achituve, Maron, Chechik and Fetaya (2021). Auxiliary Learning by Implicit
    Differentiation. ICLR. https://arxiv.org/abs/2007.02693 ; code:
    https://github.com/AvivNavon/AuxiLearn (``auxilearn/hypernet.py``).

.. note::
    Departures from the original code: no ``weight_norm`` reparametrisation (non-negativity is
    kept by clamping the plain weights in :meth:`~Weighting.project`); initial weights are scaled
    by fan-in so that initial effective weights are about 0.5-1 whatever the widths (the
    original draws every weight from ``U(0, 1)``); the conv combiner is a single
    ``kernel_size`` convolution with *replicate* padding and no intermediate pooling.
    Combiners compute in the dtype of the losses they receive (their parameters are cast,
    differentiably), so a float64 loss matrix gives a float64 combined loss.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Weighting
from .parts import LossScales, autograd_task_weights, cast_like, check_bool, check_init_total, check_widths

__all__ = [
    "LinearCombiner",
    "NonlinearCombiner",
    "ConvCombiner",
]


class LinearCombiner(LossScales, Weighting):
    """Non-negative per-task loss weights, learned by hypergradients.

    The per-sample combined loss is ``sum_j w_j * l_j``. Three options decide how the learned
    parameters ``weight`` map to the task weights ``w``, and so how far and how fast a
    hypergradient step can move them:

    * ``positive``: ``"clamp"`` (the original AuxiLearn: ``w = weight``, clamped at 0 by
      :meth:`project`) or ``"exp"`` (``weight`` holds log-weights: a step scales a weight
      multiplicatively, so weights spanning orders of magnitude are reachable in a few dozen
      steps);
    * ``normalize``: ``None`` (the overall scale is free), ``"main"`` (the main weight is fixed
      at 1, so the weights say how much each auxiliary counts *relative to the main task* and
      cannot grow into a hidden model learning rate), or ``"sum"`` (``w = T softmax(weight)``,
      a fixed total; needs ``positive="exp"``);
    * ``scale_losses``: divide each task's loss by a reference scale measured on the first
      training batch (:meth:`calibrate`), times the main task's, so tasks in different units
      start on an equal footing and ``w_j = 1`` means "as much as the main task".

    With ``skip_main`` (and ``normalize`` other than ``"main"``) the unweighted main loss is
    added, so the main task survives even if its learned weight goes to zero. With ``ramp``,
    the auxiliary weights are multiplied by ``min(1, fraction / ramp)`` for the ``fraction`` of
    the run the learner reports (:meth:`progress`): the auxiliaries come in linearly over the
    first ``ramp`` of the training steps, while the hypergradient already learns their weights,
    so weights that are still wrong shape the model less. The output is the batch mean.
    ``LinearCombiner(T)`` is the original's ``MonoLinearHyperNet``;
    :func:`~auxilearn_hpo.weightings.make_weighting` ``("linear", T)`` builds the configuration
    the learner uses by default (``positive="exp", normalize="main", scale_losses=True``).

    Args:
        n_tasks: ``T``, the number of loss columns.
        main_task: the column holding the main loss.
        task_names: ``T`` distinct labels (default ``["main", "aux1", ...]``).
        init: initial value of every weight; must be finite and ``>= 0`` (``> 0`` with ``"exp"``).
        init_total: if given, the auxiliaries instead start at ``init_total / (T - 1)`` each, so
            that together they weigh ``init_total`` times the main task whatever their number
            (with ``scale_losses``, in units of calibrated loss).
        skip_main: add the unweighted main loss (AuxiLearn's ``skip_connection``).
        positive: ``"clamp"`` or ``"exp"``, see above.
        normalize: ``None``, ``"main"`` or ``"sum"``, see above.
        scale_losses: divide each loss column by its calibrated scale, see above.
        ramp: the fraction of the run, in ``[0, 1]``, over which the auxiliaries ramp in (see
            above); ``0`` (default) never ramps. Without a learner (no :meth:`progress` calls)
            the weights apply in full.

    Shape:
        - Input: ``(B, T)``, column ``main_task`` being the main loss.
        - Output: ``()``, a scalar.

    Attributes:
        weight: ``(T,)`` learnable parameters, initialised to ``init`` (``log(init)`` with
            ``positive="exp"``). With ``"clamp"``, :meth:`project` clamps them at 0 in place;
            with ``"exp"`` it keeps the log-weights in ``[-LOG_LIMIT, LOG_LIMIT]`` so weights
            stay finite. With ``normalize="main"`` the main entry is unused.
        loss_scale: ``(T,)`` buffer, the calibrated loss scales (ones until :meth:`calibrate`).
        aux_ramp: ``()`` buffer (not saved in the state dict), the auxiliary weights' current
            multiplier (1 unless ``ramp`` and :meth:`progress` lower it).

    Example:
        >>> combiner = LinearCombiner(3)
        >>> loss = combiner(torch.rand(8, 3))
        >>> print(loss.shape)
        torch.Size([])
    """

    learnable = True
    #: :meth:`backward` accumulates exactly the gradient of :meth:`forward` (a fused hyperstep may
    #: take the training gradient from the forward's graph instead).
    backward_is_gradient = True
    #: Bound on the log-weights with ``positive="exp"`` (weights within ``e^-20 .. e^20``).
    LOG_LIMIT = 20.0

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        task_names: Sequence[str] | None = None,
        *,
        init: float = 1.0,
        init_total: float | None = None,
        skip_main: bool = True,
        positive: str = "clamp",
        normalize: str | None = None,
        scale_losses: bool = False,
        ramp: float = 0.0,
    ) -> None:
        super().__init__(n_tasks, main_task, task_names)
        if isinstance(ramp, bool) or not isinstance(ramp, (int, float)) or not 0 <= ramp <= 1:
            raise ValueError(f"ramp must be a number in [0, 1], got {ramp!r}")
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not 0 <= init < float("inf"):
            raise ValueError(f"init must be a finite number >= 0, got {init!r}")
        if positive not in ("clamp", "exp"):
            raise ValueError(f"positive must be 'clamp' or 'exp', got {positive!r}")
        if positive == "exp" and init <= 0:
            raise ValueError(f"init must be > 0 with positive='exp', got {init!r}")
        if normalize not in (None, "main", "sum"):
            raise ValueError(f"normalize must be None, 'main' or 'sum', got {normalize!r}")
        if normalize == "sum" and positive != "exp":
            raise ValueError("normalize='sum' needs positive='exp' (a softmax over log-weights)")
        self.skip_main = check_bool("skip_main", skip_main)
        self._init_scales(scale_losses)
        self.positive, self.normalize = positive, normalize
        values = torch.full((n_tasks,), float(init))
        if init_total is not None:
            check_init_total(init_total)
            if n_tasks > 1:
                values = torch.full((n_tasks,), float(init_total) / (n_tasks - 1))
                values[main_task] = float(init)
        self.init_total = init_total
        self.weight = nn.Parameter(values if positive == "clamp" else values.log())
        self.ramp = float(ramp)
        self.register_buffer("aux_ramp", torch.tensor(1.0), persistent=False)
        self._ramp_value = 1.0  # aux_ramp's value, known without reading the (maybe GPU) buffer
        self._cached: tuple | None = None  # (key, weights) of the training step, see backward

    def effective(self) -> Tensor:
        """The non-negative task weights applied to the (scaled) losses, ``(T,)``, without the skip term."""
        w = self.weight if self.positive == "clamp" else self.weight.exp()
        if self.normalize == "sum":
            w = self.n_tasks * torch.softmax(self.weight, 0)
        elif self.normalize == "main":
            w = torch.where(torch.arange(self.n_tasks, device=w.device) == self.main_task, torch.ones_like(w), w)
        return w

    def _weights(self, losses: Tensor) -> Tensor:
        w = cast_like(self.effective(), losses)
        if self.scale_losses:
            w = w * self._column_scale(losses)
        return w * self._ramp_scale(w) if self.ramp else w

    def _ramp_scale(self, like: Tensor) -> Tensor:
        """Multiplier of each column from the ramp, ``(T,)``: 1 for the main task, ``aux_ramp`` else."""
        main = torch.arange(self.n_tasks, device=like.device) == self.main_task
        return torch.where(main, torch.ones_like(like), cast_like(self.aux_ramp, like))

    def progress(self, fraction: float) -> None:
        """Set ``aux_ramp`` to ``min(1, fraction / ramp)`` (nothing without ``ramp``)."""
        if self.ramp:
            value = min(1.0, fraction / self.ramp)
            if value != self._ramp_value:  # an unchanged value keeps the training step's cached weights
                self.aux_ramp.fill_(value)
                self._ramp_value = value

    def forward(self, losses: Tensor) -> Tensor:
        """Batch mean of ``losses @ weights`` (+ the mean main loss with ``skip_main``)."""
        return self._combine(losses, self._weights(losses))

    def _combine(self, losses: Tensor, w: Tensor) -> Tensor:
        self.check(losses)
        if losses.shape[0] == 0:
            raise ValueError("losses is an empty batch (shape (0, n_tasks)): there is nothing to combine")
        loss = (losses @ w).mean()
        if self.skip_main and self.normalize != "main":
            loss = loss + losses[:, self.main_task].mean()
        return loss

    def backward(self, losses: Tensor, params: Sequence[Tensor], shared_params: Sequence[Tensor] | None = None) -> Tensor:
        """The model's training step: as :meth:`Weighting.backward`, but when ``weight`` is not
        among ``params`` (it is learned by hypergradients, not with the model) the weights are
        constants of this step, so they are computed once per value of ``weight`` and reused
        without a graph (the same numbers, fewer operations per step)."""
        if any(p is self.weight for p in params):
            return super().backward(losses, params, shared_params)
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.loss_scale, self.aux_ramp)) + (
            losses.dtype, losses.device)
        cached = self._cached
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = self._cached = (key, self._weights(losses))
        loss = self._combine(losses, cached[1])
        loss.backward(inputs=list(params))
        return loss.detach()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """Weight of each raw loss column, ``(T,)`` (skip term and loss scaling included; the
        ramp, a multiplier of the auxiliaries early in a learner's run, is not);
        ``losses`` is only checked."""
        if losses is not None:
            self.check(losses)
        w = self.effective().detach().clone()
        if self.scale_losses:
            w = w * self._column_scale(w)
        if self.skip_main and self.normalize != "main":
            w[self.main_task] += 1
        return w

    @torch.no_grad()
    def project(self) -> None:
        """``"clamp"``: clamp ``weight`` at 0 in place; ``"exp"``: keep it in ``+-LOG_LIMIT``."""
        if self.positive == "clamp":
            self.weight.clamp_(min=0)
        else:
            self.weight.clamp_(-self.LOG_LIMIT, self.LOG_LIMIT)

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, main_task={self.main_task}, skip_main={self.skip_main}, "
                f"positive={self.positive!r}, normalize={self.normalize!r}, scale_losses={self.scale_losses}, "
                f"ramp={self.ramp}")


class NonlinearCombiner(LossScales, Weighting):
    """A monotone MLP applied to each sample's loss vector, learned by hypergradients.

    ``f(l) = w_out . softplus(... softplus(W_1 l + b_1) ...)`` with every weight matrix
    non-negative and softplus non-decreasing, so ``f`` is non-decreasing in every loss, yet can
    weight a task differently depending on how large the losses are. The combined loss is the
    batch mean of ``f`` plus, with ``skip_main``, the mean main loss. Softplus (not ReLU) keeps
    the second derivatives that hypergradients need.

    With ``normalize="main"`` the network sees only the auxiliary losses and the main loss is
    added as it is, so the main task's weight is exactly 1 and the network decides how much the
    auxiliaries count relative to it (its scale cannot grow into a hidden model learning rate);
    ``scale_losses`` feeds it calibrated losses, and ``init_total`` rescales its output layer
    so that the auxiliaries' effective weights at unit (calibrated) losses start summing to it.
    ``make_weighting("nonlinear", T)`` uses ``normalize="main", scale_losses=True, init_total=0.3``.

    Args:
        n_tasks, main_task, task_names: see :class:`LinearCombiner`.
        hidden: widths of the hidden layers (an int is one layer; ``()`` makes ``f`` linear).
        skip_main: add the unweighted main loss (AuxiLearn's ``skip_connection``; always on
            with ``normalize="main"``).
        normalize: ``None`` or ``"main"``, see above.
        scale_losses: ``False``, ``True`` (= ``"first"``) or ``"epoch"``, as in :class:`LinearCombiner`.
        init_total: see above (``None`` keeps the initialisation below).

    Shape:
        - Input: ``(B, T)``, column ``main_task`` being the main loss.
        - Output: ``()``, a scalar.

    Attributes:
        layers: ``nn.Linear`` layers ``T -> hidden[0] -> ... -> 1`` (``T - 1`` inputs with
            ``normalize="main"``). Weights ``(out, in)`` are
            drawn from ``U(0, 2)`` in the first layer and ``U(0, 2 / in)`` after it, so every
            input-to-output path has mean gain 1 and initial effective weights are about
            ``softplus' in (0.5, 1)`` per hidden layer. Hidden layers have a bias (init 0,
            unconstrained: it does not affect monotonicity); the output layer has none.
            Non-negativity of the weights is kept by :meth:`project`, which clamps them at 0.

    Example:
        >>> combiner = NonlinearCombiner(3, hidden=(10,))
        >>> loss = combiner(torch.rand(8, 3))
        >>> print(loss.shape)
        torch.Size([])
    """

    learnable = True

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        task_names: Sequence[str] | None = None,
        *,
        hidden: int | Sequence[int] = (10,),
        skip_main: bool = True,
        normalize: str | None = None,
        scale_losses: bool | str = False,
        init_total: float | None = None,
    ) -> None:
        super().__init__(n_tasks, main_task, task_names)
        self.hidden = check_widths("hidden", hidden)
        self.skip_main = check_bool("skip_main", skip_main)
        if normalize not in (None, "main"):
            raise ValueError(f"normalize must be None or 'main', got {normalize!r}")
        if normalize == "main" and n_tasks < 2:
            raise ValueError("normalize='main' needs at least one auxiliary task (n_tasks >= 2)")
        self.normalize = normalize
        self._init_scales(scale_losses)
        inputs = [j for j in range(n_tasks) if j != main_task] if normalize == "main" else list(range(n_tasks))
        self.register_buffer("inputs", torch.tensor(inputs), persistent=False)
        dims = (len(inputs), *self.hidden, 1)
        n_layers = len(dims) - 1
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=k < n_layers - 1) for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))
        )
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                layer.weight.uniform_(0.0, 2.0 if k == 0 else 2.0 / layer.in_features)
                if layer.bias is not None:
                    layer.bias.zero_()
        if init_total is not None:
            check_init_total(init_total)
            total = float(self.task_weights()[self.inputs].sum())
            if total > 0:
                with torch.no_grad():
                    self.layers[-1].weight.mul_(float(init_total) / total)
        self.init_total = init_total

    @property
    def _adds_main(self) -> bool:
        return self.skip_main or self.normalize == "main"

    def per_sample(self, losses: Tensor) -> Tensor:
        """``f`` of each row of ``losses`` ``(B, T)``, without the skip connection: ``(B,)``."""
        h = self._scaled(losses).index_select(1, self.inputs.to(losses.device))
        for k, layer in enumerate(self.layers):
            if k:
                h = F.softplus(h)
            h = F.linear(h, cast_like(layer.weight, h), cast_like(layer.bias, h))
        return h.squeeze(-1)

    def forward(self, losses: Tensor) -> Tensor:
        """Batch mean of :meth:`per_sample` (+ the mean main loss with ``skip_main``)."""
        self.check(losses)
        if losses.shape[0] == 0:
            raise ValueError("losses is an empty batch (shape (0, n_tasks)): there is nothing to combine")
        loss = self.per_sample(losses).mean()
        if self._adds_main:
            loss = loss + losses[:, self.main_task].mean()
        return loss

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """Batch mean of d(per-sample combined loss)/d l_j on the raw losses, ``(T,)``.

        The weights depend on where they are measured: ``losses=None`` measures them at a unit
        loss for every task (``torch.ones(1, T)``).
        """
        if losses is None:
            p = self.layers[0].weight
            losses = torch.ones(1, self.n_tasks, dtype=p.dtype, device=p.device)
        return autograd_task_weights(self, losses)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp every layer's weight at 0 in place (biases are left free)."""
        for layer in self.layers:
            layer.weight.clamp_(min=0)

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, main_task={self.main_task}, hidden={self.hidden}, skip_main={self.skip_main}, "
                f"normalize={self.normalize!r}, scale_losses={self.scale_losses}")


class ConvCombiner(Weighting):
    """A monotone CNN over per-pixel loss maps, learned by hypergradients.

    ``conv1`` (``T -> hidden`` channels, ``kernel_size``, replicate padding keeping ``H x W``),
    softplus, then ``conv2`` (1x1, ``hidden -> 1``); the output map is averaged over pixels to
    one value per sample and over the batch to the combined loss, plus, with ``skip_main``, the
    mean of the main loss map. All conv weights are non-negative, so the output is
    non-decreasing in every pixel of every loss map; the convolution lets a task's weight
    depend on the losses in its neighbourhood. Replicate padding makes a uniform loss map count
    the same at the border as inside, so effective weights do not depend on the image size.

    Args:
        n_tasks, main_task, task_names: see :class:`LinearCombiner`.
        hidden: channels after ``conv1``.
        kernel_size: odd size of ``conv1``'s square kernel.
        skip_main: add the unweighted mean main loss map (AuxiLearn's main-loss term).

    Shape:
        - Input: ``(B, T, H, W)`` per-pixel loss maps, channel ``main_task`` being the main loss.
        - Output: ``()``, a scalar.

    Attributes:
        conv1: ``nn.Conv2d``, weight ``(hidden, T, kernel_size, kernel_size)`` drawn from
            ``U(0, 2 / kernel_size**2)``, bias ``(hidden,)`` initialised to 0 and unconstrained.
        conv2: ``nn.Conv2d``, weight ``(1, hidden, 1, 1)`` drawn from ``U(0, 2 / hidden)``,
            no bias. Non-negativity of both weights is kept by :meth:`project` (clamp at 0).

    Example:
        >>> combiner = ConvCombiner(3)
        >>> loss = combiner(torch.rand(2, 3, 16, 16))
        >>> print(loss.shape)
        torch.Size([])
    """

    learnable = True
    pixelwise = True

    def __init__(
        self,
        n_tasks: int,
        main_task: int = 0,
        task_names: Sequence[str] | None = None,
        *,
        hidden: int = 8,
        kernel_size: int = 3,
        skip_main: bool = True,
    ) -> None:
        super().__init__(n_tasks, main_task, task_names)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (to keep H x W), got {kernel_size!r}")
        self.hidden, self.kernel_size = hidden, kernel_size
        self.skip_main = check_bool("skip_main", skip_main)
        self.conv1 = nn.Conv2d(n_tasks, hidden, kernel_size, padding=kernel_size // 2, padding_mode="replicate")
        self.conv2 = nn.Conv2d(hidden, 1, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.uniform_(0.0, 2.0 / kernel_size**2)
            self.conv1.bias.zero_()
            self.conv2.weight.uniform_(0.0, 2.0 / hidden)

    def per_sample(self, losses: Tensor) -> Tensor:
        """Pixel mean of the network's output map for ``losses`` ``(B, T, H, W)``: ``(B,)``."""
        pad = self.kernel_size // 2
        h = F.pad(losses, (pad, pad, pad, pad), mode="replicate") if pad else losses
        h = F.softplus(F.conv2d(h, cast_like(self.conv1.weight, h), cast_like(self.conv1.bias, h)))
        h = F.conv2d(h, cast_like(self.conv2.weight, h))
        return h.mean(dim=(1, 2, 3))

    def forward(self, losses: Tensor) -> Tensor:
        """Batch mean of :meth:`per_sample` (+ the mean main loss map with ``skip_main``)."""
        self.check(losses)
        loss = self.per_sample(losses).mean()
        if self.skip_main:
            loss = loss + losses[:, self.main_task].mean()
        return loss

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """Batch mean of d(per-sample combined loss) / d(uniform increase of loss map j), ``(T,)``.

        ``losses=None`` measures at unit loss maps, ``torch.ones(1, T, k, k)`` with
        ``k = kernel_size`` (any size gives the same value for a uniform map, thanks to the
        replicate padding).
        """
        if losses is None:
            p, k = self.conv1.weight, self.kernel_size
            losses = torch.ones(1, self.n_tasks, k, k, dtype=p.dtype, device=p.device)
        return autograd_task_weights(self, losses)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp both conv weights at 0 in place (``conv1``'s bias is left free)."""
        self.conv1.weight.clamp_(min=0)
        self.conv2.weight.clamp_(min=0)

    def extra_repr(self) -> str:
        return (
            f"n_tasks={self.n_tasks}, main_task={self.main_task}, hidden={self.hidden}, "
            f"kernel_size={self.kernel_size}, skip_main={self.skip_main}"
        )
