"""Optuna adapter: an objective with pruning, a search space, and ``run`` -> (DataFrame, Study).

Inside every Optuna trial the auxiliary-loss weights are *learned* by implicit differentiation
(:class:`~auxilearn_hpo.integrations.trial.Trial`); Optuna only searches the discrete outer
settings (how often to take a hyperstep, how many solver steps, which solver and weighting,
learning rates). This module trains nothing itself: it iterates :meth:`Trial.reports` and forwards
each epoch's ``val_metric`` to ``trial.report`` / ``trial.should_prune``.

Importing this module never needs Optuna; the first call of :func:`objective` or :func:`run`
raises an :class:`ImportError` naming ``pip install auxilearn-hpo[optuna]`` when it is missing.
The search space (:func:`default_space` and the spec classes, re-exported from
:mod:`~auxilearn_hpo.integrations.space`, which Ray Tune reads too) and :func:`suggest` work
without Optuna.

Example:
    >>> from auxilearn_hpo.integrations.optuna import run, IntRange
    >>> df, study = run("toy", n_trials=4, fixed={"epochs": 3})  # doctest: +SKIP
    >>> df, study = run(my_factory, n_trials=20, storage="sqlite:///study.db",  # doctest: +SKIP
    ...                 space={"update_every": IntRange(1, 20), "solver": ["neumann", "cg"]})

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
``score``               the trial's validation score (:func:`~auxilearn_hpo.records.selection_score`:
                        mean ``val_metric`` of the last epochs), also its value
``val_source``          ``"validation"``, or ``"auxiliary"`` when the task has no validation data
                        and the auxiliary set doubles as validation
``cpu_s``               process CPU-seconds of the trial (``time.process_time``: building the
                        task, training, evaluation, reporting; not the sampler's suggestions)
``weighting_state``     the learned weighting's parameters (lists) and its compatibility key, for
                        warm starts (absent for weightings that are not learned)
``warm_started_from``   the number of the trial whose weighting this one started from (warm starts)
``held``                ``True`` when the trial trained with those weights held fixed (``hold_gain``)
``held_signature``      what decides a held trial's training (its weights and the non-hyperstep
                        settings; :meth:`~auxilearn_hpo.integrations.trial.Trial.held_signature`)
``twin_of``             a held trial that would have trained exactly like a finished one (same
                        ``held_signature``) is not trained: it takes that trial's epochs and
                        results, and this names it (its ``cpu_s`` is only the lookup's)
``test_metric``         main-task test metric after the last epoch (``None`` when pruned)
``higher_is_better``    1.0 when the task's mode is ``"max"``, else 0.0
``metric_name``         e.g. ``"mse"`` or ``"accuracy"``
``error``               one line: why the trial failed (an exception caught by ``catch``, or
                        the epoch whose metric or weights became non-finite)
``interrupted``         ``True`` when Ctrl-C (``KeyboardInterrupt``) stopped the trial; Optuna
                        records it FAIL, so a rerun replaces it; results tables say ``interrupted``
======================  =====================================================================

The trial's value is its **score**, :func:`~auxilearn_hpo.records.selection_score` (the mean
``val_metric`` of its last epochs), the same definition of best that Ray Tune's trainable reports
and every table ranks by; each epoch reports the score so far to the pruner. ``best_metric``
keeps the best epoch's value.

Pruning: the objective asks the pruner only from epoch ``ceil(prune_warmup * epochs)`` on
(default :data:`PRUNE_WARMUP` = 0.25, a quarter of the trial's epochs), whatever the pruner: early
epochs say little (every trial starts near chance, and a slowly rising learned weighting or
nonlinear combiner looks worst first).

A trial that holds warm-started weights fixed (``hold_gain``, below) is never pruned: without
the learning trials' ramp its auxiliaries act from the first step, so its early epochs trail
theirs while it often ends ahead (``scaled_regression``: validation MSE at a quarter of the epochs
0.37 against 0.34, at the end 0.222 against 0.248, seeds 0-9), and the median of their curves
would stop it early.

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

import contextlib
import importlib
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.integrations.space import (SPECS, Categorical, IntRange, LogUniform, Uniform, default_point,
                                             default_space, flat_params, warm_space)
from auxilearn_hpo.integrations.space import suggest as space_suggest
from auxilearn_hpo.integrations.trial import Trial, TaskSpec, check_config, resolve_task
from auxilearn_hpo.records import TrialRecord, flatten, selection_score
from auxilearn_hpo.report import EpochReport

if TYPE_CHECKING:  # pragma: no cover
    import optuna as _optuna
    import pandas as pd

__all__ = [
    "Categorical", "Uniform", "LogUniform", "IntRange", "default_space", "warm_space", "suggest", "objective", "run",
    "resolve_storage", "open_storage", "heartbeat_enabled", "fail_stale_trials", "fail_dead_trials", "records", "PRUNE_WARMUP",
    "warmup_epochs", "quiet", "journal_storage", "tpe_sampler", "no_pruner", "count_finished", "optimize_within",
]

#: Fraction of a trial's epochs before which :func:`objective` never asks the pruner.
PRUNE_WARMUP = 0.25


def warmup_epochs(epochs: int, fraction: float = PRUNE_WARMUP) -> int:
    """The first epoch at which a trial of ``epochs`` epochs may be pruned: ``ceil(fraction * epochs)``
    (at least 1).

    Example:
        >>> [warmup_epochs(e) for e in (1, 4, 10, 30)]
        [1, 1, 3, 8]
    """
    return max(1, math.ceil(float(fraction) * int(epochs) - 1e-9))

_logger = logging.getLogger(__name__)
_INSTALL = "pip install auxilearn-hpo[optuna]"


def _import_optuna():
    """The real ``optuna`` package (an absolute import: never this module), or a clear ImportError."""
    try:
        optuna = importlib.import_module("optuna")
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.optuna needs the optional dependency 'optuna', which is not "
            f"installed: {_INSTALL}"
        ) from err
    if not hasattr(optuna, "create_study"):  # e.g. a script's folder holding an optuna.py shadows it
        raise ImportError(f"'optuna' resolved to {getattr(optuna, '__file__', optuna)!r}, which is not the Optuna "
                          f"library; rename that file or fix sys.path ({_INSTALL})")
    return optuna


# ---------------------------------------------------------------------------------------------- space
def _optuna_distribution(spec: Any) -> Any:
    """``spec`` if it is an Optuna distribution (checked without importing Optuna), else None."""
    distributions = sys.modules.get("optuna.distributions")
    if distributions is not None and isinstance(spec, distributions.BaseDistribution):
        return spec
    return None


def _is_searched(spec: Any) -> bool:
    return isinstance(spec, (*SPECS, list, tuple)) or _optuna_distribution(spec) is not None


def _check_names(space: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    if not isinstance(space, Mapping):
        raise TypeError(f"space must be a dict of setting name -> spec, got {type(space).__name__}")
    if not isinstance(fixed, Mapping):
        raise TypeError(f"fixed must be a dict of setting name -> value, got {type(fixed).__name__}")
    check_config({**dict.fromkeys(space), **dict.fromkeys(fixed)})  # ValueError naming unknown settings


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
    _check_names(space, {})
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


# ---------------------------------------------------------------------------------------------- objective
def _json_safe(value: Any) -> Any:
    """Plain JSON values: non-finite floats -> None, numpy/torch scalars -> Python numbers."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _json_safe(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[19])  # a zombie counts as gone
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace() -> str | None:
    """The PID namespace (Linux), so that containers sharing a hostname never judge each other's pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        return None


def _worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "ns": _pid_namespace(), "pid": os.getpid(),
            "started": _process_start(os.getpid())}


def _worker_gone(worker: Any) -> bool:
    """True only when ``worker`` ran on this host and its process no longer exists."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname() or os.name == "nt":
        return False  # unknown, another machine, or no safe liveness check (os.kill would terminate)
    if worker.get("ns") != _pid_namespace():
        return False  # another container: its pids mean nothing here
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, owned by someone else
        return False
    started = worker.get("started")
    now = _process_start(pid)
    if started is not None and now != started:
        return True  # a zombie, or the pid now belongs to another process
    return False


