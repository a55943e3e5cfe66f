"""What a training problem hands the learner: model, loaders, per-task loss and metric."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["Task", "TaskDefaults"]


@dataclass
class TaskDefaults:
    """A task's recommended training settings: what a trial uses unless its config says otherwise.

    Attributes:
        epochs: training epochs. lr: the model's learning rate (Adam).
        weight_decay: the model's weight decay (Adam).
        batch_size: the training batch size the task's loaders use (for information).
        learner: :class:`~auxilearn_hpo.learner.LearnerConfig` settings the task recommends
            (checked, strictly, when a learner is built).
    """

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int | None = None
    learner: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"defaults epochs must be an int >= 1, got {self.epochs!r}")
        for name, low in (("lr", 0.0), ("weight_decay", None)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or (value <= low if low is not None else value < 0):
                raise ValueError(f"defaults {name} must be a finite number {'> 0' if low is not None else '>= 0'}, "
                                 f"got {value!r}")
        if not isinstance(self.learner, Mapping):
            raise ValueError(f"defaults learner must be a dict of LearnerConfig settings, got {self.learner!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskDefaults":
        """From a dict; an unknown key raises a ``ValueError`` listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown Task.defaults key(s) {unknown}; known: {known} (AuxiLearn's own settings, "
                             "e.g. aux_lr, go under 'learner')")
        return cls(**dict(data))


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
        defaults: recommended training settings, a :class:`TaskDefaults` (or a dict of its fields).
        info: task-specific facts used to check results (e.g. the toy optimum ``w_star``).
        label_generator: set when the task learns auxiliary labels: the generator (e.g. an
            :class:`~auxilearn_hpo.combiners.AuxiliaryLabelGenerator`) that ``loss_fn`` calls for
            the generated-label column; the ``generator_*`` weightings
            (:mod:`auxilearn_hpo.label_generation`) train it. ``None`` otherwise.
        final_loader: all labelled training data, train ∪ auxiliary set, that a final model
            trains on (:func:`auxilearn_hpo.refit.final_loader`); ``None`` (default): derived
            from ``train_loader`` and ``aux_loader``.
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
    defaults: TaskDefaults = field(default_factory=TaskDefaults)
    info: dict = field(default_factory=dict)
    label_generator: nn.Module | None = None
    final_loader: DataLoader | None = None

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def __post_init__(self) -> None:
        if isinstance(self.defaults, Mapping):
            self.defaults = TaskDefaults.from_dict(self.defaults)
        elif not isinstance(self.defaults, TaskDefaults):
            raise ValueError(f"defaults must be a TaskDefaults or a dict, got {type(self.defaults).__name__}")
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {self.mode!r}")
        if not 0 <= self.main_task < len(self.task_names):
            raise ValueError(
                f"main_task must index task_names (0..{len(self.task_names) - 1}), got {self.main_task}"
            )
