"""The objective: one Optuna trial trains one :class:`~auxilearn_hpo.integrations.trial.Trial`.

It suggests the outer settings, iterates :meth:`Trial.reports` and forwards each epoch's score to
``trial.report`` / ``trial.should_prune``; it trains nothing itself.

What each finished trial stores as user attributes (JSON only; non-finite numbers become ``None``):

======================  =====================================================================
attribute               meaning
======================  =====================================================================
``worker``              ``{"host", "ns", "pid", "started"}`` of the process that ran it (written
                        first, so a trial left RUNNING by a killed process can be recognised)
``config``              the trial's outer settings: suggested values plus ``fixed``
``reports``             list of flattened per-epoch reports (``weights/<task>``, ...)
``weights``             ``{task: effective weight}`` after the last epoch run
``hypersteps``          hypersteps taken; ``hypersteps_skipped``: skipped (non-finite)
``epochs``              epochs run (fewer than configured when pruned)
``best_metric``         best validation metric over the epochs run (by the task's mode)
``score``               the trial's validation score (:func:`~auxilearn_hpo.records.trial_score`:
                        mean ``val_metric`` of the final model's last epochs, a refit's where the
                        final model is a refit), also its value
``val_source``          ``"validation"``, or ``"auxiliary"`` when the task has no validation data
                        and the auxiliary set doubles as validation
``cpu_s``               process CPU-seconds of the trial (``time.process_time``: the sampler's
                        suggestions, building the task, training, evaluation, reporting)
``weighting_state``     the learned weighting's parameters (lists) and its compatibility key, for
                        warm starts (absent for weightings that are not learned)
``warm_started_from``   the number of the trial whose weighting this one started from (warm starts)
``held``                ``True`` when the trial trained with those weights held fixed (``hold_gain``)
``held_signature``      what decides a held trial's training (its weights and the non-hyperstep
                        settings; :meth:`~auxilearn_hpo.integrations.trial.Trial.held_signature`)
``twin_of``             a held trial that would have trained exactly like a finished one (same
                        ``held_signature``) is not trained: it is pruned at once, with no epochs,
                        and this names the finished one (its ``cpu_s`` is only the lookup's)
``test_metric``         main-task test metric after the last epoch (``None`` when pruned)
``higher_is_better``    1.0 when the task's mode is ``"max"``, else 0.0
``metric_name``         e.g. ``"mse"`` or ``"accuracy"``
``error``               one line: why the trial failed (an exception caught by ``catch``, or
                        the epoch whose metric or weights became non-finite)
``interrupted``         ``True`` when Ctrl-C (``KeyboardInterrupt``) stopped the trial; Optuna
                        records it FAIL, so a rerun replaces it; results tables say ``interrupted``
======================  =====================================================================

The trial's value is its **score**, :func:`~auxilearn_hpo.records.trial_score` (the mean
``val_metric`` of its last epochs; where the final model is a refit on all labelled data, the
refit's), the same definition of best that Ray Tune's trainable reports and every table ranks by;
each epoch reports the score so far to the pruner (the last, the trial's score). ``best_metric``
keeps the best epoch's value.

Pruning: the objective asks the pruner only from epoch ``ceil(prune_warmup * epochs)`` on
(default :data:`PRUNE_WARMUP` = 0.25, a quarter of the trial's epochs), whatever the pruner: early
epochs say little (every trial starts near chance, and a slowly rising learned weighting or
nonlinear combiner looks worst first).

A trial that holds warm-started weights fixed (``hold_gain``, below) is never pruned: without
the learning trials' ramp its auxiliaries act from the first step, so its early epochs trail
theirs while it often ends ahead (measured in ``docs/experiments.md``), and the median of their
curves would stop it early. For the same reason its curve is no reference for theirs: it reports
only its last epoch's score to Optuna (its ``reports`` keep every epoch), so the pruner compares a
learning run with learning runs (under ``final_data="all"`` a held trial also trains on more data).

Warm starts (``warm_start=True`` in the config, an opt-in setting): before training, the trial
loads the learned weighting stored by the best COMPLETE trial of the study whose weighting has
the same parametrisation (:func:`~auxilearn_hpo.integrations.trial.warm_key`); the model and
optimizers start fresh. So the outer search refines weights instead of relearning them. With
``hold_gain`` set (a number), a warm-started trial instead trains with the per-task weights of the
best COMPLETE ``"linear"`` trial (whatever its own weighting) held fixed, every auxiliary weight
times ``hold_gain``, and stores no weighting of its own
(:meth:`~auxilearn_hpo.integrations.trial.Trial.warm_start`; :func:`~auxilearn_hpo.integrations.space.warm_space`).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.integrations.space import default_space
from auxilearn_hpo.integrations.space import suggest as space_suggest
from auxilearn_hpo.integrations.trial import OUTER_SETTINGS, Trial, TaskSpec, check_config
from auxilearn_hpo.records import trial_score
from auxilearn_hpo.report import EpochReport

from .extra import import_optuna
from .workers import worker_info

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["PRUNE_WARMUP", "warmup_epochs", "check_names", "suggest", "json_safe", "objective"]

PRUNE_WARMUP = 0.25


def warmup_epochs(epochs: int, fraction: float = PRUNE_WARMUP) -> int:
    """The first epoch at which a trial of ``epochs`` epochs may be pruned: ``ceil(fraction * epochs)``
    (at least 1).

    Example:
        >>> [warmup_epochs(e) for e in (1, 4, 10, 30)]
        [1, 1, 3, 8]
    """
    return max(1, math.ceil(float(fraction) * int(epochs) - 1e-9))



def _optuna_distribution(spec: Any) -> Any:
    """``spec`` if it is an Optuna distribution (checked without importing Optuna), else None."""
    distributions = sys.modules.get("optuna.distributions")
    if distributions is not None and isinstance(spec, distributions.BaseDistribution):
        return spec
    return None


def check_names(space: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict of setting name -> spec, got {type(space).__name__}")
    if not isinstance(fixed, Mapping):
        raise TypeError(f"fixed must be a dict of setting name -> value, got {type(fixed).__name__}")
    unknown = sorted((set(space) | set(fixed)) - OUTER_SETTINGS)
    if unknown:
        raise ValueError(f"unknown outer setting(s) {unknown}; known settings: {sorted(OUTER_SETTINGS)}")
    check_config(dict(fixed))  # the fixed values themselves, before any trial runs


def suggest(trial: Any, space: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Draw one config from ``space`` (:func:`~auxilearn_hpo.integrations.space.default_space` when
    ``None``) with ``trial.suggest_categorical/float/int``.

    A spec is one of :mod:`~auxilearn_hpo.integrations.space`'s :class:`Categorical`,
    :class:`Uniform`, :class:`LogUniform`, :class:`IntRange`; a list or tuple (shorthand for
    ``Categorical``); an Optuna ``CategoricalDistribution``, ``FloatDistribution`` or
    ``IntDistribution``; anything else is a fixed value, put in the config as it is (and not
    recorded as an Optuna parameter).

    Raises:
        ValueError: a name that is not an outer setting (the message names it).
    """
    space = default_space() if space is None else space
    check_names(space, {})
    config: dict[str, Any] = {}
    for name, spec in space.items():
        if _optuna_distribution(spec) is not None:
            config[name] = _suggest_distribution(trial, name, spec)
        else:
            config.update(space_suggest(trial, {name: spec}))
    return config


