"""Optuna adapter: an objective with pruning, a search space, and ``run`` -> (DataFrame, Study).

Inside every Optuna trial the auxiliary-loss weights are *learned* by implicit differentiation
(:class:`~auxilearn_hpo.integrations.trial.Trial`); Optuna only searches the discrete outer
settings (how often to take a hyperstep, how many solver steps, which solver and weighting,
learning rates). This package trains nothing itself: it iterates :meth:`Trial.reports` and forwards
each epoch's ``val_metric`` to ``trial.report`` / ``trial.should_prune``.

Importing this package never needs Optuna; the first call of :func:`objective` or :func:`run`
raises an :class:`ImportError` naming ``pip install auxilearn-hpo[optuna]`` when it is missing.
The search space (:func:`default_space` and the spec classes, re-exported from
:mod:`~auxilearn_hpo.integrations.space`, which Ray Tune reads too) and :func:`suggest` work
without Optuna.

Example:
    >>> from auxilearn_hpo.integrations.optuna import run, IntRange
    >>> df, study = run("toy", n_trials=4, fixed={"epochs": 3})  # doctest: +SKIP
    >>> df, study = run(my_factory, n_trials=20, storage="sqlite:///study.db",  # doctest: +SKIP
    ...                 space={"update_every": IntRange(1, 20), "solver": ["neumann", "cg"]})

The package, one job per module (every name below is importable from the package itself):

==============  ================================================================================
module          what it holds
==============  ================================================================================
``trials``      :func:`objective` (and the user attributes every trial stores), :func:`suggest`,
                :data:`PRUNE_WARMUP`, :func:`warmup_epochs`
``study``       :func:`run`: create or resume a study, places shared by workers, the defaults'
                trial first
``storage``     :func:`resolve_storage`, :func:`open_storage`, :func:`storage_lock` (locks every
                worker shares), :func:`heartbeat_enabled`, :func:`fail_stale_trials`
``workers``     which process runs a trial and whether it lives: :func:`fail_dead_trials`
``reading``     :func:`records` (a study's trials as trial records, a failed one's reason),
                :func:`to_frame`
``extra``       :func:`import_optuna`: the optional dependency, or an error naming the extra
==============  ================================================================================

The helpers only benchmarks use (``optimize_within``, ``tpe_sampler``, ``no_pruner``,
``journal_storage``, ``count_finished``, ``quiet``) live in :mod:`auxilearn_hpo.bench.studies`;
the names here still find them.
"""
from __future__ import annotations

import importlib
from typing import Any

from auxilearn_hpo.integrations.space import Categorical, IntRange, LogUniform, Uniform, default_space, warm_space

from .extra import import_optuna
from .reading import failure_reason, records, to_frame
from .storage import (SQLITE_TIMEOUT, fail_stale_trials, heartbeat_enabled, open_storage, resolve_storage,
                      storage_lock)
from .study import run
from .trials import PRUNE_WARMUP, objective, suggest, warmup_epochs
from .workers import fail_dead_trials

#: Benchmark helpers, defined in :mod:`auxilearn_hpo.bench.studies` and found here by name.
BENCH_HELPERS = ("quiet", "journal_storage", "tpe_sampler", "no_pruner", "count_finished", "optimize_within")

__all__ = [
    "Categorical", "Uniform", "LogUniform", "IntRange", "default_space", "warm_space", "suggest", "objective", "run",
    "resolve_storage", "open_storage", "storage_lock", "SQLITE_TIMEOUT", "heartbeat_enabled", "fail_stale_trials",
    "fail_dead_trials", "records", "failure_reason", "to_frame", "PRUNE_WARMUP", "warmup_epochs", "import_optuna", *BENCH_HELPERS,
]


def __getattr__(name: str) -> Any:
    # The benchmark helpers moved to auxilearn_hpo.bench.studies (the layer above this one); the
    # names still resolve here, read by name so that this package never imports the bench.
    if name in BENCH_HELPERS:
        return getattr(importlib.import_module("auxilearn_hpo.bench.studies"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
