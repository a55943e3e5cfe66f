"""One search space, read by both backends: the same settings over the same ranges."""
import math

import pytest

from auxilearn_hpo.integrations import space as sp
from auxilearn_hpo.integrations.trial import OUTER_SETTINGS

optuna = pytest.importorskip("optuna")


def optuna_samples(space, n):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(sp.suggest(trial, space))
        study.tell(trial, 0.0)
    return configs


def ray_samples(space, n):
    pytest.importorskip("ray.tune")
    from ray.tune.search.variant_generator import generate_variants

    return [cfg for _ in range(n) for _, cfg in generate_variants(sp.to_tune(space))]


def flat(config):
    """``{"weighting_options": {"positive": "exp"}}`` -> ``{"weighting_options/positive": "exp"}``."""
    out = {}
    for key, value in config.items():
        out.update({f"{key}/{k}": v for k, v in flat(value).items()} if isinstance(value, dict) else {key: value})
    return out


def test_both_backends_sample_the_same_default_space():
    space = sp.default_space()
    assert set(space) <= OUTER_SETTINGS
    specs = dict(sp._items(space))
    by_optuna = [flat(c) for c in optuna_samples(space, 300)]
    by_ray = [flat(c) for c in ray_samples(space, 300)]
    for configs in (by_optuna, by_ray):
        # every setting, nested ones included (weighting_options/positive, ...), in every config
        assert all(set(c) == set(specs) == set(sp.names(space)) for c in configs)
    for name, spec in specs.items():
        if isinstance(spec, sp.Categorical):
            # every choice comes up with 300 draws (the rarest has probability 1/4 per draw), and nothing else
            assert {c[name] for c in by_optuna} == {c[name] for c in by_ray} == set(spec.choices), name
        else:
            for configs in (by_optuna, by_ray):
                values = [c[name] for c in configs]
                assert spec.low <= min(values) and max(values) <= spec.high, name
                # log-uniform: the mean of log(value) sits at the middle of the log range in both
                mid = (math.log(spec.low) + math.log(spec.high)) / 2
                half = (math.log(spec.high) - math.log(spec.low)) / 2
                assert abs(sum(math.log(v) for v in values) / len(values) - mid) < 0.15 * half, name


def test_both_backends_sample_the_warm_space_and_the_first_trial_learns():
    space = sp.warm_space()
    assert set(space) <= OUTER_SETTINGS and space["warm_start"] is True
    for configs in (optuna_samples(space, 200), ray_samples(space, 200)):
        # every gain, None (learn on) included; warm starts fixed on
        assert {c["hold_gain"] for c in configs} == set(sp.HOLD_GAINS)
        assert all(c["warm_start"] is True for c in configs)
    assert sp.default_point(space)["hold_gain"] is None


def contains(spec, value):
    if isinstance(spec, sp.Categorical):
        return value in spec.choices
    return spec.low <= value <= spec.high


def test_default_space_contains_the_learner_defaults_and_spans_decades():
    from auxilearn_hpo.learner import LearnerConfig
    from auxilearn_hpo.registry import DEFAULT_OPTIONS

    specs = dict(sp._items(sp.default_space()))
    defaults = LearnerConfig()
    # The defaults win on every shipped benchmark (README's quality table): the space holds them.
    for name in ("update_every", "steps", "solver", "aux_lr"):
        assert contains(specs[name], getattr(defaults, name)), name
    assert contains(specs["weighting"], "linear")
    for option in ("positive", "normalize", "init_total"):
        assert contains(specs[f"weighting_options/{option}"], DEFAULT_OPTIONS["linear"][option]), option
    # The meta step ranges over three decades, and both parametrisations and normalisations are there.
    assert specs["aux_lr"].high / specs["aux_lr"].low >= 1e3
    assert set(specs["weighting_options/positive"].choices) == {"exp", "clamp"}
    assert set(specs["weighting_options/normalize"].choices) == {"main", None}


def test_every_default_config_builds_a_trial():
    from auxilearn_hpo.integrations.trial import Trial

    # positive applies to linear only: a nonlinear trial drawn with it still builds (it is left out)
    for config in optuna_samples(sp.default_space(), 12):
        trial = Trial("toy", {**config, "epochs": 1})
        assert trial.learner.weighting.normalize == config["weighting_options"]["normalize"]
        if config["weighting"] == "linear":
            assert trial.learner.weighting.positive == config["weighting_options"]["positive"]


def test_pbt_mutations_keep_only_settings_the_learner_state_survives():
    space = {**sp.default_space(), "epochs": 10,
             "weighting_options": {"weights": {"aux": sp.LogUniform(1e-2, 1.0)}, "init_total": sp.LogUniform(0.1, 1)}}
    mutations = sp.pbt_mutations(space)
    # the meta step, hyperstep frequency and solver may change on exploit; the weighting, its
    # parametrisation and fixed values (epochs) may not; fixed weights (a buffer) may
    assert set(sp.names(mutations)) == {"aux_lr", "update_every", "solver", "steps", "weighting_options/weights/aux"}


