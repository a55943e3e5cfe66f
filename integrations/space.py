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
    "Categorical", "Uniform", "LogUniform", "IntRange", "SPECS", "CONDITIONAL_OPTIONS", "PBT_MUTABLE", "HOLD_GAINS",
    "default_space", "warm_space",
    "label_generator_space", "names", "pbt_mutations", "suggest", "to_tune", "shipped_defaults", "default_point",
    "flat_params", "in_spec",
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

        weighting          Categorical(["linear", "nonlinear"])
        aux_lr             LogUniform(1e-3, 1.0)        learning rate of the loss weights (3 decades)
        update_every       Categorical([1, 3, 8, 16])   hyperstep every this many training steps
        solver             Categorical(["neumann", "cg"])
        steps              Categorical([1, 3, 5, 10])   Neumann terms or CG iterations
        weighting_options
          positive         Categorical(["exp", "clamp"])  parametrisation: log-space or plain weights
          normalize        Categorical(["main", None])    main weight fixed at 1, or a free overall scale
          init_total       LogUniform(0.03, 3.0)          where the auxiliaries start, in total

    It contains the learner's defaults, which do well on every shipped benchmark (``"linear"``
    with ``positive="exp", normalize="main", init_total=0.45``, ``update_every=16``, ``steps=3``,
    ``solver="neumann"``, ``aux_lr=0.26``), and around them the levers that decide whether
    learned weights pay off in 20-60 hypersteps: a meta step from barely moving to crossing
    decades, plain or log-space weights, a fixed or free overall scale, the starting weights.
    ``positive`` applies to ``"linear"`` only (the nonlinear combiner keeps its network weights
    non-negative by clamping); :class:`~auxilearn_hpo.integrations.trial.Trial` passes it to
    the weightings that take it (:data:`CONDITIONAL_OPTIONS`). The Neumann step is not searched:
    ``alpha="auto"`` follows the Hessian's largest eigenvalue.

    Settings a Population Based Training run may change mid-trial (the learner state carries
    over) are :data:`PBT_MUTABLE`; the others stay as first drawn.
    """
    return {
        "weighting": Categorical(("linear", "nonlinear")),
        "aux_lr": LogUniform(1e-3, 1.0),
        "update_every": Categorical((1, 3, 8, 16)),
        "solver": Categorical(("neumann", "cg")),
        "steps": Categorical((1, 3, 5, 10)),
        "weighting_options": {
            "positive": Categorical(("exp", "clamp")),
            "normalize": Categorical(("main", None)),
            "init_total": LogUniform(0.03, 3.0),
        },
    }


#: ``hold_gain`` choices of :func:`warm_space`: ``None`` learns on from the warm start; a number
#: holds the loaded weights fixed with every auxiliary weight times it.
HOLD_GAINS = (None, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def warm_space() -> dict[str, Any]:
    """:func:`default_space` for a sequential search that builds on its own trials::

        warm_start   True                         start from the best finished trial's weights
        hold_gain    Categorical(HOLD_GAINS)      None: learn on; g: hold them, auxiliaries x g

    A trial with ``hold_gain=None`` learns its weights from the best earlier trial's (or from
    the start, in the first trial); a trial with a number trains with the best learned weights
    held fixed and every auxiliary weight scaled by it (no hypersteps, so it costs about what a
    fixed-weight trial costs). The hypergradients decide which auxiliaries help, and the outer
    search their overall scale, where a trial's greedy hypergradients stop short of the best one
    (``docs/experiments.md``, "The outer search"). Held weights come from the best ``"linear"`` trial, whatever
    weighting the held trial drew. The Optuna ``auxilearn`` approach of ``bench search`` uses
    this space (the Optuna objective never prunes a held trial). With Ray Tune, run it without
    ASHA (``ray_tune.run(..., scheduler=None)``): ASHA stops trials by their early epochs, where
    held trials trail learning ones. Population Based Training carries learner states between
    members instead (use :func:`default_space`). A held trial that would repeat a finished one
    is pruned at once without training (Optuna: ``user_attrs["twin_of"]``), which also steers
    TPE away from drawing the same gain again, so a study of ``n_trials`` trains fewer than that.
    """
    return {**default_space(), "warm_start": True, "hold_gain": Categorical(HOLD_GAINS)}


def label_generator_space() -> dict[str, Any]:
    """The settings of a learned-label study (a new dict each call)::

        weighting        Categorical(["generator_ift", "generator_maxl"])  how the generator learns
        psi              Categorical([2, 3, 5, 8])        auxiliary sub-classes per class
        generator_width  Categorical([16, 32, 64, 128])   hidden units of the generator
        generator_depth  Categorical([0, 1, 2])           hidden layers of the generator
        aux_weight       LogUniform(0.1, 3.0)             weight of the generated-label loss
        aux_lr           LogUniform(1e-3, 0.3)            the generator's learning rate
        update_every     Categorical([1, 3, 8, 16])       generator step every this many steps
        solver           Categorical(["neumann", "cg"])   the IFT solver

    The defaults of :mod:`~auxilearn_hpo.tasks.digits_aux_labels` (``psi=5``, width 64,
    depth 1) and of the learner (``aux_lr=0.26``, ``update_every=16``, Neumann) lie inside it.
    """
    return {
        "weighting": Categorical(("generator_ift", "generator_maxl")),
        "psi": Categorical((2, 3, 5, 8)),
        "generator_width": Categorical((16, 32, 64, 128)),
        "generator_depth": Categorical((0, 1, 2)),
        "aux_weight": LogUniform(0.1, 3.0),
        "aux_lr": LogUniform(1e-3, 0.3),
        "update_every": Categorical((1, 3, 8, 16)),
        "solver": Categorical(("neumann", "cg")),
    }

#: ``weighting_options`` keys that only some weightings take: key -> those weightings.
#: :class:`~auxilearn_hpo.integrations.trial.Trial` leaves such a key out for the others.
CONDITIONAL_OPTIONS: dict[str, frozenset[str]] = {"positive": frozenset({"linear"})}

#: Outer settings Population Based Training may perturb on exploit: the learner state of the
#: donor (model, weighting, optimizers) loads into a trial with the new values. A change of
#: ``weighting`` or its options would not (another parametrisation), nor of ``epochs`` or ``seed``.
#: Fixed weights (``weighting_options/weights/<task>``, a buffer outside the state) may change too.
PBT_MUTABLE: frozenset[str] = frozenset({"aux_lr", "update_every", "steps", "solver", "lr", "alpha", "damping",
                                         "weighting_options/weights"})


def shipped_defaults(weighting: str = "linear") -> dict[str, Any]:
    """The settings a trial gets when its config names none: ``weighting``, every
    :class:`~auxilearn_hpo.learner.LearnerConfig` field at its default, ``weighting_options``
    at :data:`~auxilearn_hpo.weightings.DEFAULT_OPTIONS` of ``weighting`` and ``hold_gain=None`` (settings whose default is
    "the task's", such as ``lr`` and ``epochs``, are left out)."""
    from auxilearn_hpo.learner_config import LearnerConfig
    from auxilearn_hpo.weightings import DEFAULT_OPTIONS

    learner = {f.name: getattr(LearnerConfig(), f.name) for f in dataclasses.fields(LearnerConfig)}
    return {"weighting": weighting, **learner, "weighting_options": dict(DEFAULT_OPTIONS.get(weighting, {})),
            "hold_gain": None}  # a trial learns its weights


def in_spec(spec: Any, value: Any) -> bool:
    """Whether ``value`` is a possible draw of ``spec`` (a spec of this module)."""
    if isinstance(spec, Categorical):
        return any(type(c) is type(value) and c == value for c in spec.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(spec, IntRange):
        return isinstance(value, int) and spec.low <= value <= spec.high and (value - spec.low) % spec.step == 0
    if isinstance(spec, (Uniform, LogUniform)):
        on_grid = getattr(spec, "step", None) is None or abs(
            (value - spec.low) / spec.step - round((value - spec.low) / spec.step)) < 1e-9
        return float(spec.low) <= value <= float(spec.high) and on_grid
    return False


def default_point(space: Mapping[str, Any], contains: Any = None) -> dict[str, Any]:
    """The shipped default of every searched setting of ``space`` that can take it, nested like
    ``space``: the config to try first (Optuna: ``study.enqueue_trial(flat_params(point))``; Ray
    Tune: ``points_to_evaluate=[point]``). Settings without a default here, or whose default lies
    outside their range, are left out (the search draws them).

    ``weighting_options`` defaults follow the point's weighting (``"linear"`` when the space
    allows it, else a fixed one). ``contains(spec, value)``: membership for specs other than this
    module's (the Ray adapter passes one for Tune's sampling objects); they are skipped without it.

    Example:
        >>> point = default_point(default_space())
        >>> point["weighting"], point["update_every"], point["weighting_options"]["init_total"]
        ('linear', 16, 0.45)
    """
    def inside(spec: Any, value: Any) -> bool:
        spec = as_spec(spec)
        if isinstance(spec, SPECS):
            return in_spec(spec, value)
        return bool(contains(spec, value)) if contains is not None else False

    weighting = space.get("weighting", "linear")
    if isinstance(weighting, str):  # fixed
        defaults = shipped_defaults(weighting)
    else:
        defaults = shipped_defaults("linear") if inside(weighting, "linear") else {}
    point: dict[str, Any] = {}
    for name, spec in space.items():
        if name not in defaults:
            continue
        if isinstance(spec, Mapping) and isinstance(defaults[name], Mapping):
            inner = {k: defaults[name][k] for k, sub in spec.items()
                     if k in defaults[name] and not isinstance(sub, Mapping) and inside(sub, defaults[name][k])}
            if inner:
                point[name] = inner
        elif not isinstance(spec, Mapping) and inside(spec, defaults[name]):
            point[name] = defaults[name]
    return point


def flat_params(point: Mapping[str, Any]) -> dict[str, Any]:
    """``point`` with nested settings flattened to ``"outer/inner"`` names, as :func:`suggest`
    names Optuna's parameters (``{"weighting_options": {"init_total": 0.45}}`` ->
    ``{"weighting_options/init_total": 0.45}``)."""
    return dict(_items(point))


def _items(space: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``(name, spec)`` pairs with nested dicts of specs flattened to ``"outer/inner"`` names."""
    found: list[tuple[str, Any]] = []
    for name, spec in space.items():
        if isinstance(spec, Mapping):
            found += _items(spec, f"{prefix}{name}/")
        else:
            found.append((f"{prefix}{name}", spec))
    return found


