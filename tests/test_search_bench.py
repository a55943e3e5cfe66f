"""The search benchmark's bookkeeping against hand-computed trajectories.

The table is only as honest as these helpers: selection by validation (never test), cumulative
CPU in time order, trials counted only when they finish within a budget, seed means and the
CPU-seconds to reach TPE's final mean. FixedWeights itself is tested in test_baselines.py.
"""
import math

import pandas as pd
import pytest

from auxilearn_hpo.bench import search as sb

NAN = math.nan


def trials(approach, rows, benchmark="b", seed=0):
    """Events from ``(order, cpu_s, val, test)`` (final) or ``(order, cpu_s)`` (not final)."""
    out = []
    for i, r in enumerate(rows):
        final = len(r) == 4
        out.append({"benchmark": benchmark, "approach": approach, "seed": seed, "trial": i, "order": r[0],
                    "cpu_s": r[1], "final": final, "val_score": r[2] if final else NAN,
                    "test_metric": r[3] if final else NAN})
    return out


def frame(*groups):
    return pd.DataFrame([e for g in groups for e in g])


# ---------------------------------------------------------------------- trajectory


def test_trajectory_selects_by_validation_not_test():
    ev = frame(trials("a", [(1, 2.0, 0.5, 0.6), (2, 3.0, 0.4, 0.45), (3, 1.0, 0.45, 0.3), (4, 4.0, 0.2, 0.25)]))
    t = sb.trajectory(ev, "min")
    assert t["cum_cpu_s"].tolist() == [2.0, 5.0, 6.0, 10.0]
    # trial 2 has the best test so far (0.3) but a worse validation metric: not selected
    assert t["best_test"].tolist() == [0.6, 0.45, 0.45, 0.25]
    assert t["best_val"].tolist() == [0.5, 0.4, 0.4, 0.2]


def test_trajectory_max_mode_ties_nan_and_time_order():
    # rows out of time order; a NaN validation (diverged) is never selected; a tie keeps the first
    ev = frame(trials("a", [(3, 1.0, 0.9, 0.70), (1, 1.0, NAN, 0.99), (2, 2.0, 0.8, 0.85), (4, 1.0, 0.9, 0.95)]))
    t = sb.trajectory(ev, "max")
    assert t["cum_cpu_s"].tolist() == [1.0, 3.0, 4.0, 5.0]
    assert t["trial"].tolist() == [1, 2, 0, 3]
    assert math.isnan(t["best_test"].iloc[0])  # nothing selected yet
    assert t["best_test"].tolist()[1:] == [0.85, 0.70, 0.70]


def test_trajectory_counts_cpu_of_unfinished_work():
    # PBT-like: epochs that end no trial still cost CPU before the members finish
    ev = frame(trials("p", [(1, 1.5), (2, 1.5), (3, 1.0), (4, 1.0, 0.25, 0.32), (5, 1.0, 0.35, 0.28)]))
    t = sb.trajectory(ev, "min")
    assert t["cum_cpu_s"].tolist() == [5.0, 6.0]
    assert t["best_test"].tolist() == [0.32, 0.32]


def test_trajectory_rejects_bad_mode_and_handles_no_events():
    with pytest.raises(ValueError, match="mode"):
        sb.trajectory(frame(trials("a", [(1, 1.0, 0.1, 0.1)])), "minimize")
    assert sb.trajectory(pd.DataFrame(), "min").empty


def test_answer_at_and_first_reaching():
    t = sb.trajectory(frame(trials("a", [(1, 2.0, 0.5, 0.6), (2, 3.0, 0.4, 0.45), (4, 5.0, 0.2, 0.25)])), "min")
    assert math.isnan(sb.answer_at(t, 1.9))  # nothing finished yet
    assert sb.answer_at(t, 2.0) == 0.6
    assert sb.answer_at(t, 9.99) == 0.45  # the third trial finishes at 10
    assert sb.answer_at(t, 10.0) == 0.25
    assert sb.first_reaching(t, 0.45, "min") == 5.0
    assert sb.first_reaching(t, 0.3, "min") == 10.0
    assert math.isnan(sb.first_reaching(t, 0.1, "min"))
    assert math.isnan(sb.first_reaching(t, NAN, "min"))


# ---------------------------------------------------------------------- summary, curve, checks


def info(mode="min", budget=10.0):
    return pd.DataFrame([{"benchmark": "b", "mode": mode, "metric_name": "mse", "epochs": 3,
                          "val_source": "validation", "budget_cpu_s": budget}])


