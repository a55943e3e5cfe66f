"""The trainable: one Tune trial trains one :class:`~auxilearn_hpo.integrations.trial.Trial`,
reporting and checkpointing every epoch; warm starts, checkpoints read back, registration."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.integrations.trial import TaskSpec, Trial
from auxilearn_hpo.report import EpochReport

from .extra import import_tune

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["CHECKPOINT_FILE", "WARM_FILE", "trainable", "trial_dir", "load_state", "checkpoint_history",
           "check_task", "bound_trainable", "register"]

#: File name of the learner's state inside every Tune checkpoint directory.
CHECKPOINT_FILE = "learner.pt"

#: File a finished trial of :func:`trainable` writes in its trial folder for warm starts.
WARM_FILE = "weighting.json"


def trainable(config: dict[str, Any], task: TaskSpec = "toy") -> None:
    """Ray Tune function trainable: train one :class:`Trial`, reporting and checkpointing each epoch.

    Builds ``Trial(task, config)``; if Tune hands back a checkpoint (a retry after a failure,
    ``Tuner.restore``, a PBT exploit), loads :data:`CHECKPOINT_FILE` from it and continues from
    that epoch, with this trial's (possibly perturbed) config in effect. Every epoch calls
    ``tune.report(metrics, checkpoint=...)`` where ``metrics`` is the epoch's
    :meth:`~auxilearn_hpo.report.EpochReport.flat` (``weights/<task>``, ``task_losses/<task>``)
    plus

    * ``score``: :func:`~auxilearn_hpo.records.trial_score` of the validation metrics so far
      (the mean of the last epochs), the one definition of best (:func:`run` ranks by it);
    * ``cpu_s``: process CPU-seconds of this epoch in this trial (``time.process_time``: building
      the trial or restoring it, training, evaluation), **without** writing checkpoints;
    * ``val_source``: ``"validation"``, or ``"auxiliary"`` when the auxiliary set doubles as
      validation;
    * ``warm_started`` / ``held``: 1.0 when the trial started from another trial's weights /
      holds them fixed (``hold_gain``, below), else 0.0;

    and the checkpoint holds the learner's full state, so ``training_iteration`` equals
    ``epoch``. A trial whose ``val_metric`` or weights become NaN or infinite reports that
    epoch and stops (training on would waste the budget); :mod:`auxilearn_hpo.results` labels
    it ``failed``, as Optuna does.

    Warm starts (``config["warm_start"]``): a new trial (no checkpoint of its own) first loads
    the learned weighting of the best finished trial of the same experiment (by ``score``) whose
    weighting has the same parametrisation; every trial that ends writes its weighting's state
    and score to :data:`WARM_FILE` in its trial folder for this purpose (the experiment's
    folder must be on a file system the trials share). With ``hold_gain`` set, a warm-started
    trial trains with the best finished ``"linear"`` trial's per-task weights held fixed, the
    auxiliaries times ``hold_gain`` (:meth:`~auxilearn_hpo.integrations.trial.Trial.warm_start`),
    and writes no weighting file.

    Args:
        config: the trial's outer settings (keys of
            :data:`~auxilearn_hpo.integrations.trial.OUTER_SETTINGS`).
        task: a benchmark name or a picklable factory ``config -> auxilearn_hpo.Task``.
            Bind it with :func:`register` or ``tune.with_parameters(trainable, task=...)``.
    """
    tune = import_tune()
    import time

    import torch

    from auxilearn_hpo.records import trial_score

    mark = time.process_time()
    trial = Trial(task, config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trial.load_state_dict(load_state(checkpoint))
    elif trial.config["warm_start"]:
        stored = _warm_source(trial)
        if stored is not None:
            trial.warm_start(stored)
    values = [r.val_metric for r in trial.learner.history]
    for report in trial.reports():
        values.append(report.val_metric)
        metrics = {**report.flat(), "score": trial_score(values, report.refit_score), "val_source": trial.val_source,
                   "warm_started": float(trial.warm_started), "held": float(trial.held)}
        metrics["cpu_s"] = time.process_time() - mark
        # Tune copies the directory into the trial's storage before report() returns.
        with tempfile.TemporaryDirectory(prefix="auxilearn-ckpt-") as tmp:
            torch.save(trial.state_dict(), os.path.join(tmp, CHECKPOINT_FILE))
            if report.epoch >= trial.epochs or report.non_finite():
                _write_warm(trial, metrics["score"])
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        mark = time.process_time()  # checkpoints are not counted in cpu_s
        if report.non_finite():
            return



def trial_dir() -> Path | None:
    """The running Tune trial's folder, or ``None`` outside a Tune session."""
    try:
        from ray import tune

        return Path(tune.get_context().gettrial_dir())
    except Exception:  # noqa: BLE001 - outside a Tune session (a direct call, a test)
        return None


