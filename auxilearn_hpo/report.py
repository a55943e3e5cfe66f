"""The one record of an epoch: what :meth:`AuxiliaryLearner.fit` yields and every table reads."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["EpochReport", "REPORT_COLUMNS"]


@dataclass
class EpochReport:
    """One epoch of one run. Numbers are plain Python floats and ints (never tensors).

    Attributes:
        epoch: 1-based epoch just finished. step: training steps so far.
        val_metric: main-task metric on validation data (NaN without an ``eval_fn``).
        train_loss: mean combined training loss of the epoch.
        task_losses: mean training loss per task, ``{task: loss}``.
        weights: effective weight per task at the end of the epoch.
        coefficients: gradient-surgery coefficients of the last step per task (PCGrad); empty
            for weightings that only weight losses.
        hypersteps, hypersteps_skipped: hypersteps taken and skipped (non-finite) so far.
        hypergrad_norm, solver_iterations, residual: means over the epoch's hypersteps (NaN if none).
        seconds: wall time of the epoch (training and evaluation).
        test_metric: main-task metric on the test set; NaN except at a trial's final epoch.
        higher_is_better: 1.0 when a larger ``val_metric`` is better, 0.0 when smaller, NaN unknown.
        learn_test_metric: where the final model is a refit on all labelled data (a trial's
            ``final_data="all"``), the learning run's own test metric; NaN otherwise.
        refit_gain: the gain of the auxiliary weights that the refit kept (NaN without one).
        refit_score: where the final model is a refit, its validation score (the mean
            ``val_metric`` of the refit's last epochs), which is the trial's score
            (:func:`~auxilearn_hpo.records.trial_score`); NaN otherwise.
    """

    epoch: int
    step: int = 0
    val_metric: float = math.nan
    train_loss: float = math.nan
    task_losses: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    coefficients: dict[str, float] = field(default_factory=dict)
    hypersteps: int = 0
    hypersteps_skipped: int = 0
    hypergrad_norm: float = math.nan
    solver_iterations: float = math.nan
    residual: float = math.nan
    seconds: float = math.nan
    test_metric: float = math.nan
    higher_is_better: float = math.nan
    learn_test_metric: float = math.nan
    refit_gain: float = math.nan
    refit_score: float = math.nan

    def flat(self) -> dict[str, Any]:
        """One level of keys, per-task dicts as ``"weights/<task>"`` (Ray Tune's column names)::

            {"epoch": 2, ..., "weights/main": 1.0, "weights/aux": 0.3, ...}
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                out.update({f"{f.name}/{k}": float(v) for k, v in value.items()})
            else:
                out[f.name] = int(value) if f.type == "int" else float(value)
        return out

    def non_finite(self) -> list[str]:
        """Columns among ``val_metric`` and ``weights/<task>`` that are NaN or infinite (a diverged run)."""
        values = {"val_metric": self.val_metric, **{f"weights/{k}": v for k, v in self.weights.items()}}
        return [name for name, value in values.items() if not math.isfinite(float(value))]

    def to_dict(self) -> dict[str, Any]:
        """Nested plain values (for checkpoints); :meth:`from_dict` reverses it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpochReport":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


#: Report columns of every reports frame, in :class:`EpochReport`'s field order; a per-task
#: field ``name`` stands for one column ``name/<task>`` per task (``"name/*"``).
REPORT_COLUMNS: tuple[str, ...] = tuple(
    f"{f.name}/*" if f.type.startswith("dict") else f.name for f in dataclasses.fields(EpochReport))
