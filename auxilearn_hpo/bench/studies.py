"""Optuna helpers only benchmarks use: short set-ups of studies around the shipped objective.

``bench search`` and ``bench storage`` run :func:`auxilearn_hpo.integrations.optuna.objective`
and :func:`~auxilearn_hpo.integrations.optuna.run` exactly as users do; these only choose the
sampler, the pruner, the storage and the stopping rule. (They were reachable as
``auxilearn_hpo.integrations.optuna.<name>``, which still finds them.)
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from auxilearn_hpo.integrations.optuna import import_optuna, resolve_storage

__all__ = ["quiet", "journal_storage", "tpe_sampler", "no_pruner", "count_finished", "optimize_within"]


def quiet() -> None:
    """Optuna's logger at WARNING and its experimental-feature warnings silenced."""
    optuna = import_optuna()
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def journal_storage(path: str | os.PathLike) -> Any:
    """An Optuna ``JournalStorage`` on the file ``path`` (several processes may share it)."""
    storages = import_optuna().storages
    return storages.JournalStorage(storages.journal.JournalFileBackend(os.fspath(path)))


def tpe_sampler(seed: int, n_startup_trials: int = 10) -> Any:
    """``TPESampler(seed=seed, n_startup_trials=n_startup_trials)``."""
    return import_optuna().samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)


def no_pruner() -> Any:
    """``NopPruner()``: every trial runs all its epochs."""
    return import_optuna().pruners.NopPruner()


def count_finished(study_name: str, storage: Any) -> int:
    """Trials of the stored study ``study_name`` that are COMPLETE or PRUNED."""
    optuna = import_optuna()
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
    optuna = import_optuna()
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