def fail_dead_trials(study: "_optuna.Study") -> list[int]:
    """Mark FAIL every RUNNING trial whose worker process (on this host) is gone; returns their numbers.

    A process killed mid-trial leaves its trial RUNNING forever; such trials would count as
    in progress and keep :func:`run` from finishing the study. Trials run on another host, or
    without a ``worker`` attribute (a trial just starting elsewhere), are left alone. This is
    the fallback for storages without Optuna's heartbeat: ``JournalStorage`` (Optuna 5 records no
    heartbeats there) and RDB storages opened without ``heartbeat_interval``. With a heartbeat,
    :func:`run` leaves dead workers to Optuna (:func:`fail_stale_trials`), which also sees
    workers on other machines.
    """
    optuna = _import_optuna()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if _worker_gone(worker):
            try:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker got there first
                continue
            _logger.warning("trial %d was left RUNNING by process %s on %s, which is gone: marked FAIL",
                            t.number, worker.get("pid"), worker.get("host"))
            failed.append(t.number)
    return failed


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
        trial.set_user_attr("weighting_state", _json_safe(state))
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
        "score": selection_score([r.val_metric for r in reports]),
        "test_metric": last.test_metric,
        "higher_is_better": last.higher_is_better,
        "metric_name": run.metric_name,
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, _json_safe(value))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500] if text else type(err).__name__