def _write_warm(trial: Trial, score: float) -> None:
    state = trial.weighting_state()
    folder = trial_dir()
    if not state or folder is None or not math.isfinite(score):
        return
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (WARM_FILE + ".part")
    part.write_text(json.dumps({"score": score, "higher_is_better": trial.mode == "max", **state}))
    os.replace(part, folder / WARM_FILE)


def _warm_source(trial: Trial) -> dict[str, Any] | None:
    """The stored weighting of the best finished trial in this trial's experiment that fits this
    trial (:meth:`~auxilearn_hpo.integrations.trial.Trial.fits`), or ``None``."""
    folder = trial_dir()
    if folder is None:
        return None
    best, best_score = None, math.nan
    higher = trial.mode == "max"
    for path in folder.parent.glob(f"*/{WARM_FILE}"):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        score = stored.get("score")
        if not trial.fits(stored) or not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        if best is None or (score > best_score if higher else score < best_score):
            best, best_score = stored, float(score)
    return best


def load_state(checkpoint: Any) -> dict[str, Any]:
    """The learner state (:meth:`Trial.state_dict`) saved in a Tune checkpoint by :func:`trainable`."""
    import torch

    with checkpoint.as_directory() as directory:
        return torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)


def checkpoint_history(result: Any) -> "pd.DataFrame":
    """A trial's per-epoch reports, one row per epoch, read from its latest checkpoint.

    The learner keeps every report in its state, so this history holds each epoch exactly
    once even after retries and restores. (Ray 2.60's ``result.metrics_dataframe`` reads the
    trial's ``result.json``, which can lose the reports made shortly before a crash once the
    trial is retried; ``progress.csv`` keeps them.) Columns are flattened like Tune's
    (``weights/<task>``); ``test_metric`` is not part of the learner's history.

    Args:
        result: a ``ray.tune.Result`` (an element of a ``ResultGrid``) of :func:`trainable`.
    """
    import pandas as pd

    if result.checkpoint is None:
        return pd.DataFrame()
    return pd.DataFrame([EpochReport.from_dict(r).flat() for r in load_state(result.checkpoint)["history"]])


def bound_trainable(task: TaskSpec) -> Any:
    """:func:`trainable` bound to ``task`` (``tune.with_parameters``), after :func:`check_task`."""
    tune = import_tune()
    check_task(task)
    return tune.with_parameters(trainable, task=task)


def check_task(task: TaskSpec) -> None:
    """A ``TypeError`` unless ``task`` is a benchmark name or a callable."""
    if not (isinstance(task, str) or callable(task)):
        raise TypeError(f"task must be a benchmark name or a callable config -> Task, got {type(task).__name__}")


def register(task: TaskSpec = "toy", name: str = "auxilearn") -> str:
    """Register :func:`trainable` bound to ``task`` under ``name``; returns ``name``.

    Afterwards ``tune.Tuner(name, param_space=...)`` trains that task. To give trials more
    than Tune's default resources, pass ``tune.with_resources(tune.with_parameters(trainable,
    task=task), {...})`` to the Tuner instead (Tune cannot add resources to a registered name).

    Args:
        task: a benchmark name (``"toy"``, ``"graded_noise"``, ``"scaled_regression"``,
            ``"digits"``) or a picklable factory ``config -> auxilearn_hpo.Task``.
        name: the name to register.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    tune = import_tune()
    tune.register_trainable(name, bound_trainable(task))
    return name