@pytest.fixture
def events():
    return frame(
        # TPE over weights, two seeds: cum 2, 4, 8, 12 (the last after the budget of 10) and 5, 10
        trials("tpe_weights", [(1, 2.0, 0.5, 0.5), (2, 2.0, 0.3, 0.35), (3, 4.0, 0.2, 0.3), (4, 4.0, 0.1, 0.1)]),
        trials("tpe_weights", [(1, 5.0, 0.4, 0.4), (2, 5.0, 0.3, 0.3)], seed=1),
        # AuxiLearn: cum 1, 2, 4 and 2, 3
        trials("auxilearn", [(1, 1.0, 0.3, 0.31), (2, 1.0, 0.2, 0.29), (3, 2.0, 0.1, 0.2)]),
        trials("auxilearn", [(1, 2.0, 0.3, 0.25), (2, 1.0, 0.35, 0.1)], seed=1),
        # PBT: three epochs of work, then two members finish at cum 5 and 6
        trials("auxilearn_pbt", [(1, 1.5), (2, 1.5), (3, 1.0), (4, 1.0, 0.25, 0.32), (5, 1.0, 0.35, 0.28)]),
    )


def test_summary_rows_per_approach_seed_and_fraction(events):
    s = sb.summary(events, info())
    assert list(s.columns) == ["benchmark", "approach", "seed", "budget_fraction", "test_metric", "metric_name",
                               "cpu_seconds", "final_data"]
    assert set(s["final_data"]) == {"all"}  # an info table without the column: written before it existed
    got = {(r.approach, r.seed, r.budget_fraction): r.test_metric for r in s.itertuples()}
    # answers at 2.5, 5 and 10 CPU-s: trials finished by then, best by validation
    assert got[("tpe_weights", 0, 0.25)] == 0.5 and got[("tpe_weights", 0, 0.5)] == 0.35
    assert got[("tpe_weights", 0, 1.0)] == 0.3  # the 4th trial ends at 12, after the budget
    assert math.isnan(got[("tpe_weights", 1, 0.25)]) and got[("tpe_weights", 1, 1.0)] == 0.3
    assert got[("auxilearn", 0, 0.25)] == 0.29 and got[("auxilearn", 0, 1.0)] == 0.2
    # seed 1: the second trial has the worse validation score (0.35 > 0.3): its better test is ignored
    assert got[("auxilearn", 1, 1.0)] == 0.25
    assert math.isnan(got[("auxilearn_pbt", 0, 0.25)]) and got[("auxilearn_pbt", 0, 1.0)] == 0.32
    assert set(s["cpu_seconds"]) == {2.5, 5.0, 10.0} and set(s["metric_name"]) == {"mse"}


def test_curve_and_seed_mean(events):
    c = sb.curve(events, info())
    assert c[(c.approach == "auxilearn") & (c.seed == 1)][["cpu_seconds", "test_metric"]].values.tolist() == [
        [2.0, 0.25], [3.0, 0.25]]
    m = sb.mean_curve(c, "b", "auxilearn")
    # defined once both seeds have an answer (at 2): seed 0 answers 0.29 then 0.2 at 4
    assert m.values.tolist() == [[2.0, (0.29 + 0.25) / 2], [3.0, (0.29 + 0.25) / 2], [4.0, (0.2 + 0.25) / 2]]


def test_checks_compare_the_best_learned_approach_with_tpe(events):
    v = sb.checks(sb.summary(events, info()), sb.curve(events, info()), info()).iloc[0]
    # final means: auxilearn (0.2 + 0.25) / 2 = 0.225, auxilearn_pbt 0.32, TPE (0.3 + 0.3) / 2 = 0.3
    assert v["best_learned"] == "auxilearn" and v["learned_final"] == pytest.approx(0.225)
    assert v["tpe_final"] == pytest.approx(0.3) and bool(v["at_least_tpe"])
    # paired over seeds, positive = learned better (mse: lower): 0.3 - 0.2 = 0.1 and 0.3 - 0.25 = 0.05
    assert v["lead"] == pytest.approx(0.075) and v["lead_se"] == pytest.approx(0.025)
    # AuxiLearn's seed mean first reaches 0.3 at 2 CPU-s (0.27); TPE's at 10 (seed 1 answers 0.3 from 10)
    assert v["learned_cpu_to_tpe_final"] == 2.0 and v["tpe_cpu_to_tpe_final"] == 10.0
    assert v["speedup"] == pytest.approx(5.0)