_TWIN_ATTRS = ("reports", "weights", "hypersteps", "hypersteps_skipped", "epochs", "best_metric", "score",
               "test_metric", "higher_is_better", "metric_name")


def _twin(trial: Any, signature: str | None) -> Any:
    """A COMPLETE trial of ``trial``'s study that held the same weights with the same settings
    (same ``held_signature``), or ``None``."""
    study = getattr(trial, "study", None)
    if study is None or signature is None:
        return None
    optuna = _import_optuna()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.user_attrs.get("held_signature") == signature and t.value is not None:
            return t
    return None


def _copy_twin(trial: Any, twin: Any) -> float:
    """Record ``twin``'s epochs and results as ``trial``'s (``user_attrs["twin_of"]`` names it)."""
    for step, value in sorted(twin.intermediate_values.items()):
        trial.report(value, step)
    for key in _TWIN_ATTRS:
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr("twin_of", twin.number)
    return float(twin.value)


def _warm_source(trial: Any, run: Trial) -> tuple[int | None, dict[str, Any] | None]:
    """The best COMPLETE trial of ``trial``'s study (by its value, the score) whose stored
    weighting fits ``run`` (:meth:`~auxilearn_hpo.integrations.trial.Trial.fits`)."""
    study = getattr(trial, "study", None)
    if study is None:
        return None, None
    optuna = _import_optuna()
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
) -> Callable[["_optuna.Trial"], float]:
    """An Optuna objective: suggest outer settings, train one :class:`Trial`, report and prune.

    Every epoch reports the score so far (:func:`~auxilearn_hpo.records.selection_score` of
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
    optuna = _import_optuna()
    if isinstance(prune_warmup, bool) or not isinstance(prune_warmup, (int, float)) or not 0 <= prune_warmup <= 1:
        raise ValueError(f"prune_warmup must be a fraction of the epochs in [0, 1], got {prune_warmup!r}")
    fixed = dict(fixed or {})
    space = {k: v for k, v in (default_space() if space is None else space).items() if k not in fixed}
    _check_names(space, fixed)
    label = _task_label(task)
    caught = tuple(catch) if isinstance(catch, Iterable) else (catch,)

    def _objective(trial: "_optuna.Trial") -> float:
        start = time.process_time()
        trial.set_user_attr("worker", _worker())
        config = {**suggest(trial, space), **fixed}
        trial.set_user_attr("config", _json_safe(config))
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
                    if twin is not None:  # it would train exactly like a finished trial: take its result
                        return _copy_twin(trial, twin)
            first_prune = warmup_epochs(run.epochs, prune_warmup)
            for report in run.reports():
                reports.append(report)
                if progress is not None:
                    progress(number, report, run.epochs)
                bad = report.non_finite()
                if bad:  # diverged: training on would only waste the budget
                    trial.set_user_attr("error", f"diverged at epoch {report.epoch}: {', '.join(bad)} not finite")
                    return math.nan
                value = selection_score([r.val_metric for r in reports])
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
        return selection_score([r.val_metric for r in reports])

    _objective.__qualname__ = f"objective[{label}]"
    return _objective


# ---------------------------------------------------------------------------------------------- run
def _default_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy then wants psycopg2; with only psycopg 3
    installed (``pip install auxilearn-hpo[postgres]``) use it instead. Any other URL is unchanged."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def resolve_storage(storage: Any) -> Any:
    """What :func:`run` passes to ``optuna.create_study(storage=...)``: Optuna's own choices.

    ``None`` -> in memory; a database URL (any SQLAlchemy URL: ``"sqlite:///study.db"``,
    ``"postgresql+psycopg://user@host/db"``, ``"mysql+pymysql://..."``) as it is, except that a
    driverless ``postgresql://`` uses psycopg 3 when psycopg2 is not installed; an Optuna storage
    object (``RDBStorage``, ``JournalStorage(JournalFileBackend(path))``, ...) as it is. A file
    path is refused: Optuna picks the storage by URL or object, not by file name.
    """
    optuna = _import_optuna()
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, str) and "://" in storage:
        return _default_driver(storage)
    raise ValueError(
        f"storage must be None, a database URL (sqlite:///path/study.db, postgresql+psycopg://user@host/db) or an "
        f"Optuna storage object (JournalStorage(JournalFileBackend(path)) for a journal file); got {storage!r}")


def open_storage(storage: Any, **rdb_options: Any) -> Any:
    """A URL becomes an ``RDBStorage`` with ``rdb_options`` (heartbeat settings), created while
    holding :func:`_exclusive` on the database: several processes starting on a new database would
    otherwise all create its tables, and all but one fail with ``table ... already exists``.
    Anything else is returned as it is (``rdb_options`` must then be empty)."""
    options = {k: v for k, v in rdb_options.items() if v is not None}
    if not isinstance(storage, str):
        if options:
            raise ValueError(f"{', '.join(sorted(options))} apply to a storage given as a URL; set them on the "
                             f"storage object instead (RDBStorage(url, heartbeat_interval=...))")
        return storage
    optuna = _import_optuna()
    callback = options.pop("stale_trial_callback", None)
    if callback is not None:  # Optuna 4.9 renamed failed_trial_callback
        import inspect

        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        options[name] = callback
    if storage.startswith("sqlite:"):  # writers wait for each other instead of failing after 5 s
        options.setdefault("engine_kwargs", {"connect_args": {"timeout": SQLITE_TIMEOUT}})
    _report_heartbeat_errors()
    import warnings

    with _exclusive(storage, "schema"), warnings.catch_warnings():
        # The heartbeat is "experimental" in Optuna 5 (it has been since 2.9); it is chosen here on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(storage, **options)


_open_storage = open_storage  # the former private name, kept for callers not yet moved

SQLITE_TIMEOUT = 60.0
"""Seconds a connection to a SQLite study waits for another's write (SQLite's busy timeout);
Python's default of 5 s is too short for several workers, or a heartbeat, on a loaded machine."""


