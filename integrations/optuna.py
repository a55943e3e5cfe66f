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
    >>> df, study = run(my_factory, n_trials=20, storage="study.db",  # doctest: +SKIP
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
``test_metric``         main-task test metric after the last epoch (``None`` when pruned)
``higher_is_better``    1.0 when the task's mode is ``"max"``, else 0.0
``metric_name``         e.g. ``"mse"`` or ``"accuracy"``
``error``               one line: why the trial failed (an exception caught by ``catch``, or
                        the epoch whose metric or weights became non-finite)
``interrupted``         ``True`` when Ctrl-C (``KeyboardInterrupt``) stopped the trial; Optuna
                        records it FAIL, so a rerun replaces it; results tables say ``interrupted``
======================  =====================================================================

The trial's value is the **final** epoch's ``val_metric`` (what pruners compared at the last
step); ``best_metric`` keeps the best epoch's.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.integrations.space import SPECS, Categorical, IntRange, LogUniform, Uniform, default_space
from auxilearn_hpo.integrations.space import suggest as space_suggest
from auxilearn_hpo.integrations.trial import Trial, TaskSpec, check_config, resolve_task
from auxilearn_hpo.records import TrialRecord, flatten
from auxilearn_hpo.report import EpochReport

if TYPE_CHECKING:  # pragma: no cover
    import optuna as _optuna
    import pandas as pd

__all__ = [
    "Categorical", "Uniform", "LogUniform", "IntRange", "default_space", "suggest", "objective", "run",
    "resolve_storage", "fail_dead_trials", "records",
]

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
    without a ``worker`` attribute (a trial just starting elsewhere), are left alone: for
    several machines use Optuna's heartbeat (``RDBStorage(url, heartbeat_interval=60)``).
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


def _store(trial: Any, run: Trial, reports: list[EpochReport]) -> None:
    """Write what is known about the trial so far as user attributes (see the module docstring)."""
    if not reports:
        return
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
        "test_metric": last.test_metric,
        "higher_is_better": last.higher_is_better,
        "metric_name": run.metric_name,
    }
    for key, value in attrs.items():
        trial.set_user_attr(key, _json_safe(value))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:500] if text else type(err).__name__


