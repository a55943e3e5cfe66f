"""Every weighting by name: the learned ones and the baselines behind one factory.

A tuning study treats the weighting as one categorical outer setting::

    make_weighting("nonlinear", n_tasks=4)   # AuxiLearn, learned by hypergradients
    make_weighting("gradnorm", n_tasks=4)    # a baseline
"""
from __future__ import annotations

from typing import Any, Sequence

from .alignment import GradientAlignment
from .baselines import BASELINES
from .combiners import ConvCombiner, LinearCombiner, NonlinearCombiner
from .label_generation import GENERATOR_WEIGHTINGS
from .base import Weighting

__all__ = ["LEARNED", "DEFAULT_OPTIONS", "WEIGHTINGS", "make_weighting", "weighting_names"]

#: Learned weightings: AuxiLearn's combiners (parameters learned by implicit differentiation)
#: and gradient alignment (its own meta-gradient, no Hessian).
LEARNED: dict[str, type[Weighting]] = {
    "linear": LinearCombiner,
    "nonlinear": NonlinearCombiner,
    "conv": ConvCombiner,
    "alignment": GradientAlignment,
}
#: Options :func:`make_weighting` applies unless the caller overrides them: the learned
#: linear weights live in log space, relative to the main task (fixed at 1), on calibrated
#: loss scales, and the auxiliaries start together at 0.45 of the main task, i.e. close to
#: single-task training, so that a hypergradient that cannot tell helpful from harmful tasks
#: (tiny auxiliary sets, over-parametrised models) costs little; they ramp in over the first
#: quarter of the run (``ramp=0.25``) while their weights are learned. The nonlinear combiner
#: starts at 0.3. The runs behind these values: docs/experiments.md, "The weights' dynamics".
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "linear": {"positive": "exp", "normalize": "main", "scale_losses": True, "init_total": 0.45, "ramp": 0.25},
    "nonlinear": {"normalize": "main", "scale_losses": True, "init_total": 0.3},
}
#: Every weighting: the learned ones first, then the baselines, then the learned-label
#: weightings (which need a generator: ``make_weighting("generator_ift", 2, generator=...)``).
WEIGHTINGS: dict[str, type[Weighting]] = {**LEARNED, **BASELINES, **GENERATOR_WEIGHTINGS}


def weighting_names() -> list[str]:
    """Names accepted by :func:`make_weighting`."""
    return list(WEIGHTINGS)


def make_weighting(
    name: str, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, **options: Any
) -> Weighting:
    """Build the weighting called ``name`` for ``n_tasks`` tasks.

    Raises:
        ValueError: ``name`` is unknown (the message lists the known names).
        TypeError: an option the weighting does not take.
    """
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; choose one of {weighting_names()}")
    try:
        return WEIGHTINGS[name](n_tasks, main_task, task_names, **{**DEFAULT_OPTIONS.get(name, {}), **options})
    except TypeError as err:
        raise TypeError(f"weighting {name!r}: {err}") from None