def test_events_csv_reads_back_in_time_order(tmp_path):
    # PBT orders are (population, timestamp, time): as text "(10, ...)" would sort before "(2, ...)"
    rows = trials("auxilearn_pbt", [((10, 1.0, 1.0), 1.0, 0.1, 0.1), ((2, 9.0, 1.0), 1.0, 0.3, 0.3),
                                    ((2, 3.0, 5.0), 1.0, 0.2, 0.2)])
    ev = pd.concat([frame(rows), frame(trials("tpe_weights", [(1, 1.0, 0.5, 0.5), (0, 1.0, 0.4, 0.6)]))])  # index 0, 1, 2, 0, 1
    sb.report(ev, info(), out=str(tmp_path))
    back = pd.read_csv(tmp_path / "events.csv")
    pbt = back[back.approach == "auxilearn_pbt"]
    assert pbt["order"].tolist() == [2, 1, 0] and back[back.approach == "tpe_weights"]["order"].tolist() == [1, 0]
    for approach in ("auxilearn_pbt", "tpe_weights"):  # the same trajectory from the CSV as from memory
        pd.testing.assert_frame_equal(sb.trajectory(back[back.approach == approach], "min")[["cum_cpu_s", "best_test"]],
                                      sb.trajectory(ev[ev.approach == approach], "min")[["cum_cpu_s", "best_test"]])
    assert sb.trajectory(back[back.approach == "auxilearn_pbt"], "min")["best_test"].tolist() == [0.2, 0.2, 0.1]


# ---------------------------------------------------------------------- search spaces


def test_weights_space_is_one_log_uniform_weight_per_auxiliary_for_both_backends():
    optuna = pytest.importorskip("optuna")
    from auxilearn_hpo.integrations.space import LogUniform, suggest

    space = sb.weights_space(["helpful", "harmful"], (1e-4, 10.0))
    assert space["weighting"] == "fixed"
    assert space["weighting_options"]["weights"] == {"helpful": LogUniform(1e-4, 10.0), "harmful": LogUniform(1e-4, 10.0)}
    fixed = optuna.trial.FixedTrial({"weighting_options/weights/helpful": 0.5, "weighting_options/weights/harmful": 1e-3})
    # Optuna names the nested parameters outer/inner and hands the config back nested
    assert suggest(fixed, space) == {"weighting": "fixed",
                                     "weighting_options": {"weights": {"helpful": 0.5, "harmful": 1e-3}}}


def test_approach_spaces():
    from auxilearn_hpo.integrations.space import HOLD_GAINS, Categorical, default_space, warm_space

    assert sb.approach_space("auxilearn", ["a"]) == warm_space()
    assert warm_space() == {**default_space(), "warm_start": True, "hold_gain": Categorical(HOLD_GAINS)}
    assert sb.approach_space("auxilearn_pbt", ["a"]) == default_space()
    assert sb.approach_space("equal", ["a"]) == {"weighting": "equal"}
    with pytest.raises(ValueError, match="unknown approach 'x'"):
        sb.approach_space("x", ["a"])


def test_every_search_starts_at_its_natural_default():
    from auxilearn_hpo.integrations.space import default_point, default_space, flat_params

    from auxilearn_hpo.integrations.space import warm_space

    point = sb.first_point("auxilearn_pbt", ["a", "b"])
    assert point == default_point(default_space()) and point["weighting"] == "linear"
    # the first auxilearn trial learns (there is nothing to hold yet)
    assert sb.first_point("auxilearn", ["a"]) == {**point, "hold_gain": None} == default_point(warm_space())
    # the weight searches start at equal weights: a draw of their own space
    first = sb.first_point("tpe_weights", ["a", "b"])
    assert flat_params(first) == {"weighting_options/weights/a": 1.0, "weighting_options/weights/b": 1.0}
    space = flat_params(sb.weights_space(["a", "b"]))
    assert all(spec.low <= 1.0 <= spec.high for spec in space.values() if hasattr(spec, "low"))
    assert sb.first_point("pbt_weights", ["a", "b"]) == first and sb.first_point("equal", ["a"]) == {}