def objective(
    task: TaskSpec = "toy", space: Mapping[str, Any] | None = None, *, fixed: Mapping[str, Any] | None = None,
    catch: Iterable[type[Exception]] | type[Exception] = (),
) -> Callable[["_optuna.Trial"], float]:
    """An Optuna objective: suggest outer settings, train one :class:`Trial`, report and prune.

    Every epoch reports ``val_metric`` with ``trial.report(value, epoch)`` (epochs count from 1)
    and raises ``optuna.TrialPruned`` when ``trial.should_prune()``; the user attributes of the
    module docstring are written before it returns, is pruned or fails.

    Args:
        task: a benchmark name (:func:`auxilearn_hpo.tasks.names`) or a factory
            ``config -> auxilearn_hpo.Task`` (called once per trial with the full config).
        space: setting name -> spec (see :func:`suggest`); ``None``: :func:`default_space`.
        fixed: settings every trial gets (``{"epochs": 5, "seed": 1}``); they override the same
            names in ``space``, which are then not searched.
        catch: exceptions (raised while building or training the trial) that fail only this
            trial: the objective stores their one-line message as ``user_attrs["error"]`` and
            returns NaN, which Optuna records as FAIL (one log line, no traceback), and the
            study goes on.

    Returns:
        ``objective(trial) -> float``: the **final** epoch's validation metric. A trial stops at
        the first epoch whose metric or weights are NaN or infinite (a diverged trial): that
        epoch is stored, ``user_attrs["error"]`` says which values, and NaN is returned, which
        Optuna records as FAIL. ``KeyboardInterrupt`` sets ``user_attrs["interrupted"]`` and
        propagates.

    Raises:
        ImportError: Optuna is not installed. ValueError: unknown setting names (named in the
        message). At trial time, ValueError when the study's direction disagrees with the task's
        mode.
    """
    optuna = _import_optuna()
    fixed = dict(fixed or {})
    space = {k: v for k, v in (default_space() if space is None else space).items() if k not in fixed}
    _check_names(space, fixed)
    label = _task_label(task)
    caught = tuple(catch) if isinstance(catch, Iterable) else (catch,)

    def _objective(trial: "_optuna.Trial") -> float:
        trial.set_user_attr("worker", _worker())
        config = {**suggest(trial, space), **fixed}
        trial.set_user_attr("config", _json_safe(config))
        run: Trial | None = None
        reports: list[EpochReport] = []
        try:
            run = Trial(task, config)
            study = getattr(trial, "study", None)  # a FixedTrial has none
            if study is not None and len(study.directions) == 1:
                wanted = "maximize" if run.mode == "max" else "minimize"
                if study.direction.name.lower() != wanted:
                    raise ValueError(f"task {label!r} has mode {run.mode!r} ({run.metric_name}), so the study "
                                     f"must {wanted}, but it is set to {study.direction.name.lower()}")
            for report in run.reports():
                reports.append(report)
                bad = report.non_finite()
                if bad:  # diverged: training on would only waste the budget
                    trial.set_user_attr("error", f"diverged at epoch {report.epoch}: {', '.join(bad)} not finite")
                    return math.nan
                value = report.val_metric
                trial.report(value, report.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {report.epoch} with {run.metric_name}={value:.6g}")
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
            if run is not None:
                _store(trial, run, reports)
        if not reports:
            raise ValueError(f"the trial ran no epoch (epochs={run.epochs}); nothing to return")
        return reports[-1].val_metric

    _objective.__qualname__ = f"objective[{label}]"
    return _objective


# ---------------------------------------------------------------------------------------------- run
def resolve_storage(storage: Any) -> Any:
    """What :func:`run` passes to ``optuna.create_study(storage=...)``.

    ``None`` -> in memory; a URL (``"sqlite:///study.db"``, ``"postgresql://..."``) as it is; a
    path ending ``.log`` or ``.journal`` -> ``JournalStorage(JournalFileBackend(path))`` (fast,
    several processes may share it); a path ending ``.db``, ``.sqlite`` or ``.sqlite3`` -> an
    SQLite URL; an Optuna storage object as it is.
    """
    optuna = _import_optuna()
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, (str, os.PathLike)):
        text = os.fspath(storage)
        if "://" in text:
            return text
        if text.endswith((".log", ".journal")):
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(text))
        if text.endswith((".db", ".sqlite", ".sqlite3")):
            return f"sqlite:///{os.path.abspath(text)}"
    raise ValueError(f"storage must be None, a database URL, a path ending .log/.journal (JournalStorage) or "
                     f".db/.sqlite (SQLite), or an Optuna storage object; got {storage!r}")