def _report_heartbeat_errors() -> None:
    """Make a heartbeat thread that dies on a storage error log one line instead of a traceback
    (installed once per process; every other thread's exception goes to the previous hook)."""
    previous = threading.excepthook
    if getattr(previous, "_auxilearn_hpo", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        name = getattr(args.thread, "name", "") or ""
        if "_record_heartbeat" in name and isinstance(args.exc_value, Exception):
            cause = args.exc_value.__cause__ or args.exc_value
            _logger.warning("a trial's heartbeat could not be recorded (%s: %s); workers sharing the study may "
                            "fail that trial as stale", type(cause).__name__, " ".join(str(cause).split())[:120])
            return
        previous(args)

    hook._auxilearn_hpo = True  # type: ignore[attr-defined]
    threading.excepthook = hook


_THREAD_LOCK = threading.RLock()
_LOCK_ENGINES: dict[str, Any] = {}


def _rdb_url(storage: Any) -> str | None:
    """The SQLAlchemy URL (password included) of an RDB storage or URL, else None."""
    if isinstance(storage, str):
        return storage
    engine = getattr(storage, "engine", None)
    url = getattr(engine, "url", None)
    return url.render_as_string(hide_password=False) if url is not None else None


@contextlib.contextmanager
def _exclusive(storage: Any, purpose: str) -> Iterator[None]:
    """Hold a lock shared by every process using ``storage``: a PostgreSQL advisory lock (so every
    machine on that server takes part), an ``flock`` on a SQLite file (processes on this machine);
    other storages get a lock of this process only. ``purpose`` keeps unrelated locks apart."""
    with _THREAD_LOCK:
        url = _rdb_url(storage)
        backend = url.split(":", 1)[0].split("+", 1)[0] if url else ""
        if backend == "postgresql":
            import hashlib

            import sqlalchemy

            engine = _LOCK_ENGINES.get(url)
            if engine is None:
                engine = _LOCK_ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            key = int.from_bytes(hashlib.sha256(f"auxilearn-hpo:{purpose}".encode()).digest()[:8], "big",
                                 signed=True)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        path = url[len("sqlite:///"):].split("?", 1)[0] if backend == "sqlite" and url.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        # A lock file beside the database, never the database itself: closing any descriptor of
        # the database file drops every POSIX lock SQLite's own connections in this process hold
        # on it (https://www.sqlite.org/howtocorrupt.html, section 2.2).
        db = Path(path)
        with open(db.with_name(f".{db.name}.lock"), "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def heartbeat_enabled(storage: Any) -> bool:
    """Whether ``storage`` (or a study's) records Optuna heartbeats (``RDBStorage(url,
    heartbeat_interval=...)``), so that trials of dead workers go stale and are failed."""
    storage = getattr(storage, "_storage", storage)  # a Study
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def fail_stale_trials(study: "_optuna.Study") -> None:
    """Fail the trials whose worker is gone: through Optuna's heartbeat
    (``optuna.storages.fail_stale_trials``, which also runs the storage's stale-trial callback,
    e.g. ``RetryHeartbeatStaleTrialCallback``) when the storage records
    heartbeats; otherwise (JournalStorage, in memory, an RDB storage without heartbeat) through
    :func:`fail_dead_trials`, which sees workers on this host only."""
    optuna = _import_optuna()
    if heartbeat_enabled(study):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        fail_dead_trials(study)


def _direction(task: TaskSpec, fixed: Mapping[str, Any]) -> str:
    built = resolve_task(task, check_config(dict(fixed)))
    return "maximize" if built.mode == "max" else "minimize"


def _frame(study: "_optuna.Study") -> "pd.DataFrame":
    from auxilearn_hpo.results import trials_frame

    return trials_frame(records(study))


class _InterruptLogFilter(logging.Filter):
    """Optuna logs a trial stopped by Ctrl-C as failed, with the KeyboardInterrupt's traceback; say
    "interrupted" in one line instead (and drop the "failed with value None" line that follows)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, KeyboardInterrupt):
            number = record.getMessage().split(" failed", 1)[0]
            record.msg, record.args, record.exc_info, record.exc_text = f"{number} interrupted (Ctrl-C)", (), None, None
            self.seen = True
            return True
        if self.seen and "failed with value None" in record.getMessage():
            return False
        return True


class _Surplus(Exception):
    """A trial that started after the study already held ``n_trials`` finished, running or waiting trials."""


def _orphan(trial: Any, after: float = 10.0) -> bool:
    """A WAITING trial this worker may run: enqueued by someone else (a user, or a stale-trial
    callback's retry, which copies the dead trial's attributes), a place this worker took (another
    worker's run may have taken its own place's trial first), or a place taken by a worker that is
    gone or took it more than ``after`` seconds ago."""
    place = trial.user_attrs.get("place")
    if not isinstance(place, dict) or trial.system_attrs.get("failed_trial") is not None:
        return True
    mine = place.get("pid") == os.getpid() and place.get("host") == socket.gethostname()
    return mine or _worker_gone(place) or time.time() - float(place.get("at", 0.0)) > after


_FINISHED = ("COMPLETE", "PRUNED")
_HELD = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # the trials that take one of the n_trials places


def run(
    task: TaskSpec = "toy",
    n_trials: int = 10,
    *,
    space: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    storage: Any = None,
    study_name: str = "auxilearn",
    sampler: "_optuna.samplers.BaseSampler | None" = None,
    pruner: "_optuna.pruners.BasePruner | None" = None,
    n_jobs: int = 1,
    timeout: float | None = None,
    direction: str | None = None,
    catch: Iterable[type[Exception]] | type[Exception] = (),
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[..., None] | None = None,
    poll_interval: float = 1.0,
    progress: Callable[[int, EpochReport | None, int], None] | None = None,
    prune_warmup: float = PRUNE_WARMUP,
    start_at_default: bool = True,
) -> tuple["pd.DataFrame", "_optuna.Study"]:
    """Create (or load) a study and bring it to ``n_trials`` finished trials; return its table.

    ``n_trials`` is the **total** for the study, not for this call: trials already COMPLETE or
    PRUNED in ``storage`` count, so rerunning an interrupted study runs only the rest, and
    several processes (or machines) calling ``run`` with the same ``storage`` and ``study_name``
    share the work and stop together with exactly ``n_trials`` finished. Each trial takes a
    place first: under a lock shared by all workers (a PostgreSQL advisory lock, an ``flock`` on
    a SQLite file) a worker counts the trials that hold a place (finished, RUNNING and WAITING)
    and, while fewer than ``n_trials`` do, enqueues one (``study.enqueue_trial({})``, or the shipped
    defaults for a new study's first trial: ``start_at_default``) and runs it.
    A trial that starts anyway (a worker not sharing the lock: a journal file on several
    machines) finds ``n_trials`` places taken ahead of it and is ended FAIL at once, before
    training. FAIL trials never count, so the places of failed trials are run again.

    Dead workers: with a heartbeat (``heartbeat_interval`` here, or an ``RDBStorage`` object
    configured with one) Optuna fails a trial whose worker stopped beating for ``grace_period``
    seconds (:func:`fail_stale_trials`, run by every worker before each trial and while it
    waits), on any machine; ``stale_trial_callback`` (e.g. ``RetryHeartbeatStaleTrialCallback``,
    called ``RetryFailedTrialCallback`` before Optuna 4.9) then decides whether its settings are
    retried. A worker with nothing left to start waits for the
    RUNNING trials of others to finish or go stale, so the study ends complete as long as one
    worker lives. Without a heartbeat (``JournalStorage``, in memory) only trials left RUNNING
    by a dead process on this host are failed (:func:`fail_dead_trials`), and a worker does
    not wait for trials it cannot judge.

    Args:
        task: a benchmark name or a factory ``config -> Task`` (see :func:`objective`).
        n_trials: total finished (COMPLETE or PRUNED) trials the study should hold.
        space, fixed: see :func:`objective`.
        storage: ``None`` (in memory), a database URL or an Optuna storage object (see
            :func:`resolve_storage`).
        study_name: the study to create or resume.
        sampler: default ``TPESampler(seed=s)`` with ``s = 0`` for a new study and the number of
            trials already stored when resuming (so a resumed study does not repeat its first
            configs). Several workers that start at the same moment on a new study would share
            ``s = 0``: give each its own ``TPESampler(seed=worker_index)``.
        pruner: default ``MedianPruner()``; whatever the pruner, no trial is pruned before
            ``prune_warmup`` of its epochs (see :func:`objective`).
        n_jobs: threads running trials in this process (``-1``: one per core).
        timeout: seconds after which this call starts no new trial.
        direction: ``"minimize"``/``"maximize"``; ``None``: from the task's mode (this builds the
            task once with the ``fixed`` settings to read it).
        catch: exceptions that fail a trial without stopping the study: the objective records
            their message (see :func:`objective`) and the next trial starts.
        heartbeat_interval, grace_period, stale_trial_callback: passed to
            ``optuna.storages.RDBStorage`` when ``storage`` is a URL (seconds; Optuna's default
            grace period is twice the interval; the callback as ``heartbeat_stale_trial_callback``,
            or ``failed_trial_callback`` before Optuna 4.9). A ``ValueError`` for a storage object.
        poll_interval: seconds between checks while waiting for other workers' trials.
        progress: per-epoch callback of every trial (see :func:`objective`).
        prune_warmup: see :func:`objective`.
        start_at_default: the first trial of a new study runs the shipped defaults of the
            searched settings (:func:`~auxilearn_hpo.integrations.space.default_point`: the learned
            ``"linear"`` weighting at the learner's defaults, where the space allows them; the
            rest drawn by the sampler), so the study's best is never worse than the defaults'
            trial, and warm starts refine from it. ``False``: every trial is the sampler's.

    Returns:
        ``(frame, study)``: ``auxilearn_hpo.results.trials_frame(records(study))`` (one row per trial).

    Raises:
        ImportError: Optuna is missing. ValueError: unknown settings, a bad ``n_trials`` or
        ``storage``, or a stored study whose direction differs from the task's.
    """
    optuna = _import_optuna()
    from optuna.trial import TrialState

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"n_trials must be an int >= 0 (the study's total), got {n_trials!r}")
    if not isinstance(start_at_default, bool):
        raise ValueError(f"start_at_default must be True or False, got {start_at_default!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be an int >= 1 or -1 (one thread per core), got {n_jobs!r}")
    for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be None or an int >= 1 (seconds), got {value!r}")
    if grace_period is not None and heartbeat_interval is None:
        raise ValueError("grace_period needs heartbeat_interval (the heartbeat it waits for)")
    fixed = dict(fixed or {})
    catch = tuple(catch) if isinstance(catch, Iterable) else (catch,)
    func = objective(task, space, fixed=fixed, catch=catch, progress=progress, prune_warmup=prune_warmup)
    searched = {k: v for k, v in (default_space() if space is None else space).items() if k not in fixed}
    known = {"weighting": fixed["weighting"]} if "weighting" in fixed else {}  # whose defaults apply
    first = flat_params(default_point({**searched, **known})) if start_at_default else {}
    if direction is None:
        direction = _direction(task, fixed)
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize', 'maximize' or None, got {direction!r}")
    opened = open_storage(resolve_storage(storage), heartbeat_interval=heartbeat_interval,
                           grace_period=grace_period, stale_trial_callback=stale_trial_callback)
    study = optuna.create_study(
        storage=opened, study_name=study_name, direction=direction, load_if_exists=True,
        pruner=pruner if pruner is not None else optuna.pruners.MedianPruner(),
        sampler=sampler if sampler is not None else optuna.samplers.TPESampler(seed=0),
    )
    if len(study.directions) != 1 or study.direction.name.lower() != direction:
        raise ValueError(f"study {study_name!r} in this storage was created with direction(s) "
                         f"{[d.name.lower() for d in study.directions]}, but this task needs {direction!r}")
    n_stored = len(study.get_trials(deepcopy=False))
    if sampler is None and n_stored:  # resuming: do not replay the first trials' draws
        study.sampler = optuna.samplers.TPESampler(seed=n_stored)

    finished = tuple(TrialState[s] for s in _FINISHED)
    held = tuple(TrialState[s] for s in _HELD)
    heartbeat = heartbeat_enabled(opened if opened is not None else study)
    deadline = None if timeout is None else time.monotonic() + timeout
    stop = threading.Event()

    def guarded(trial: "_optuna.Trial") -> float:
        ahead = [t for t in study.get_trials(deepcopy=False, states=held) if t.number < trial.number]
        if len(ahead) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number} is surplus: the study already holds {n_trials} finished, "
                           f"running or waiting trials")
        return func(trial)

    def died() -> set[int]:
        """FAIL trials whose worker died (failed as stale or dead; no error of their own)."""
        return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                if not {"error", "interrupted", "surplus", "reports"} & set(t.user_attrs)}

    # This call runs at most the places free when it starts, plus those freed later by dead
    # workers: a trial of its own that fails is not run again (a rerun does that), so a task
    # whose every trial fails cannot keep it busy forever.
    with _exclusive(opened, f"places:{study_name}"):
        died_before = died()
        fail_stale_trials(study)
        free = n_trials - len(study.get_trials(deepcopy=False, states=held))
    attempts = [0]

    def take_place() -> str:
        """Under the study's lock: enqueue a trial if a place is free. Returns "run" (a WAITING
        trial is there to run), "wait" (others' trials are running) or "done"."""
        with _exclusive(opened, f"places:{study_name}"):
            fail_stale_trials(study)
            may_start = attempts[0] < free + len(died() - died_before)
            trials = study.get_trials(deepcopy=False, states=held)
            if may_start and len(trials) < n_trials:
                # marked, so that no other worker takes it for an orphan (see below) before this
                # worker's optimize() runs it
                new_study = bool(first) and not study.get_trials(deepcopy=False)
                study.enqueue_trial(first if new_study else {}, user_attrs={"place": {**_worker(), "at": time.time()}})
                first.clear()  # the study has a trial now: no more lookups
                attempts[0] += 1
                return "run"
            if may_start and any(t.state == TrialState.WAITING and _orphan(t) for t in trials):
                attempts[0] += 1
                return "run"
        if sum(t.state in finished for t in trials) >= n_trials:
            return "done"
        others = any(t.state == TrialState.RUNNING for t in trials)
        return "wait" if heartbeat and others else "done"

    def work() -> None:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            step = take_place()
            if step == "done":
                return
            if step == "wait":  # others' trials: they finish, or go stale and their places free up
                time.sleep(poll_interval)
                continue
            study.optimize(guarded, n_trials=1, catch=(_Surplus, *catch))

    optimize_logger = logging.getLogger("optuna.study._optimize")
    quiet = _InterruptLogFilter()
    optimize_logger.addFilter(quiet)
    try:
        threads = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs
        if threads == 1:
            work()
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                futures = [pool.submit(work) for _ in range(threads)]
                try:
                    for future in futures:
                        future.result()
                finally:
                    stop.set()
    finally:
        optimize_logger.removeFilter(quiet)
    return _frame(study), study


# ------------------------------------------------------------------------------ reading studies
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


# ---------------------------------------------------------------------- benchmark helpers
def quiet() -> None:
    """Optuna's logger at WARNING and its experimental-feature warnings silenced."""
    optuna = _import_optuna()
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def journal_storage(path: str | os.PathLike) -> Any:
    """An Optuna ``JournalStorage`` on the file ``path`` (several processes may share it)."""
    optuna = _import_optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(os.fspath(path)))


def tpe_sampler(seed: int, n_startup_trials: int = 10) -> Any:
    """``TPESampler(seed=seed, n_startup_trials=n_startup_trials)``."""
    return _import_optuna().samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


def no_pruner() -> Any:
    """``NopPruner()``: every trial runs all its epochs."""
    return _import_optuna().pruners.NopPruner()


def count_finished(study_name: str, storage: Any) -> int:
    """Trials of the stored study ``study_name`` that are COMPLETE or PRUNED."""
    optuna = _import_optuna()
    study = optuna.load_study(study_name=study_name, storage=resolve_storage(storage))
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in study.get_trials(deepcopy=False))


