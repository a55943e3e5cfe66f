"""Search spaces, schedulers and searchers for Ray Tune: the shared outer space as Tune objects."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from auxilearn_hpo.integrations.space import (PBT_MUTABLE, SPECS, Categorical, LogUniform, default_point,
                                             default_space, flat_params, to_tune)
from auxilearn_hpo.integrations.trial import check_config

from .extra import import_tune

__all__ = ["check_space", "search_space", "is_domain", "is_grid", "largest", "make_scheduler", "make_search_alg",
           "random_search", "start_point"]


def check_space(space: Mapping[str, Any], what: str = "param_space") -> None:
    """Unknown outer settings raise ``ValueError`` naming them (``check_config``'s rule)."""
    if not isinstance(space, Mapping):
        raise TypeError(f"{what} must be a dict of outer settings, got {type(space).__name__}")
    try:
        check_config(dict(space))
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def _spec(name: str, value: Any, allowed: Sequence[str] | None = None, *, log_range: bool = False) -> Any:
    """A keyword of :func:`search_space` as a spec of :mod:`~auxilearn_hpo.integrations.space`."""
    if is_domain(value) or isinstance(value, SPECS):
        return value
    if log_range and isinstance(value, tuple) and len(value) == 2:
        low, high = value
        if not 0 < low < high:
            raise ValueError(f"{name} must be a (low, high) range with 0 < low < high, got {value!r}")
        return LogUniform(float(low), float(high))
    if log_range:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be > 0 or a (low, high) range, got {value!r}")
        return float(value)
    values = [value] if isinstance(value, (str, int)) else list(value)
    if not values:
        raise ValueError(f"{name} must not be empty")
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"{name}: unknown value(s) {unknown}; choose from {sorted(allowed)}")
    return Categorical(tuple(values))


def search_space(
    *,
    weightings: Sequence[str] | str | None = None,
    solvers: Sequence[str] | str | None = None,
    update_every: Sequence[int] | int | None = None,
    steps: Sequence[int] | int | None = None,
    aux_lr: tuple[float, float] | float | None = None,
    alpha: tuple[float, float] | float | None = None,
    lr: tuple[float, float] | float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Tune search space over AuxiLearn's outer settings: the shared default space
    (:func:`auxilearn_hpo.integrations.space.default_space`, the one Optuna searches), with any
    keyword given here replacing its entry.

    Sequences become ``tune.choice``; ``(low, high)`` ranges become ``tune.loguniform``; a
    single value fixes the setting; a Tune sampling object or a space spec passes through.

    Args:
        weightings: weightings (``"linear"``, ``"nonlinear"``, ``"conv"`` or baselines
            from :mod:`auxilearn_hpo.registry`).
        solvers: hypergradient solvers (``"neumann"``, ``"cg"``, ``"exact"``).
        update_every: training steps between hypersteps. steps: Neumann terms or CG iterations.
        aux_lr: the learned weighting's learning rate (log-uniform range).
        alpha: the Neumann step (log-uniform range), not searched by default (``alpha="auto"``).
        lr: the model's learning rate, not searched by default (the task's default).
        extra: more settings (``epochs``, ``damping``, ``seed``, ...), values or Tune objects.

    Raises:
        ValueError: an unknown setting in ``extra`` (named), an unknown weighting or solver, an
            empty choice or a bad range.

    Example:
        >>> space = search_space(weightings="linear", solvers=["neumann"], extra={"epochs": 5})
        >>> sorted(space)
        ['aux_lr', 'epochs', 'solver', 'steps', 'update_every', 'weighting', 'weighting_options']
    """
    import_tune()
    from auxilearn_hpo.hypergrad import SOLVERS
    from auxilearn_hpo.registry import WEIGHTINGS

    space: dict[str, Any] = default_space()
    given = {"weighting": (weightings, list(WEIGHTINGS), False), "solver": (solvers, list(SOLVERS), False),
             "update_every": (update_every, None, False), "steps": (steps, None, False),
             "aux_lr": (aux_lr, None, True), "alpha": (alpha, None, True), "lr": (lr, None, True)}
    flag = {"weighting": "weightings", "solver": "solvers"}
    for name, (value, allowed, log_range) in given.items():
        if value is not None:
            space[name] = _spec(flag.get(name, name), value, allowed, log_range=log_range)
    if extra:
        check_space(extra, "extra")
        space.update(extra)
    return to_tune(space)


def is_domain(value: Any) -> bool:
    try:
        from ray.tune.search.sample import Domain
    except ImportError:
        return False

    return isinstance(value, Domain)


def is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def largest(value: Any) -> int | None:
    """The largest epoch count a space entry can take (``None`` when unknown)."""
    if value is None:
        return None
    if is_grid(value):
        return max(int(v) for v in value["grid_search"])
    if is_domain(value):
        if hasattr(value, "categories"):
            return max(int(v) for v in value.categories)
        upper = getattr(value, "upper", None)
        return int(upper) if upper is not None else None
    return int(value)


def _pbt_mutations(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The sampled entries of a Tune ``param_space`` that PBT may perturb (:data:`~.space.PBT_MUTABLE`)."""
    out: dict[str, Any] = {}
    for name, value in space.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and not is_grid(value):
            inner = _pbt_mutations(value, path + "/")
            if inner:
                out[name] = inner
        elif is_domain(value) and any(path == m or path.startswith(m + "/") for m in PBT_MUTABLE):
            # PBT perturbs a list of choices by moving to a neighbouring choice, and a sampled
            # number by a factor of 0.8 or 1.2 (or a new draw); a tune.choice must become a list.
            categories = getattr(value, "categories", None)
            out[name] = list(categories) if categories is not None else value
    return out


