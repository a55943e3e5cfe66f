"""Learned auxiliary labels: AuxiLearn's second use, as weightings the one learner trains.

When no useful auxiliary task is known, AuxiLearn learns one: an
:class:`~auxilearn_hpo.weightings.AuxiliaryLabelGenerator` ``phi`` gives every training sample a
soft label over ``psi`` sub-classes of its true class, the model predicts it with an auxiliary
head, and ``phi`` follows the implicit-differentiation hypergradient of the main-task loss on the
auxiliary set. Nothing in the learner is specific to this: the generated-label loss is one more
column of the loss matrix, and it depends on ``phi``::

    def loss_fn(model, batch):                       # (B, 2): main, generated
        x, y = batch
        logits, aux_logits = model(x)                 # (B, C), (B, C * psi)
        return torch.stack([F.cross_entropy(logits, y, reduction="none"),
                            soft_label_loss(aux_logits, generator(x, y))], dim=1)

    weighting = GeneratedLabels(2, generator=generator, aux_weight=1.0)
    learner = AuxiliaryLearner(model, loss_fn, weighting, train, aux, optimizer)

The weighting owns the generator, so its parameters are the auxiliary parameters: the same
solvers, diagnostics, reports and ``state_dict`` as the combiners. A :class:`~auxilearn_hpo.task.Task`
declares "learn auxiliary labels" by setting ``label_generator`` (the generator its ``loss_fn``
calls); :meth:`AuxiliaryLearner.from_task <auxilearn_hpo.learner.AuxiliaryLearner.from_task>`
then hands it to the weightings named in :data:`GENERATOR_WEIGHTINGS`:

=====================  =========================================================================
name                   what is trained
=====================  =========================================================================
``generator_ift``      the generator, by IFT hypergradients (the configured solver)
``generator_maxl``     the generator, by MAXL's one-step lookahead: Neumann with zero terms,
                       ``-alpha (dL_A/dW) d^2 L_T / (dW dphi)``, through the same code
``generator_frozen``   nothing: the same generator at its random initialisation (isolates what
                       training the generator adds)
=====================  =========================================================================

References:
    Navon, Achituve, Maron, Chechik and Fetaya (2021). Auxiliary Learning by Implicit
    Differentiation. ICLR. https://arxiv.org/abs/2007.02693 (section 3.3).
    Liu, Davison and Johns (2019). Self-Supervised Generalisation with Meta Auxiliary Learning
    (MAXL). NeurIPS. https://arxiv.org/abs/1901.08933
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Weighting
from .parts import check_widths

__all__ = [
    "AuxiliaryLabelGenerator",
    "soft_label_loss",
    "GeneratedLabels",
    "FrozenGeneratedLabels",
    "MaxlGeneratedLabels",
    "GENERATOR_WEIGHTINGS",
    "GENERATOR_SETTINGS",
    "GENERATED",
    "generator_options",
    "resolved_overrides",
    "TASK_SETTINGS",
]


class AuxiliaryLabelGenerator(nn.Module):
    """Learned soft auxiliary labels: ``psi`` sub-classes of each main class (AuxiLearn §3.3).

    An MLP maps features ``x`` to logits over ``n_classes * psi`` sub-classes, laid out class by
    class (sub-classes of class ``c`` are columns ``c * psi`` to ``c * psi + psi - 1``). A
    masked softmax allows only the ``psi`` sub-classes of the sample's true class ``y``: the
    other logits are set to ``-inf`` before the softmax, so each row sums to 1 and is exactly 0
    outside group ``y``. The model learns to predict these labels through an auxiliary head
    trained with :func:`soft_label_loss`; the generator's parameters are auxiliary parameters,
    updated by hypergradients. Unlike the combiners it is a plain ``nn.Module``, not a
    :class:`~auxilearn_hpo.weightings.Weighting`.

    Args:
        n_features: size of ``x``'s last dimension.
        n_classes: number of main-task classes.
        psi: auxiliary sub-classes per main class.
        hidden: widths of the MLP's hidden layers (ReLU); ``()`` for a linear map.

    Shape:
        - Input: ``x`` ``(B, n_features)``, ``y`` ``(B,)`` integer labels in ``[0, n_classes)``.
        - Output: ``(B, n_classes * psi)`` soft labels.

    Attributes:
        net: ``nn.Sequential`` of ``nn.Linear`` layers ``n_features -> hidden... -> n_classes * psi``
            with PyTorch's default initialisation; unconstrained (no projection needed).

    Example:
        >>> generator = AuxiliaryLabelGenerator(4, n_classes=3, psi=2)
        >>> soft = generator(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
        >>> print(soft.shape)
        torch.Size([5, 6])
    """

    def __init__(self, n_features: int, n_classes: int, psi: int, *, hidden: int | Sequence[int] = (64,)) -> None:
        super().__init__()
        for name, value in (("n_features", n_features), ("n_classes", n_classes), ("psi", psi)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_features, self.n_classes, self.psi = n_features, n_classes, psi
        self.hidden = check_widths("hidden", hidden)
        dims = (n_features, *self.hidden, n_classes * psi)
        layers: list[nn.Module] = []
        for k, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            if k:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(d_in, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Soft labels ``(B, n_classes * psi)`` for features ``x`` and main labels ``y``."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(f"x and y must be torch.Tensors, got {type(x).__name__} and {type(y).__name__}")
        if x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"x must have shape (batch, n_features) with n_features={self.n_features}, got {tuple(x.shape)}"
            )
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape (batch,) = ({x.shape[0]},), got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise TypeError(f"y must be an integer tensor of class indices, got dtype {y.dtype}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise ValueError(
                f"y must hold class indices in [0, {self.n_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )
        logits = self.net(x).view(-1, self.n_classes, self.psi)
        allowed = F.one_hot(y.long(), self.n_classes).bool().unsqueeze(-1)  # (B, C, 1)
        logits = logits.masked_fill(~allowed, float("-inf"))
        return torch.softmax(logits.flatten(1), dim=1)

    def extra_repr(self) -> str:
        return f"n_features={self.n_features}, n_classes={self.n_classes}, psi={self.psi}, hidden={self.hidden}"


def soft_label_loss(aux_logits: Tensor, soft_labels: Tensor) -> Tensor:
    """Per-sample cross entropy with soft targets, ``-sum_k q_k log softmax(z)_k``: ``(B,)``.

    Args:
        aux_logits: ``(B, K)`` logits of the model's auxiliary head (``K = n_classes * psi``).
        soft_labels: ``(B, K)`` targets, e.g. from :class:`AuxiliaryLabelGenerator`; gradients
            flow into both arguments.

    Example:
        >>> q = torch.tensor([[0.5, 0.5, 0.0]])
        >>> print(soft_label_loss(torch.zeros(1, 3), q))  # log(3)
        tensor([1.0986])
    """
    if aux_logits.dim() != 2 or aux_logits.shape != soft_labels.shape:
        raise ValueError(
            "aux_logits and soft_labels must both have shape (batch, n_classes * psi), "
            f"got {tuple(aux_logits.shape)} and {tuple(soft_labels.shape)}"
        )
    return F.cross_entropy(aux_logits, soft_labels, reduction="none")


#: The task name of the generated-label loss column (when ``generated_task`` is not given).
GENERATED = "generated"


class GeneratedLabels(Weighting):
    """Main loss plus ``aux_weight`` times the loss on labels a generator learns (AuxiLearn §3.3).

    The combined loss is ``mean_b l_main + aux_weight * mean_b l_generated``; any other column
    of the loss matrix (a hand-designed auxiliary the task also reports) gets weight 0. The
    generated-label column must be computed by the task's ``loss_fn`` from ``generator`` (e.g.
    with :func:`~auxilearn_hpo.weightings.soft_label_loss`), so that it depends on the
    generator's parameters, which are this weighting's parameters: with ``learnable = True``
    the learner updates them by hypergradients.

    Args:
        n_tasks, main_task, task_names: as for every :class:`~auxilearn_hpo.weightings.Weighting`.
        generator: the label generator (usually an
            :class:`~auxilearn_hpo.weightings.AuxiliaryLabelGenerator`) that ``loss_fn`` calls.
        aux_weight: weight of the generated-label loss, a finite number ``>= 0``.
        generated_task: column of the generated-label loss; ``None``: the column named
            ``"generated"``, or the only non-main column when there are two.

    Shape:
        - Input: ``(B, T)`` losses, column ``main_task`` the main loss.
        - Output: ``()``, a scalar.

    Attributes:
        generator: the generator module; its parameters are the auxiliary parameters
            (unconstrained: no projection).

    Example:
        >>> from auxilearn_hpo.weightings import AuxiliaryLabelGenerator
        >>> w = GeneratedLabels(2, generator=AuxiliaryLabelGenerator(4, 3, 2), aux_weight=0.5)
        >>> w(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor(3.5000)
    """

    learnable: ClassVar[bool] = True
    #: :class:`~auxilearn_hpo.learner.LearnerConfig` fields the learner sets for this weighting.
    config_overrides: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        n_tasks: int = 2,
        main_task: int = 0,
        task_names: Sequence[str] | None = None,
        *,
        generator: nn.Module,
        aux_weight: float = 1.0,
        generated_task: int | None = None,
    ) -> None:
        super().__init__(n_tasks, main_task, task_names)
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module (e.g. an AuxiliaryLabelGenerator), "
                            f"got {type(generator).__name__}")
        if not any(True for _ in generator.parameters()):
            raise ValueError("generator has no parameters to learn")
        if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or not 0 <= aux_weight < math.inf:
            raise ValueError(f"aux_weight must be a finite number >= 0, got {aux_weight!r}")
        if generated_task is None:
            others = [j for j in range(n_tasks) if j != main_task]
            if GENERATED in self.task_names:
                generated_task = self.task_names.index(GENERATED)
            elif len(others) == 1:
                generated_task = others[0]
            else:
                raise ValueError(f"generated_task must be given: no column is named {GENERATED!r} among "
                                 f"{self.task_names} and there is more than one auxiliary column")
        if isinstance(generated_task, bool) or not isinstance(generated_task, int) or not (
                0 <= generated_task < n_tasks and generated_task != main_task):
            raise ValueError(f"generated_task must be a column index in [0, {n_tasks}) other than "
                             f"main_task={main_task}, got {generated_task!r}")
        self.generator = generator
        self.aux_weight, self.generated_task = float(aux_weight), generated_task

    def forward(self, losses: Tensor) -> Tensor:
        """``mean(losses[:, main]) + aux_weight * mean(losses[:, generated])``."""
        self.check(losses)
        if losses.shape[0] == 0:
            raise ValueError("losses is an empty batch (shape (0, n_tasks)): there is nothing to combine")
        return losses[:, self.main_task].mean() + self.aux_weight * losses[:, self.generated_task].mean()

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """``(T,)``: 1 on the main task, ``aux_weight`` on the generated labels, 0 elsewhere."""
        w = torch.zeros(self.n_tasks, dtype=torch.float64)
        w[self.main_task], w[self.generated_task] = 1.0, self.aux_weight
        return w

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, main_task={self.main_task}, generated_task={self.generated_task}, "
                f"aux_weight={self.aux_weight}")


class MaxlGeneratedLabels(GeneratedLabels):
    """:class:`GeneratedLabels` trained by MAXL's one-step lookahead instead of a full IFT solve.

    MAXL differentiates the main loss after one SGD step, ``L_A(W - a g_T(W, phi))``, whose
    gradient at ``a -> 0`` is ``-a (dL_A/dW) d^2 L_T / (dW dphi)``: the IFT hypergradient with
    ``H^-1`` replaced by ``a I``, i.e. a Neumann series with zero terms. The learner therefore
    runs this weighting with ``solver="neumann", steps=0`` (:attr:`config_overrides`, which win
    over the configured solver); ``a`` is Neumann's ``alpha`` (``"auto"``: ``1 / lambda_max``).

    .. note::
        MAXL uses the model's own learning rate as ``a`` and an SGD step; with Adam on the
        generator only the direction matters, so ``a`` only enters through gradient clipping.
    """

    config_overrides: ClassVar[dict[str, Any]] = {"solver": "neumann", "steps": 0}


class FrozenGeneratedLabels(GeneratedLabels):
    """:class:`GeneratedLabels` with the generator frozen at its (random) initialisation.

    The baseline that isolates what learning the labels adds: same architecture, same soft
    labels at step 0, never trained (its parameters get ``requires_grad_(False)``, so neither the
    model's optimizer nor a hypergradient touches them).
    """

    learnable: ClassVar[bool] = False

    def __init__(self, n_tasks: int = 2, main_task: int = 0, task_names: Sequence[str] | None = None,
                 **options: Any) -> None:
        super().__init__(n_tasks, main_task, task_names, **options)
        self.generator.requires_grad_(False)


#: Weighting name -> class, for :func:`~auxilearn_hpo.weightings.make_weighting`.
GENERATOR_WEIGHTINGS: dict[str, type[GeneratedLabels]] = {
    "generator_ift": GeneratedLabels,
    "generator_maxl": MaxlGeneratedLabels,
    "generator_frozen": FrozenGeneratedLabels,
}

#: Flat outer settings of learned auxiliary labels, with their trial defaults (``None``: the
#: task's or the weighting's own default). ``psi``, ``generator_width`` and ``generator_depth``
#: shape the task (its auxiliary head and generator), so a trial passes them to a named
#: benchmark's factory (a user's factory reads them from the config); ``aux_weight`` goes to
#: the weighting. The generator's learning rate is ``aux_lr``, the update frequency
#: ``update_every``, the solver the learner's solver setting.
GENERATOR_SETTINGS: dict[str, Any] = {
    "psi": None,  # auxiliary sub-classes per main class
    "generator_width": None,  # hidden width of the generator's MLP
    "generator_depth": None,  # hidden layers of the generator's MLP
    "aux_weight": None,  # weight of the generated-label loss
}
#: The subset of :data:`GENERATOR_SETTINGS` that a task factory takes.
TASK_SETTINGS = ("psi", "generator_width", "generator_depth")


def resolved_overrides(weighting: Weighting) -> dict[str, Any]:
    """The :class:`~auxilearn_hpo.learner.LearnerConfig` fields ``weighting`` fixes (``config_overrides``;
    none for weightings that do not declare it)."""
    return dict(getattr(weighting, "config_overrides", None) or {})


def generator_options(task: Any, name: str) -> dict[str, Any]:
    """Options a weighting called ``name`` takes from ``task``: the task's ``label_generator``
    for the :data:`GENERATOR_WEIGHTINGS`, nothing for the others.

    Raises:
        ValueError: a generator weighting for a task without ``label_generator``.
    """
    if name not in GENERATOR_WEIGHTINGS:
        return {}
    generator = getattr(task, "label_generator", None)
    if generator is None:
        raise ValueError(f"weighting {name!r} needs a task that learns auxiliary labels (Task.label_generator "
                         f"is None for task {getattr(task, 'name', '?')!r})")
    return {"generator": generator}