def _open_storage(storage: Any) -> Any:
    """A SQLite URL becomes an ``RDBStorage`` made while holding an exclusive lock on the database
    file: several processes starting on a new file would otherwise all create its tables, and all
    but one fail with ``table ... already exists``. Anything else is returned as it is."""
    if not (isinstance(storage, str) and storage.startswith("sqlite:///")):
        return storage
    path = storage[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return storage
    optuna = _import_optuna()
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return optuna.storages.RDBStorage(storage)
    with open(path, "ab") as handle:  # an empty file is an empty SQLite database
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            return optuna.storages.RDBStorage(storage)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    """A trial that started after the study already held ``n_trials`` finished or running trials."""


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
) -> tuple["pd.DataFrame", "_optuna.Study"]:
    """Create (or load) a study and bring it to ``n_trials`` finished trials; return its table.

    ``n_trials`` is the **total** for the study, not for this call: trials already COMPLETE or
    PRUNED in ``storage`` count (and RUNNING ones of live workers, which will finish), so
    rerunning an interrupted study runs only the rest, and
    several processes calling ``run`` with the same ``storage`` and ``study_name`` share the work
    and stop together at ``n_trials`` (a ``MaxTrialsCallback`` that also counts RUNNING trials;
    a trial that still starts in a race is ended FAIL at once, before training, and not counted).
    Trials left RUNNING by a killed process on this host are marked FAIL first
    (:func:`fail_dead_trials`). FAIL trials never count, so a rerun replaces them.

    Args:
        task: a benchmark name or a factory ``config -> Task`` (see :func:`objective`).
        n_trials: total finished (COMPLETE or PRUNED) trials the study should hold.
        space, fixed: see :func:`objective`.
        storage: ``None`` (in memory), a URL, a ``.log`` path (JournalStorage), a ``.db`` path
            (SQLite) or a storage object (see :func:`resolve_storage`).
        study_name: the study to create or resume.
        sampler: default ``TPESampler(seed=s)`` with ``s = 0`` for a new study and the number of
            trials already stored when resuming (so a resumed study does not repeat its first
            configs). Several workers that start at the same moment on a new study would share
            ``s = 0``: give each its own ``TPESampler(seed=worker_index)``.
        pruner: default ``MedianPruner(n_warmup_steps=1)`` (never prunes at epoch 1).
        n_jobs, timeout: as ``Study.optimize`` (threads; seconds for this call).
        direction: ``"minimize"``/``"maximize"``; ``None``: from the task's mode (this builds the
            task once with the ``fixed`` settings to read it).
        catch: exceptions that fail a trial without stopping the study: the objective records
            their message (see :func:`objective`) and the next trial starts.

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
    fixed = dict(fixed or {})
    catch = tuple(catch) if isinstance(catch, Iterable) else (catch,)
    func = objective(task, space, fixed=fixed, catch=catch)
    if direction is None:
        direction = _direction(task, fixed)
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize', 'maximize' or None, got {direction!r}")
    study = optuna.create_study(
        storage=_open_storage(resolve_storage(storage)), study_name=study_name, direction=direction,
        load_if_exists=True,
        pruner=pruner if pruner is not None else optuna.pruners.MedianPruner(n_warmup_steps=1),
        sampler=sampler if sampler is not None else optuna.samplers.TPESampler(seed=0),
    )
    if len(study.directions) != 1 or study.direction.name.lower() != direction:
        raise ValueError(f"study {study_name!r} in this storage was created with direction(s) "
                         f"{[d.name.lower() for d in study.directions]}, but this task needs {direction!r}")
    n_stored = len(study.get_trials(deepcopy=False))
    if sampler is None and n_stored:  # resuming: do not replay the first trials' draws
        study.sampler = optuna.samplers.TPESampler(seed=n_stored)

    fail_dead_trials(study)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    counted = (*finished, TrialState.RUNNING)
    remaining = n_trials - len(study.get_trials(deepcopy=False, states=counted))  # RUNNING: other workers'

    def guarded(trial: "_optuna.Trial") -> float:
        ahead = [t for t in study.get_trials(deepcopy=False, states=counted) if t.number < trial.number]
        if len(ahead) >= n_trials:
            study.stop()
            raise _Surplus(f"trial {trial.number} is surplus: the study already holds {n_trials} finished or "
                           f"running trials")
        return func(trial)

    def fail_dead(study_: "_optuna.Study", _trial: Any) -> None:
        fail_dead_trials(study_)

    if remaining > 0:
        optimize_logger = logging.getLogger("optuna.study._optimize")
        quiet = _InterruptLogFilter()
        optimize_logger.addFilter(quiet)
        try:
            study.optimize(
                guarded, n_trials=remaining, timeout=timeout, n_jobs=n_jobs, catch=(_Surplus, *catch),
                callbacks=[fail_dead, optuna.study.MaxTrialsCallback(n_trials, states=counted)],
            )
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
    and ``user_attrs["config"]``; a trial of someone else's objective gives its intermediate
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