def names(space: Mapping[str, Any]) -> list[str]:
    """The parameter names of ``space``: top-level settings, nested ones as ``"outer/inner"``
    (``"weighting_options/init_total"``), as Optuna records them and Ray flattens them."""
    return [name for name, _ in _items(space)]


def pbt_mutations(space: Mapping[str, Any]) -> dict[str, Any]:
    """The searched entries of ``space`` that Population Based Training may perturb
    (:data:`PBT_MUTABLE`, nested as in ``space``), as specs; fixed values are left out."""

    def keep(sub: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, spec in sub.items():
            path = f"{prefix}{name}"
            if isinstance(spec, Mapping):
                if any(path == m or path.startswith(m + "/") or m.startswith(path + "/") for m in PBT_MUTABLE):
                    inner = keep(spec, path + "/")
                    if inner:
                        out[name] = inner
            elif isinstance(spec if prefix else as_spec(spec), SPECS) and any(
                    path == m or path.startswith(m + "/") for m in PBT_MUTABLE):
                out[name] = spec if prefix else as_spec(spec)
        return out

    return keep(space, "")


def as_spec(value: Any) -> Any:
    """A list or tuple becomes :class:`Categorical`; specs and fixed values pass through."""
    return Categorical(tuple(value)) if isinstance(value, (list, tuple)) else value


def suggest(trial: Any, space: Mapping[str, Any]) -> dict[str, Any]:
    """Draw one config from ``space`` with ``trial.suggest_categorical/float/int`` (Optuna's
    define-by-run interface); fixed values go into the config as they are (not as parameters).
    A nested dict of specs (``{"weighting_options": {"init_total": LogUniform(...)}}``) comes
    back nested, its parameters named ``"weighting_options/init_total"``."""
    config: dict[str, Any] = {}
    for name, spec in space.items():
        config[name] = _suggest_one(trial, name, spec)
    return config


def _suggest_one(trial: Any, name: str, spec: Any, nested: bool = False) -> Any:
    if isinstance(spec, Mapping):
        return {key: _suggest_one(trial, f"{name}/{key}", sub, True) for key, sub in spec.items()}
    spec = spec if nested else as_spec(spec)  # inside a dict, a list is a value (e.g. weights), not choices
    return spec.suggest(trial, name) if isinstance(spec, SPECS) else spec


def to_tune(space: Mapping[str, Any]) -> dict[str, Any]:
    """The same space as a Ray Tune ``param_space`` (``tune.choice``, ``tune.loguniform``, ...);
    fixed values and Tune's own sampling objects pass through; nested dicts stay nested (Tune
    samples inside them and names the columns ``config/outer/inner``)."""
    from ray import tune

    def convert(spec: Any, nested: bool) -> Any:
        if isinstance(spec, Mapping):
            return {k: convert(v, True) for k, v in spec.items()}
        spec = spec if nested else as_spec(spec)
        return spec.tune(tune) if isinstance(spec, SPECS) else spec

    return {name: convert(spec, False) for name, spec in space.items()}