def test_ray_search_space_is_the_default_space_with_overrides():
    pytest.importorskip("ray.tune")
    from auxilearn_hpo.integrations import ray_tune

    space = ray_tune.search_space()
    assert sorted(space) == sorted(sp.default_space())
    assert sorted(space["solver"].categories) == ["cg", "neumann"]
    narrowed = ray_tune.search_space(update_every=[2, 4], aux_lr=0.01)
    assert narrowed["update_every"].categories == [2, 4] and narrowed["aux_lr"] == 0.01


def test_specs_reject_bad_ranges_with_the_argument_named():
    with pytest.raises(ValueError, match="LogUniform needs 0 < low"):
        sp.LogUniform(0.0, 1.0)
    with pytest.raises(ValueError, match="IntRange needs low <= high"):
        sp.IntRange(5, 1)
    with pytest.raises(ValueError, match="at least one choice"):
        sp.Categorical(())


def test_int_and_uniform_specs_map_to_the_same_support():
    space = {"steps": sp.IntRange(1, 7, step=2), "damping": sp.Uniform(0.0, 0.5, step=0.25)}
    by_optuna, by_ray = optuna_samples(space, 200), ray_samples(space, 200)
    for configs in (by_optuna, by_ray):
        assert {c["steps"] for c in configs} == {1, 3, 5, 7}
        assert {c["damping"] for c in configs} == {0.0, 0.25, 0.5}


def test_default_point_is_the_shipped_defaults_and_a_draw_of_both_backends():
    from auxilearn_hpo.learner import LearnerConfig
    from auxilearn_hpo.registry import DEFAULT_OPTIONS

    space = sp.default_space()
    point = sp.default_point(space)
    defaults = LearnerConfig()
    assert point == {
        "weighting": "linear", "aux_lr": defaults.aux_lr, "update_every": defaults.update_every,
        "solver": defaults.solver, "steps": defaults.steps,
        "weighting_options": {k: DEFAULT_OPTIONS["linear"][k] for k in ("positive", "normalize", "init_total")},
    }
    # every searched setting is set, and to a value its spec can draw
    specs = dict(sp._items(space))
    flat_point = sp.flat_params(point)
    assert set(flat_point) == set(specs)
    for name, value in flat_point.items():
        assert sp.in_spec(specs[name], value), name
    # a trial built from it is the learner's default trial
    from auxilearn_hpo.integrations.trial import Trial

    learner = Trial("toy", {**point, "epochs": 1}).learner
    assert learner.config == LearnerConfig() and learner.weighting.init_total == DEFAULT_OPTIONS["linear"]["init_total"]


def test_default_point_leaves_out_what_the_space_cannot_take():
    space = {
        "weighting": sp.Categorical(("linear", "nonlinear")),
        "aux_lr": sp.LogUniform(1e-3, 1e-2),  # 0.26 is outside: drawn
        "update_every": sp.IntRange(2, 20, step=2),  # 16 is on the grid
        "steps": sp.IntRange(1, 9, step=2),  # 3 is on the grid
        "solver": "cg",  # fixed: not searched, not in the point
        "lr": sp.LogUniform(1e-4, 1e-1),  # the task's default: none here
        "weighting_options": {"init_total": sp.Uniform(0.1, 1.0, step=0.2), "normalize": [None, "main"]},
    }
    assert sp.default_point(space) == {"weighting": "linear", "update_every": 16, "steps": 3,
                                       "weighting_options": {"normalize": "main"}}  # 0.45 is off 0.1 + 0.2 k
    # a fixed weighting takes its own defaults; a space without "linear" has no default weighting
    assert sp.default_point({"weighting": "nonlinear", "weighting_options": {"init_total": sp.LogUniform(0.1, 1)}}) == {
        "weighting_options": {"init_total": 0.3}}
    assert sp.default_point({"weighting": ["nonlinear", "equal"], "aux_lr": sp.LogUniform(1e-3, 1)}) == {}
    # a bool is not an int, nor 16.0 the choice 16
    assert sp.default_point({"update_every": sp.Categorical((16.0, 3.0))}) == {}
    assert sp.flat_params({"a": 1, "b": {"c": 2, "d": {"e": 3}}}) == {"a": 1, "b/c": 2, "b/d/e": 3}


def test_ray_start_point_reads_tune_domains():
    pytest.importorskip("ray.tune")
    from auxilearn_hpo.integrations import ray_tune

    assert ray_tune.start_point() == sp.default_point(sp.default_space())
    narrowed = ray_tune.search_space(update_every=[1, 3], steps=[3], aux_lr=(0.01, 1.0))
    point = ray_tune.start_point(narrowed)
    assert "update_every" not in point and point["steps"] == 3 and point["aux_lr"] == 0.26
    from ray import tune

    assert ray_tune.start_point({"update_every": tune.randint(1, 16)}) == {}  # Tune's upper bound is exclusive
    assert ray_tune.start_point({"update_every": tune.randint(1, 17)}) == {"update_every": 16}
