"""auxilearn-hpo: learn auxiliary-loss weights by implicit differentiation inside tuning trials.

The front door::

    from auxilearn_hpo import AuxiliaryLearner, LearnerConfig, make_task

    task = make_task("toy", seed=0)
    learner = AuxiliaryLearner.from_task(task, "linear", LearnerConfig(update_every=16))
    for report in learner.fit(3):
        print(report.epoch, report.weights)

The core (this package) depends on torch and pandas only; the Ray Tune and Optuna adapters
live in :mod:`auxilearn_hpo.integrations` and import their frameworks lazily. The names below
are imported on first use, so ``import auxilearn_hpo`` (and the command line's ``--help``)
does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Each public name and the module it comes from.
_EXPORTS: dict[str, str] = {
    "AuxiliaryLearner": "learner",
    "LearnerConfig": "learner_config",
    "EpochReport": "report",
    "Task": "task",
    "make_task": "tasks",
    "Weighting": "weightings",
    "make_weighting": "weightings",
    "weighting_names": "weightings",
    "MetaOptimizer": "optim",
    "Neumann": "hypergrad",
    "CG": "hypergrad",
    "Exact": "hypergrad",
    "make_solver": "hypergrad",
    "hypergradient": "hypergrad",
    "HypergradInfo": "hypergrad",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .hypergrad import CG, Exact, HypergradInfo, Neumann, hypergradient, make_solver
    from .learner import AuxiliaryLearner
    from .learner_config import LearnerConfig
    from .optim import MetaOptimizer
    from .report import EpochReport
    from .task import Task
    from .tasks import make_task
    from .weightings import Weighting, make_weighting, weighting_names


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