def test_bad_arguments_exit_non_zero_with_one_line(capsys):
    assert sb.main(["--benchmarks", "nope", "--cpu-s", "0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--benchmarks: unknown benchmark(s) ['nope']" in err
    assert sb.main(["--final-data", "all", "--benchmarks", "toy", "--cpu-s", "-1"]) == 2
    assert "--cpu-s must be > 0" in capsys.readouterr().err
    assert sb.main(["--seeds", "0"]) == 2
    assert "--seeds takes a count N (seeds 0..N-1), a range A-B" in capsys.readouterr().err


# ---------------------------------------------------------------------- a tiny end-to-end run


@pytest.mark.slow
def test_main_tiny_budget_writes_summary_and_curve(tmp_path, capsys):
    pytest.importorskip("optuna")
    assert sb.main(["--benchmarks", "toy", "--approaches", "auxilearn", "tpe_weights", "equal",
                    "--cpu-s", "0.3", "--processes", "1", "--final-data", "train", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy: mse (lower is better), budget 0.3 CPU-s" in out and "process_time" in out
    assert "selection on validation data separate from the auxiliary set" in out
    events = pd.read_csv(tmp_path / "events.csv")
    # every approach ran until its trials' CPU reached the budget (equal: exactly one trial)
    spent = events.groupby("approach")["cpu_s"].sum()
    assert spent["auxilearn"] >= 0.3 and spent["tpe_weights"] >= 0.3
    assert (events["approach"] == "equal").sum() == 1
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 3 * 3  # 3 approaches x 1 seed x 3 fractions
    assert set(summary["budget_fraction"]) == {0.25, 0.5, 1.0}
    curve = pd.read_csv(tmp_path / "curve.csv")
    assert list(curve.columns) == ["benchmark", "approach", "seed", "cpu_seconds", "test_metric", "final_data"]
    assert set(curve["final_data"]) == set(summary["final_data"]) == set(events["final_data"]) == {"train"}
    assert not list(tmp_path.glob(".*.tmp"))  # the tables were written atomically, nothing staged is left
    assert curve.groupby("approach")["cpu_seconds"].apply(lambda c: c.is_monotonic_increasing).all()


# ---------------------------------------------------------------------- Ray trainable warm start, without Ray running


RAY_CONFIG = {"epochs": 2, "update_every": 1, "weighting": "linear", "seed": 0}


@pytest.fixture
def run_trainable(monkeypatch, tmp_path):
    """``run(folder, config) -> reports``: the Ray trainable on ``toy`` in ``tmp_path/folder``,
    its ``tune.report`` metrics collected (no Ray running, no checkpoint handed back)."""
    pytest.importorskip("ray")
    from ray import tune

    from auxilearn_hpo.integrations import ray_tune
    from auxilearn_hpo.integrations.ray_tune import training

    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(dict(metrics)))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)

    def run(folder: str, config: dict) -> list:
        reports.clear()
        monkeypatch.setattr(training, "trial_dir", lambda: tmp_path / folder)
        ray_tune.trainable({**RAY_CONFIG, **config}, task="toy")
        return list(reports)

    return run


def test_ray_trainable_warm_starts_from_the_best_finished_trial_folder(run_trainable, tmp_path):
    from auxilearn_hpo.integrations import ray_tune

    # a finished trial writes its learned weighting (and score) in its trial folder
    reports = run_trainable("trial_a", {"aux_lr": 0.5})
    learned = {k: v for k, v in reports[-1].items() if k.startswith("weights/")}
    assert (tmp_path / "trial_a" / ray_tune.WARM_FILE).is_file() and reports[-1]["cpu_s"] > 0
    # a new trial of the same experiment with warm_start starts from those weights (aux_lr 1e-9 keeps them)
    reports = run_trainable("trial_b", {"aux_lr": 1e-9, "warm_start": True})
    assert reports[0]["warm_started"] == 1.0
    for name, value in learned.items():
        assert reports[0][name] == pytest.approx(value, rel=1e-5), name
    # the score is the mean val_metric of the epochs so far (at most the last 3); at the last
    # epoch, the final model's: here the refit's on all labelled data
    assert reports[0]["score"] == pytest.approx(reports[0]["val_metric"])
    assert reports[-1]["score"] == pytest.approx(reports[-1]["refit_score"]) and math.isfinite(reports[-1]["score"])


def test_ray_trainable_holds_the_best_trials_weights_and_writes_none(run_trainable, tmp_path):
    from auxilearn_hpo.integrations import ray_tune

    reports = run_trainable("trial_a", {"aux_lr": 0.5})
    learned = {k: v for k, v in reports[-1].items() if k.startswith("weights/")}
    reports = run_trainable("trial_b", {"warm_start": True, "hold_gain": 4.0})
    assert reports[0]["warm_started"] == 1.0 and reports[0]["held"] == 1.0
    for report in reports:  # held fixed, the auxiliaries times 4
        assert report["hypersteps"] == 0
        for name, value in learned.items():
            assert report[name] == pytest.approx(value * (1 if name == "weights/main" else 4), rel=1e-5), name
    # a held trial is no warm-start source: its folder gets no weighting file
    assert not (tmp_path / "trial_b" / ray_tune.WARM_FILE).exists()
