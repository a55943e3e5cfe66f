"""Reading studies: an Optuna study's trials as trial records, and as one table."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.records import TrialRecord, flatten

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import pandas as pd

__all__ = ["records", "to_frame"]

_STATUS = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "interrupted",
           "WAITING": "not_started"}


def _study_higher(study: Any) -> float | None:
    try:
        name = getattr(study.direction, "name", str(study.direction))
    except (AttributeError, RuntimeError, ValueError):  # no study, or several objectives
        return None
    return {"MAXIMIZE": 1.0, "MINIMIZE": 0.0}.get(str(name).upper())


def records(source: Any) -> list[TrialRecord]:
    """The trials of an Optuna ``Study`` (or a list of its ``FrozenTrial``) as trial records,
    for :mod:`auxilearn_hpo.results` (``results.trials_frame(records(study))``).

    :func:`objective` stores ``user_attrs["reports"]`` (flat per-epoch reports, NaN as ``None``)
    and ``user_attrs["config"]`` (a held trial's config gains ``held_from``, the trial whose
    weights it held fixed, since it trained with those whatever weighting it drew); a trial of
    someone else's objective gives its intermediate
    values (``epoch`` and ``val_metric``, ``higher_is_better`` from the study's direction).
    Optuna's states map to statuses: COMPLETE completed, PRUNED pruned, FAIL failed (interrupted
    when a Ctrl-C stopped it), RUNNING interrupted, WAITING not_started.
    """
    study = source if hasattr(source, "get_trials") else None
    trials = source.get_trials(deepcopy=False) if study is not None else list(source)
    higher = _study_higher(study)
    found = []
    for i, trial in enumerate(trials):
        attrs = dict(trial.user_attrs or {})
        config = attrs.get("config")
        config = dict(config) if isinstance(config, Mapping) else dict(trial.params or {})
        if attrs.get("held"):  # it trained with warm-started weights held fixed, whatever it drew
            config["held_from"] = attrs.get("warm_started_from")
        reports = attrs.get("reports")
        if isinstance(reports, list) and all(isinstance(r, Mapping) for r in reports):
            reports = [flatten(r) for r in reports]
        else:  # someone else's objective: its intermediate values are all there is
            steps = sorted((getattr(trial, "intermediate_values", None) or {}).items())
            reports = [{"epoch": int(step), "val_metric": value} for step, value in steps]
            if higher is not None:
                for report in reports:
                    report["higher_is_better"] = higher
        state = str(getattr(trial.state, "name", trial.state)).upper()
        status = _STATUS.get(state, state.lower())
        if status == "failed" and attrs.get("interrupted"):  # Optuna marks a trial stopped by Ctrl-C FAIL
            status = "interrupted"
        number = getattr(trial, "number", None)
        found.append(TrialRecord(str(i if number is None else number), "optuna", flatten(config), reports,
                                 status=status))
    return found


def to_frame(study: "optuna.Study") -> "pd.DataFrame":
    """One row per trial of ``study``: ``results.trials_frame(records(study))``."""
    from auxilearn_hpo.results import trials_frame

    return trials_frame(records(study))
