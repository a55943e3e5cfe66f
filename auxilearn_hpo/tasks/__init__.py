"""Shipped, offline benchmark tasks: every one builds a :class:`~auxilearn_hpo.task.Task` from a seed.

==================  ===========================================================================
name                what it is
==================  ===========================================================================
``toy``             2-D linear regression; a helpful (same optimum, low noise) and a harmful
                    (other optimum) auxiliary — the AuxiLearn illustration
``graded_noise``    10-D linear regression; 16 auxiliaries sharing the optimum with increasing
                    label noise, the last ones pure noise
``scaled_regression``  the GradNorm toy in low data: tasks ``sigma_i tanh((B + eps_i) x)`` with
                    scales 1..100 and a few harmful tasks from an unrelated basis
``digits``          few-shot ``load_digits`` classification with pixel-attribute and pure-noise
                    auxiliary regressions (needs ``pip install auxilearn-hpo[digits]``)
``fewshot_digits``  ``load_digits`` with 4 labelled images per class in a 580-image pool; helpful
                    class-attribute auxiliaries (``closed_loop``, ``ge5``) and harmful
                    random-label ones (needs ``pip install auxilearn-hpo[digits]``)
``digits_aux_labels``  ``load_digits`` with 8 labelled images per class and no auxiliary task
                    given: one is learned (a label generator, ``Task.label_generator``), with
                    hand-designed class attributes to compare (needs ``pip install auxilearn-hpo[digits]``)
==================  ===========================================================================

No task downloads anything; the same seed gives the same data, split, loader order and initial
model. Each module's docstring lists sizes, auxiliaries, which of them help or harm, and shapes.

Example:
    >>> task = make_task("toy", seed=0)
    >>> task.task_names
    ['main', 'helpful', 'harmful']
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ..task import Task
from . import digits, digits_aux_labels, fewshot_digits, graded_noise, scaled_regression, toy

__all__ = ["BENCHMARKS", "make_task", "names"]

#: Benchmark name -> factory ``factory(seed=0, **options) -> Task``.
BENCHMARKS: dict[str, Callable[..., Task]] = {
    "toy": toy.make,
    "graded_noise": graded_noise.make,
    "scaled_regression": scaled_regression.make,
    "digits": digits.make,
    "fewshot_digits": fewshot_digits.make,
    "digits_aux_labels": digits_aux_labels.make,
}


def names() -> list[str]:
    """The names :func:`make_task` accepts."""
    return list(BENCHMARKS)


def make_task(name: str, *, seed: int = 0, **options: Any) -> Task:
    """Build the benchmark task ``name`` with ``seed`` and task-specific ``options``.

    Raises:
        ValueError: ``name`` is unknown (the message lists the known names).
        TypeError: an option the task does not take (the message names it and the accepted ones).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {names()}")
    factory = BENCHMARKS[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "seed"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"benchmark {name!r} got unknown option(s) {unknown}; it accepts {accepted}")
    return factory(seed, **options)