def _suggest_distribution(trial: Any, name: str, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise TypeError(f"setting {name!r}: unsupported Optuna distribution {type(dist).__name__}; use "
                    f"CategoricalDistribution, FloatDistribution or IntDistribution")


def json_safe(value: Any) -> Any:
    """Plain JSON values: non-finite floats -> None, numpy/torch scalars -> Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return json_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)



def _task_label(task: TaskSpec) -> str:
    return task if isinstance(task, str) else f"{getattr(task, '__module__', '?')}.{getattr(task, '__qualname__', task)}"


def _store(trial: Any, run: Trial, reports: list[EpochReport], cpu_s: float | None = None) -> None:
    """Write what is known about the trial so far as user attributes (see the module docstring)."""
    if cpu_s is not None:
        trial.set_user_attr("cpu_s", float(cpu_s))
    trial.set_user_attr("val_source", run.val_source)
    if not reports:
        return
    state = run.weighting_state()
    if state:
        trial.set_user_attr("weighting_state", json_safe(state))
    last = reports[-1]
    values = [r.val_metric for r in reports if math.isfinite(r.val_metric)]
    best = (max if run.mode == "max" else min)(values) if values else None
    attrs = {
        "reports": [r.flat() for r in reports],
        "weights": last.weights,
        "hypersteps": last.hypersteps,
        "hypersteps_skipped": last.hypersteps_skipped,
        "epochs": len(reports),
        "best_metric": best,
        "score": trial_score([r.val_metric for r in reports], last.refit_score),
        "test_metric": last.test_metric,
        "higher_is_better": last.higher_is_better,
        "metric_name": run.metric_name,
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, json_safe(value))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500] if text else type(err).__name__


def _twin(trial: Any, signature: str | None) -> Any:
    """A COMPLETE trial of ``trial``'s study that held the same weights with the same settings
    (same ``held_signature``), or ``None``."""
    study = getattr(trial, "study", None)
    if study is None or signature is None:
        return None
    optuna = import_optuna()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("held_signature") == signature and t.value is not None:
            return t
    return None


def _warm_source(trial: Any, run: Trial) -> tuple[int | None, dict[str, Any] | None]:
    """The best COMPLETE trial of ``trial``'s study (by its value, the score) whose stored
    weighting fits ``run`` (:meth:`~auxilearn_hpo.integrations.trial.Trial.fits`)."""
    study = getattr(trial, "study", None)
    if study is None:
        return None, None
    optuna = import_optuna()
    best = None
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        stored = t.user_attrs.get("weighting_state")
        if not run.fits(stored) or t.value is None or not math.isfinite(t.value):
            continue
        if best is None or (t.value > best.value if higher else t.value < best.value):
            best = t
    return (best.number, best.user_attrs["weighting_state"]) if best is not None else (None, None)


def objective(
    task: TaskSpec = "toy", space: Mapping[str, Any] | None = None, *, fixed: Mapping[str, Any] | None = None,
    catch: Iterable[type[Exception]] | type[Exception] = (),
    progress: Callable[[int, EpochReport | None, int], None] | None = None,
    prune_warmup: float = PRUNE_WARMUP,
) -> Callable[["optuna.Trial"], float]:
    """An Optuna objective: suggest outer settings, train one :class:`Trial`, report and prune.

    Every epoch reports the score so far (:func:`~auxilearn_hpo.records.trial_score` of
    the validation metrics) with ``trial.report(value, epoch)`` (epochs count from 1) and, from
    epoch :func:`warmup_epochs` on, raises ``optuna.TrialPruned`` when ``trial.should_prune()``;
    the user attributes of the module docstring are written before it returns, is pruned or fails.

    Args:
        task: a benchmark name (:func:`auxilearn_hpo.tasks.names`) or a factory
            ``config -> auxilearn_hpo.Task`` (called once per trial with the full config).
        space: setting name -> spec (see :func:`suggest`); ``None``: :func:`default_space`.
        fixed: settings every trial gets (``{"epochs": 5, "seed": 1}``); they override the same
            names in ``space``, which are then not searched. ``{"warm_start": True}`` turns on
            warm starts (see the module docstring).
        catch: exceptions (raised while building or training the trial) that fail only this
            trial: the objective stores their one-line message as ``user_attrs["error"]`` and
            returns NaN, which Optuna records as FAIL (one log line, no traceback), and the
            study goes on.
        progress: called as ``progress(trial_number, report, epochs)`` after every epoch (``epochs``:
            the trial's total), and once with ``report=None`` when the trial ends (finished, pruned,
            failed or interrupted), e.g. to draw and clear a progress line.
        prune_warmup: fraction of a trial's epochs before which the pruner is not asked
            (in ``[0, 1]``; default 0.25).

    Returns:
        ``objective(trial) -> float``: the trial's score. A trial stops at
        the first epoch whose metric or weights are NaN or infinite (a diverged trial): that
        epoch is stored, ``user_attrs["error"]`` says which values, and NaN is returned, which
        Optuna records as FAIL. ``KeyboardInterrupt`` sets ``user_attrs["interrupted"]`` and
        propagates.

    Raises:
        ImportError: Optuna is not installed. ValueError: unknown setting names (named in the
        message) or a ``prune_warmup`` outside ``[0, 1]``. At trial time, ValueError when the
        study's direction disagrees with the task's mode.
    """
    optuna = import_optuna()
    if isinstance(prune_warmup, bool) or not isinstance(prune_warmup, (int, float)) or not 0 <= prune_warmup <= 1:
        raise ValueError(f"prune_warmup must be a fraction of the epochs in [0, 1], got {prune_warmup!r}")
    fixed = dict(fixed or {})
    space = {k: v for k, v in (default_space() if space is None else space).items() if k not in fixed}
    check_names(space, fixed)
    label = _task_label(task)
    caught = tuple(catch) if isinstance(catch, Iterable) else (catch,)

    def _objective(trial: "optuna.Trial") -> float:
        start = time.process_time()
        trial.set_user_attr("worker", worker_info())
        config = {**suggest(trial, space), **fixed}
        trial.set_user_attr("config", json_safe(config))
        run: Trial | None = None
        reports: list[EpochReport] = []
        number = getattr(trial, "number", 0)
        try:
            run = Trial(task, config)
            study = getattr(trial, "study", None)  # a FixedTrial has none
            if study is not None and len(study.directions) == 1:
                wanted = "maximize" if run.mode == "max" else "minimize"
                if study.direction.name.lower() != wanted:
                    raise ValueError(f"task {label!r} has mode {run.mode!r} ({run.metric_name}), so the study "
                                     f"must {wanted}, but it is set to {study.direction.name.lower()}")
            if run.config["warm_start"]:
                source, stored = _warm_source(trial, run)
                trial.set_user_attr("warm_started_from", source if stored and run.warm_start(stored) else None)
                trial.set_user_attr("held", run.held)
                if run.held:
                    signature = run.held_signature()
                    trial.set_user_attr("held_signature", signature)
                    twin = _twin(trial, signature)
                    if twin is not None:  # it would train exactly like a finished trial: nothing to learn
                        trial.set_user_attr("twin_of", twin.number)
                        raise optuna.TrialPruned(f"repeats trial {twin.number}")
            first_prune = warmup_epochs(run.epochs, prune_warmup)
            for report in run.reports():
                reports.append(report)
                if progress is not None:
                    progress(number, report, run.epochs)
                bad = report.non_finite()
                if bad:  # diverged: training on would only waste the budget
                    trial.set_user_attr("error", f"diverged at epoch {report.epoch}: {', '.join(bad)} not finite")
                    return math.nan
                value = trial_score([r.val_metric for r in reports], report.refit_score)
                if not run.held or report.epoch >= run.epochs:  # a held curve is no pruner's reference
                    trial.report(value, report.epoch)
                if (report.epoch >= first_prune and report.epoch < run.epochs and not run.held
                        and trial.should_prune()):
                    raise optuna.TrialPruned(f"pruned at epoch {report.epoch} with score {value:.6g}")
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            raise
        except caught as err:
            trial.set_user_attr("error", _one_line(err))
            # Through Optuna's own handler, next to its line for the same trial (and as quiet as it).
            logging.getLogger("optuna.auxilearn_hpo").warning(
                "Trial %s failed: %s", getattr(trial, "number", "?"), _one_line(err))
            return math.nan
        finally:
            if progress is not None:
                progress(number, None, run.epochs if run is not None else 0)
            if run is not None:
                _store(trial, run, reports, time.process_time() - start)
        if not reports:
            raise ValueError(f"the trial ran no epoch (epochs={run.epochs}); nothing to return")
        return trial_score([r.val_metric for r in reports], reports[-1].refit_score)

    _objective.__qualname__ = f"objective[{label}]"
    return _objective
