"""Reading studies: an Optuna study's trials as trial records, and as one table."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.records import TrialRecord, flatten

from .storage import heartbeat_enabled
from .workers import DEAD_WORKER

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import pandas as pd

__all__ = ["STALE_WORKER", "failure_reason", "records", "to_frame"]

#: The reason of a trial Optuna failed because its worker stopped heartbeating (killed, or cut off).
STALE_WORKER = "killed: its worker stopped heartbeating"

_STATUS = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "interrupted",
           "WAITING": "not_started"}


def _study_higher(study: Any) -> float | None:
    try:
        name = getattr(study.direction, "name", str(study.direction))
    except (AttributeError, RuntimeError, ValueError):  # no study, or several objectives
        return None
    return {"MAXIMIZE": 1.0, "MINIMIZE": 0.0}.get(str(name).upper())


def failure_reason(trial: Any, heartbeat: bool | None = None) -> str | None:
    """Why the FAIL trial ``trial`` failed, in one line (``None`` for a trial in another state).

    Its own ``user_attrs["error"]`` (an exception caught by the objective, a diverged epoch);
    ``"interrupted (Ctrl-C)"``; ``"surplus: ..."`` (it started once the study was full); else its
    worker stopped before the trial ended (killed): failed as stale through the heartbeat
    (:data:`STALE_WORKER`, when ``heartbeat``) or by a worker that found its process gone
    (:data:`~.workers.DEAD_WORKER`, when not); ``heartbeat=None``: unknown, both said.
    """
    if str(getattr(trial.state, "name", trial.state)).upper() != "FAIL":
        return None
    attrs = trial.user_attrs or {}
    if attrs.get("error"):
        return str(attrs["error"])
    if attrs.get("interrupted"):
        return "interrupted (Ctrl-C)"
    if attrs.get("surplus"):
        return "surplus: it started when the study already held all its trials"
    if heartbeat is None:
        return "killed: its worker stopped before the trial ended (no heartbeat, or its process gone)"
    return STALE_WORKER if heartbeat else DEAD_WORKER


def records(source: Any) -> list[TrialRecord]:
    """The trials of an Optuna ``Study`` (or a list of its ``FrozenTrial``) as trial records,
    for :mod:`auxilearn_hpo.results` (``results.trials_frame(records(study))``).

    :func:`objective` stores ``user_attrs["reports"]`` (flat per-epoch reports, NaN as ``None``)
    and ``user_attrs["config"]`` (a held trial's config gains ``held_from``, the trial whose
    weights it held fixed, since it trained with those whatever weighting it drew); a trial of
    someone else's objective gives its intermediate
    values (``epoch`` and ``val_metric``, ``higher_is_better`` from the study's direction).
    Optuna's states map to statuses: COMPLETE completed, PRUNED pruned, FAIL failed (interrupted
    when a Ctrl-C stopped it), RUNNING interrupted, WAITING not_started. A FAIL trial's record
    says why in ``reason`` (:func:`failure_reason`; read from a study, whether it records
    heartbeats tells a stale worker from a dead process).
    """
    study = source if hasattr(source, "get_trials") else None
    trials = source.get_trials(deepcopy=False) if study is not None else list(source)
    higher = _study_higher(study)
    heartbeat = heartbeat_enabled(study) if study is not None else None
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
                                 status=status, reason=failure_reason(trial, heartbeat)))
    return found


def to_frame(study: "optuna.Study") -> "pd.DataFrame":
    """One row per trial of ``study``: ``results.trials_frame(records(study))``."""
    from auxilearn_hpo.results import trials_frame

    return trials_frame(records(study))
