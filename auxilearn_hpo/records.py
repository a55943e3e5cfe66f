"""One trial as any backend hands it over: :class:`TrialRecord`, and the status rules.

The adapters turn their framework's trials into records (``integrations.optuna.records(study)``,
``integrations.ray_tune.records(grid or folder)``); a loop of your own builds them directly or
passes ``(trial_id, config, reports[, status])`` tuples. :mod:`auxilearn_hpo.results` makes
tables from records and knows nothing of any framework.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

__all__ = ["TrialRecord", "STATUSES", "FINISHED", "SCORE_EPOCHS", "selection_score", "trial_score", "flatten", "from_tuples", "resolve_statuses"]

#: The values of the ``status`` column, the same words for every backend.
STATUSES: tuple[str, ...] = ("completed", "pruned", "failed", "interrupted", "not_started")
#: The statuses of trials that ran to an end (theirs or a pruner's), in rank order: the trials a
#: ranking counts (:func:`auxilearn_hpo.results.rank_trials`).
FINISHED: tuple[str, ...] = ("completed", "pruned")


#: Epochs averaged by :func:`selection_score`.
SCORE_EPOCHS = 3


def selection_score(values: Sequence[Any], epochs: int = SCORE_EPOCHS) -> float:
    """A trial's validation score: the mean ``val_metric`` of its last ``epochs`` epochs run.

    The one definition of "best" shared by the Optuna objective (its return value and the values
    the pruner compares), the Ray trainable (the ``score`` it reports, Tune's ``metric``) and
    every table (:func:`auxilearn_hpo.results.trials_frame` ranks by it). Why not the best or the
    final epoch: on a small validation set the metric moves in coarse steps (30 images: steps of
    0.033), so final values tie between most trials and the first trial wins every tie; the best
    epoch is biased upward by the noise it is picked from, and names a model that training went
    past. The mean of the last epochs scores the model that training ends with, less noisily.
    A trial with fewer epochs is scored over those it ran; a NaN among them (a diverged epoch)
    gives NaN, which is never selected.

    Example:
        >>> selection_score([0.5, 0.7, 0.8, 0.9])
        0.8
    """
    numbers_ = [float(v) if v is not None else math.nan for v in values]
    last = numbers_[-max(1, int(epochs)):]
    if not last or any(math.isnan(v) for v in last):
        return math.nan
    return round(sum(last) / len(last), 12)


def trial_score(values: Sequence[Any], refit_score: Any = math.nan) -> float:
    """A trial's score from its reports: the score of its final model. Where that model is a
    refit on all labelled data (a finite ``refit_score`` in the last report), the refit's own
    validation score; otherwise :func:`selection_score` of ``values``, the ``val_metric`` of
    the epochs run. A learning run's validation metric would understate a refit trained on more
    data, and rank it below trials that train on all of it directly.

    Example:
        >>> trial_score([0.5, 0.7, 0.8, 0.9]), trial_score([0.5, 0.7, 0.8, 0.9], refit_score=0.95)
        (0.8, 0.95)
    """
    refit = float(refit_score) if refit_score is not None else math.nan
    return round(refit, 12) if math.isfinite(refit) else selection_score(values)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become ``"outer/inner"`` keys (as Ray Tune names its columns)::

        {"weights": {"main": 1.0}} -> {"weights/main": 1.0}
    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


@dataclass
class TrialRecord:
    """One trial: its settings and per-epoch reports, before it becomes table rows.

    Attributes:
        trial_id: the backend's id (Optuna's trial number, Ray's trial id, yours).
        framework: ``"optuna"``, ``"ray"`` or ``"custom"``.
        config: the trial's outer settings, flat (``"a/b"`` keys).
        reports: flat per-epoch reports (:meth:`auxilearn_hpo.learner.EpochReport.flat`).
        configs: the settings at each report when they changed during the trial (PBT), else ``None``.
        status: one of :data:`STATUSES`, or ``None`` to derive it (:func:`resolve_statuses`).
        error: the backend says the trial ended with an error.
        reason: why the trial failed, one line, when the backend says (``None`` otherwise).
    """

    trial_id: str
    framework: str
    config: dict[str, Any]
    reports: list[dict[str, Any]]
    configs: list[dict[str, Any]] | None = None
    status: str | None = None
    error: bool = False
    reason: str | None = None


def from_tuples(items: Sequence[Any]) -> list[TrialRecord]:
    """Records from ``(trial_id, config, reports)`` or ``(trial_id, config, reports, status)`` tuples."""
    records = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise TypeError("a list source must hold TrialRecords or (trial_id, config, reports[, status]) tuples, "
                            f"got {item!r:.80}")
        trial_id, config, reports, *status = item
        if status and status[0] not in STATUSES:
            raise ValueError(f"status of trial {trial_id!r} must be one of {STATUSES}, got {status[0]!r}")
        records.append(TrialRecord(str(trial_id), "custom", flatten(dict(config or {})),
                                   [flatten(dict(r)) for r in reports], status=status[0] if status else None))
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def _not_finite(value: Any) -> bool:
    """None (JSON's NaN) or a non-finite number."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return not math.isfinite(float(value))
    return False


def diverged(reports: Sequence[Mapping[str, Any]]) -> bool:
    """The last report's ``val_metric`` or one of its ``weights/<task>`` is NaN or infinite."""
    if not reports:
        return False
    last = reports[-1]
    return any(_not_finite(last[k]) for k in last if k == "val_metric" or k.startswith("weights/"))


def resolve_statuses(records: list[TrialRecord]) -> list[TrialRecord]:
    """Fill in the status of records without one, in place; returns them.

    An error makes a trial ``failed``; otherwise it is ``pruned`` when it ran fewer epochs than its
    ``config["epochs"]`` (or, without that, than the most any record ran), else ``completed``.
    A completed or pruned trial whose last report diverged (see :func:`diverged`) is ``failed``.
    """
    ends = [max((e for e in (_number(r.get("epoch")) for r in rec.reports) if e is not None), default=None)
            for rec in records]
    most = max((e for e in ends if e is not None), default=None)
    for record, end in zip(records, ends):
        if record.status is None:
            if record.error:
                record.status = "failed"
            else:
                target = _number((record.configs[-1] if record.configs else record.config).get("epochs"))
                target = most if target is None or target <= 0 else target
                short = end is None or (target is not None and end < target)
                record.status = "pruned" if short else "completed"
        if record.status in ("completed", "pruned") and diverged(record.reports):
            record.status = "failed"
    return records
