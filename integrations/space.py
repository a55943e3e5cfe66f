"""The one outer search space, read by both backends.

A space maps an outer setting (a key of :data:`~auxilearn_hpo.integrations.trial.OUTER_SETTINGS`)
to a spec: :class:`Categorical`, :class:`Uniform`, :class:`LogUniform` or :class:`IntRange`
(framework-free, so the space needs neither Optuna nor Ray); a list or tuple is shorthand for
``Categorical``; anything else is a fixed value. Optuna draws from it with :func:`suggest`
(define-by-run, ``trial.suggest_*``), Ray Tune with :func:`to_tune`, so both search the same
settings over the same ranges::

    space = default_space()
    config = suggest(optuna_trial, space)          # inside an Optuna objective
    param_space = to_tune(space)                   # tune.Tuner(..., param_space=param_space)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = [
    "Categorical", "Uniform", "LogUniform", "IntRange", "SPECS", "default_space", "label_generator_space", "suggest",
    "to_tune",
]

_CHOICE_TYPES = (type(None), bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (``None``, bool, int, float or str, as Optuna stores them)."""

    choices: tuple

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices:
            raise ValueError("Categorical needs at least one choice")
        bad = [c for c in choices if not isinstance(c, _CHOICE_TYPES)]
        if bad:
            raise TypeError(f"Categorical choices must be None, bool, int, float or str; got {bad!r}")
        object.__setattr__(self, "choices", choices)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def tune(self, tune: Any) -> Any:
        return tune.choice(list(self.choices))


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float in ``[low, high]``, optionally on a grid of ``step``."""

    low: float
    high: float
    step: float | None = None

    def __post_init__(self) -> None:
        if not float(self.low) <= float(self.high):
            raise ValueError(f"Uniform needs low <= high, got low={self.low!r}, high={self.high!r}")
        if self.step is not None and not float(self.step) > 0:
            raise ValueError(f"Uniform step must be > 0 or None, got {self.step!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step)

    def tune(self, tune: Any) -> Any:
        if self.step is None:
            return tune.uniform(float(self.low), float(self.high))
        n = int(round((float(self.high) - float(self.low)) / float(self.step)))  # Optuna's grid: low + k * step
        return tune.choice([float(self.low) + k * float(self.step) for k in range(n + 1)])


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A float in ``[low, high]``, uniform in ``log`` (``0 < low <= high``)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < float(self.low) <= float(self.high):
            raise ValueError(f"LogUniform needs 0 < low <= high, got low={self.low!r}, high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, float(self.low), float(self.high), log=True)

    def tune(self, tune: Any) -> Any:
        return tune.loguniform(float(self.low), float(self.high))


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An int in ``[low, high]`` (both included), every ``step``, or uniform in log with ``log=True``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def __post_init__(self) -> None:
        for field in ("low", "high", "step"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"IntRange {field} must be an int, got {value!r}")
        if self.low > self.high or self.step < 1:
            raise ValueError(f"IntRange needs low <= high and step >= 1, got {self.low}, {self.high}, {self.step}")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError(f"IntRange(log=True) needs low >= 1 and step == 1, got low={self.low}, step={self.step}")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def tune(self, tune: Any) -> Any:
        if self.log:
            return tune.lograndint(self.low, self.high + 1)
        if self.step == 1:
            return tune.randint(self.low, self.high + 1)
        return tune.choice(list(range(self.low, self.high + 1, self.step)))  # Optuna's grid: low + k * step


#: The spec classes.
SPECS = (Categorical, Uniform, LogUniform, IntRange)


def default_space() -> dict[str, Any]:
    """The outer settings both backends search by default (a new dict each call)::

        update_every  Categorical([1, 3, 5, 10])     hyperstep every this many training steps
        steps         Categorical([1, 3, 5, 10])     Neumann terms or CG iterations
        solver        Categorical(["neumann", "cg"])
        weighting     Categorical(["linear", "nonlinear"])
        aux_lr        LogUniform(1e-3, 0.3)          learning rate of the loss weights

    The learner's defaults (``update_every=3, steps=3, aux_lr=0.05``) lie inside it; the Neumann
    step is not searched: ``alpha="auto"`` follows the Hessian's largest eigenvalue.
    """
    return {
        "update_every": Categorical((1, 3, 5, 10)),
        "steps": Categorical((1, 3, 5, 10)),
        "solver": Categorical(("neumann", "cg")),
        "weighting": Categorical(("linear", "nonlinear")),
        "aux_lr": LogUniform(1e-3, 0.3),
    }


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


def as_spec(value: Any) -> Any:
    """A list or tuple becomes :class:`Categorical`; specs and fixed values pass through."""
    return Categorical(tuple(value)) if isinstance(value, (list, tuple)) else value


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one config from ``space`` with ``trial.suggest_categorical/float/int`` (Optuna's
    define-by-run interface); fixed values go into the config as they are (not as parameters)."""
    config: dict[str, Any] = {}
    for name, spec in space.items():
        spec = as_spec(spec)
        config[name] = spec.suggest(trial, name) if isinstance(spec, SPECS) else spec
    return config


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The same space as a Ray Tune ``param_space`` (``tune.choice``, ``tune.loguniform``, ...);
    fixed values and Tune's own sampling objects pass through."""
    from ray import tune

    return {name: (as_spec(spec).tune(tune) if isinstance(as_spec(spec), SPECS) else spec)
            for name, spec in space.items()}
