"""``run``: create or resume a study and bring it to ``n_trials`` finished trials, shared by workers."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from auxilearn_hpo.integrations.space import default_point, default_space, flat_params
from auxilearn_hpo.integrations.trial import TaskSpec, check_config, resolve_task
from auxilearn_hpo.report import EpochReport

from .extra import import_optuna
from .reading import to_frame
from .storage import fail_stale_trials, heartbeat_enabled, open_storage, resolve_storage, storage_lock
from .trials import PRUNE_WARMUP, objective
from .workers import worker_gone, worker_info

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import pandas as pd

__all__ = ["run"]


def _direction(task: TaskSpec, fixed: Mapping[str, Any]) -> str:
    built = resolve_task(task, check_config(dict(fixed)))
    return "maximize" if built.mode == "max" else "minimize"


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
    return mine or worker_gone(place) or time.time() - float(place.get("at", 0.0)) > after


def _runs_defaults(trial: Any, defaults: Mapping[str, Any]) -> bool:
    """Whether ``trial`` ran the parameters ``defaults`` (a WAITING trial: will run, by its fixed ones)."""
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return all(name in params and params[name] == value for name, value in defaults.items())


def _defaults_due(study: Any, held: list[Any], defaults: Mapping[str, Any]) -> bool:
    """No trial that holds a place runs ``defaults`` (finished, running or waiting), and none that
    ran them failed of its own accord (an error, which a rerun would repeat): the trial that ran
    them was interrupted or killed, or none did. Then the next trial runs them."""
    if any(_runs_defaults(t, defaults) for t in held):
        return False
    failed = study.get_trials(deepcopy=False, states=(import_optuna().trial.TrialState.FAIL,))
    return not any("error" in t.user_attrs and _runs_defaults(t, defaults) for t in failed)


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
    sampler: "optuna.samplers.BaseSampler | None" = None,
    pruner: "optuna.pruners.BasePruner | None" = None,
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
) -> tuple["pd.DataFrame", "optuna.Study"]:
    """Create (or load) a study and bring it to ``n_trials`` finished trials; return its table.

    ``n_trials`` is the **total** for the study, not for this call: trials already COMPLETE or
    PRUNED in ``storage`` count, so rerunning an interrupted study runs only the rest, and
    several processes (or machines) calling ``run`` with the same ``storage`` and ``study_name``
    share the work and stop together with exactly ``n_trials`` finished. Each trial takes a
    place first: under a lock shared by all workers (a PostgreSQL advisory lock, an ``flock`` on
    a SQLite file) a worker counts the trials that hold a place (finished, RUNNING and WAITING)
    and, while fewer than ``n_trials`` do, enqueues one (``study.enqueue_trial({})``, or the shipped
    defaults: ``start_at_default``) and runs it.
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
            trial, and warm starts refine from it. A study whose defaults' trial never finished
            (interrupted, or its worker killed) runs them again as the first trial of the next
            call; one whose defaults' trial failed with an error of its own does not. ``False``:
            every trial is the sampler's.

    Returns:
        ``(frame, study)``: ``auxilearn_hpo.results.trials_frame(records(study))`` (one row per trial).

    Raises:
        ImportError: Optuna is missing. ValueError: unknown settings, a bad ``n_trials`` or
        ``storage``, or a stored study whose direction differs from the task's.
    """
    optuna = import_optuna()
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

    def guarded(trial: "optuna.Trial") -> float:
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
    with storage_lock(opened, f"places:{study_name}"):
        died_before = died()
        fail_stale_trials(study)
        free = n_trials - len(study.get_trials(deepcopy=False, states=held))
    attempts = [0]

    def take_place() -> str:
        """Under the study's lock: enqueue a trial if a place is free. Returns "run" (a WAITING
        trial is there to run), "wait" (others' trials are running) or "done"."""
        with storage_lock(opened, f"places:{study_name}"):
            fail_stale_trials(study)
            may_start = attempts[0] < free + len(died() - died_before)
            trials = study.get_trials(deepcopy=False, states=held)
            if may_start and len(trials) < n_trials:
                # marked, so that no other worker takes it for an orphan (see below) before this
                # worker's optimize() runs it
                defaults = first if first and _defaults_due(study, trials, first) else {}
                study.enqueue_trial(defaults, user_attrs={"place": {**worker_info(), "at": time.time()}})
                first.clear()  # looked up once per call: defaults that fail now wait for a rerun
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
    return to_frame(study), study
