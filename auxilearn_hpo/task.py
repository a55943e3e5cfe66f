"""What a training problem hands the learner: model, loaders, per-task loss and metric."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["Task"]


@dataclass
class Task:
    """A multi-task training problem with one main task.

    Attributes:
        name: short identifier (``"toy"``, ``"digits"``, ...).
        model: the model ``W`` (a fresh, seeded instance).
        loss_fn: ``loss_fn(model, batch) -> Tensor`` of per-sample, per-task losses, shape
            ``(B, T)`` (or ``(B, T, H, W)`` for pixel-wise tasks); column ``main_task`` is the
            main loss. Used on training batches and on auxiliary-set batches (where only the
            main column is used).
        train_loader, aux_loader, val_loader, test_loader: disjoint data. ``aux_loader`` is the
            auxiliary set split off the training data; ``test_loader`` is only for final scores.
        metric_fn: ``metric_fn(model, loader) -> float``, the main-task metric on a loader.
        metric_name: e.g. ``"mse"`` or ``"accuracy"``; mode: ``"min"`` or ``"max"``.
        task_names: ``T`` names, ``task_names[main_task]`` being the main task.
        main_task: index of the main task column.
        shared_params: ``model -> list of parameters shared by all tasks`` (for gradient-based
            baselines); ``None`` means all parameters.
        defaults: recommended training settings (``epochs``, ``lr``, ``aux_lr``, ...).
        info: task-specific facts used to check results (e.g. the toy optimum ``w_star``).
        label_generator: set when the task learns auxiliary labels: the generator (e.g. an
            :class:`~auxilearn_hpo.combiners.AuxiliaryLabelGenerator`) that ``loss_fn`` calls for
            the generated-label column; the ``generator_*`` weightings
            (:mod:`auxilearn_hpo.label_generation`) train it. ``None`` otherwise.
    """

    name: str
    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], Tensor]
    train_loader: DataLoader
    aux_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader
    metric_fn: Callable[[nn.Module, DataLoader], float]
    metric_name: str
    mode: str
    task_names: Sequence[str]
    main_task: int = 0
    shared_params: Callable[[nn.Module], list] | None = None
    defaults: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    label_generator: nn.Module | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not 0 <= self.main_task < len(self.task_names):
            raise ValueError(
                f"main_task must index task_names (0..{len(self.task_names) - 1}), got {self.main_task}"
            )