def optimize_within(
    func: Callable[[Any], float], cpu_s: float, *, direction: str, sampler: Any = None, pruner: Any = None,
    max_trials: int = 10_000, enqueue: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Run ``func`` (e.g. :func:`objective`) in a new in-memory study until the ``cpu_s`` user
    attributes of its trials add up to ``cpu_s`` CPU-seconds (or ``max_trials`` trials).

    ``sampler``/``pruner``: default ``TPESampler()`` and ``MedianPruner()``. ``enqueue``: parameter
    dicts (flat names, see :func:`~auxilearn_hpo.integrations.space.flat_params`) the first
    trials run, in order (``study.enqueue_trial``), before the sampler's. Returns one dict per
    trial in the order they ran: ``number``, ``state`` (lower case, e.g. ``"complete"``),
    ``value`` (``None`` unless COMPLETE) and ``user_attrs``.
    """
    optuna = _import_optuna()
    study = optuna.create_study(direction=direction, sampler=sampler,
                                pruner=pruner if pruner is not None else optuna.pruners.MedianPruner())

    for params in enqueue:
        study.enqueue_trial(dict(params))
    total = 0.0

    def spent(study_: Any, trial: Any) -> None:
        nonlocal total
        total += float(trial.user_attrs.get("cpu_s") or 0.0)
        if total >= cpu_s:
            study_.stop()

    study.optimize(func, n_trials=max_trials, callbacks=[spent])
    complete = optuna.trial.TrialState.COMPLETE
    return [{"number": t.number, "state": t.state.name.lower(), "value": t.value if t.state == complete else None,
             "user_attrs": dict(t.user_attrs)} for t in study.get_trials(deepcopy=False)]
