"""auxilearn-hpo: learn auxiliary-loss weights by implicit differentiation inside tuning trials.

The core (this package) depends on torch and pandas only; the Ray Tune and Optuna adapters
live in :mod:`auxilearn_hpo.integrations` and import their frameworks lazily.
"""
from .hypergrad import HypergradInfo, hypergradient
from .optim import MetaOptimizer
from .task import Task
from .weighting import Weighting

__version__ = "0.1.0"
__all__ = ["MetaOptimizer", "hypergradient", "HypergradInfo", "Task", "Weighting", "__version__"]
