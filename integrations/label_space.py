"""The outer settings of learned auxiliary labels as one search space for both backends.

:func:`label_generator_space` lists them with the backend-neutral specs of
:mod:`auxilearn_hpo.integrations.optuna` (which need no Optuna to build); pass it as Optuna's
``space`` directly, or through :func:`to_tune` as Ray Tune's ``param_space``. Merge it into a
larger space with ``{**default_space(), **label_generator_space()}``.
"""
from __future__ import annotations

from typing import Any, Mapping

from .optuna import Categorical, IntRange, LogUniform, Uniform

__all__ = ["label_generator_space", "to_tune"]


def label_generator_space() -> dict[str, Any]:
    """The settings of a learned-label study (a new dict each call)::

        weighting        Categorical(["generator_ift", "generator_maxl"])  how the generator learns
        psi              Categorical([2, 3, 5, 8])        auxiliary sub-classes per class
        generator_width  Categorical([16, 32, 64, 128])   hidden units of the generator
        generator_depth  Categorical([0, 1, 2])           hidden layers of the generator
        aux_weight       LogUniform(0.1, 3.0)             weight of the generated-label loss
        aux_lr           LogUniform(1e-3, 0.3)            the generator's learning rate
        update_every     Categorical([1, 3, 5, 10])       generator step every this many steps
        solver           Categorical(["neumann", "cg"])   the IFT solver

    The defaults of :mod:`~auxilearn_hpo.tasks.digits_aux_labels` (``psi=5``, width 64,
    depth 1) and of the learner (``aux_lr=0.05``, ``update_every=3``, Neumann) lie inside it.
    """
    return {
        "weighting": Categorical(("generator_ift", "generator_maxl")),
        "psi": Categorical((2, 3, 5, 8)),
        "generator_width": Categorical((16, 32, 64, 128)),
        "generator_depth": Categorical((0, 1, 2)),
        "aux_weight": LogUniform(0.1, 3.0),
        "aux_lr": LogUniform(1e-3, 0.3),
        "update_every": Categorical((1, 3, 5, 10)),
        "solver": Categorical(("neumann", "cg")),
    }


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The same space as Ray Tune objects (``tune.choice``, ``tune.loguniform``, ...); values
    that are not specs pass through unchanged. Needs Ray (``pip install auxilearn-hpo[ray]``)."""
    from .ray_tune import _import_tune

    tune = _import_tune()
    out: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, Categorical):
            out[name] = tune.choice(list(spec.choices))
        elif isinstance(spec, LogUniform):
            out[name] = tune.loguniform(float(spec.low), float(spec.high))
        elif isinstance(spec, Uniform):
            out[name] = (tune.uniform(float(spec.low), float(spec.high)) if spec.step is None
                         else tune.quniform(float(spec.low), float(spec.high), float(spec.step)))
        elif isinstance(spec, IntRange):
            out[name] = (tune.lograndint(spec.low, spec.high + 1) if spec.log
                         else tune.qrandint(spec.low, spec.high, spec.step))
        else:
            out[name] = spec
    return out