def make_scheduler(tune: Any, scheduler: Any, epochs: int | None, space: Mapping[str, Any] | None = None) -> Any:
    if scheduler is None:
        return None
    if isinstance(scheduler, str):
        if scheduler.lower() not in ("asha", "pbt"):
            raise ValueError(f"scheduler must be 'asha', 'pbt', None or a Tune scheduler, got {scheduler!r}")
        if epochs is None or epochs < 1:
            raise ValueError(f"{scheduler} needs the number of epochs as an int >= 1, got {epochs!r}")
        if scheduler.lower() == "pbt":
            from ray.tune.schedulers import PopulationBasedTraining

            mutations = _pbt_mutations(space or {})
            if not mutations:
                raise ValueError("scheduler='pbt' needs a param_space with at least one sampled setting PBT may "
                                 f"perturb ({sorted(PBT_MUTABLE)}); got none")
            # Perturb about five times per run; the bottom quarter copies the top quarter's full
            # learner state (model, weighting, optimizers) and perturbs its outer settings.
            return PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=max(1, epochs // 6),
                hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25, synch=False)
        from ray.tune.schedulers import ASHAScheduler

        # Early epochs say little (every trial starts near chance): stop nothing before a quarter.
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=max(1, epochs // 4))
    from ray.tune.schedulers import TrialScheduler

    if not isinstance(scheduler, TrialScheduler):
        raise TypeError(f"scheduler must be 'asha', 'pbt', None or a Tune scheduler, got {type(scheduler).__name__}")
    return scheduler


def make_search_alg(search_alg: Any, space: Mapping[str, Any] | None = None, start: bool = False) -> Any:
    """The searcher of :func:`run`; ``start``: try :func:`start_point` of ``space`` first (with
    ``None`` or ``"optuna"``; Optuna's searcher takes only a point that sets every dimension)."""
    takes_point = start and space is not None and (search_alg is None or isinstance(search_alg, str))
    point = start_point(space) if takes_point else {}
    if search_alg is None:
        return random_search(points_to_evaluate=[point]) if point else None
    if isinstance(search_alg, str):
        if search_alg.lower() != "optuna":
            raise ValueError(f"search_alg must be 'optuna', None or a Tune searcher, got {search_alg!r}")
        try:
            from ray.tune.search.optuna import OptunaSearch

            import optuna  # noqa: F401  (OptunaSearch only fails when it is used)
        except ImportError as err:
            raise ImportError(
                f"search_alg='optuna' needs Optuna ({err}); install it with `pip install auxilearn-hpo[ray,optuna]`"
            ) from err
        flat = flat_params(point)
        sampled = {name for name, value in flat_params(space or {}).items() if is_domain(value)}
        full = bool(flat) and set(flat) == sampled
        return OptunaSearch(points_to_evaluate=[flat] if full else None)
    from ray.tune.search import SearchAlgorithm, Searcher

    if not isinstance(search_alg, (Searcher, SearchAlgorithm)):
        raise TypeError(f"search_alg must be 'optuna', None or a Tune searcher, got {type(search_alg).__name__}")
    return search_alg


def random_search(seed: int | None = None, points_to_evaluate: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """Tune's random search (``BasicVariantGenerator``) with its own seed, for ``run(search_alg=...)``;
    ``points_to_evaluate``: configs (nested like the space, partial ones drawn for the rest) the
    first trials run, e.g. ``[start_point(param_space)]``."""
    import_tune()
    from ray.tune.search import BasicVariantGenerator

    points = [dict(p) for p in points_to_evaluate] if points_to_evaluate else None
    return BasicVariantGenerator(points_to_evaluate=points, random_state=seed)


def _tune_contains(domain: Any, value: Any) -> bool:
    """Whether ``value`` is a possible draw of Tune's sampling object ``domain`` (read as the
    space spec with the same support)."""
    from ray.tune.search.sample import Categorical as TuneCategorical, Float, Integer

    from auxilearn_hpo.integrations.space import IntRange, Uniform, in_spec

    if isinstance(domain, TuneCategorical):
        spec: Any = Categorical(tuple(domain.categories))
    elif isinstance(domain, Integer):  # Tune's upper bound is exclusive
        spec = IntRange(int(domain.lower), int(domain.upper) - 1) if domain.upper > domain.lower else None
    elif isinstance(domain, Float):
        spec = Uniform(float(domain.lower), float(domain.upper))
    else:
        return False
    return spec is not None and in_spec(spec, value)


def start_point(param_space: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The shipped defaults of the searched settings of ``param_space`` (Tune objects or space
    specs; default :func:`search_space`), nested like it: the config ``run`` tries first
    (:func:`~auxilearn_hpo.integrations.space.default_point`)."""
    import_tune()
    return default_point(search_space() if param_space is None else param_space, contains=_tune_contains)
