"""The quality benchmark's arithmetic: gain recovered, checks, harmful/helpful ratios."""
import math

import pandas as pd
import pytest

from auxilearn_hpo.bench import quality


def rows(benchmark, metric, weighting, values, **extra):
    return [{"benchmark": benchmark, "weighting": weighting, "seed": s, "test_metric": v, "metric_name": metric,
             **{k: (e[s] if isinstance(e, list) else e) for k, e in extra.items()}} for s, v in enumerate(values)]


def test_gain_recovered_is_signed_for_the_metric_direction():
    raw = pd.DataFrame(
        rows("reg", "mse", "single_task", [1.0, 1.2]) + rows("reg", "mse", "equal", [2.0, 2.0])
        + rows("reg", "mse", "oracle", [0.1, 0.1]) + rows("reg", "mse", "linear", [0.5, 0.7])
        + rows("cls", "accuracy", "single_task", [0.80, 0.80]) + rows("cls", "accuracy", "equal", [0.84, 0.86])
        + rows("cls", "accuracy", "oracle", [0.95, 0.95]) + rows("cls", "accuracy", "linear", [0.90, 0.90]))
    g = quality.gains(raw).set_index(["benchmark", "weighting"])["gain_recovered"]
    # mse: best trivial is single_task (1.1), oracle 0.1, linear 0.6 -> (1.1 - 0.6) / (1.1 - 0.1)
    assert g[("reg", "linear")] == pytest.approx(0.5)
    assert g[("reg", "single_task")] == 0 and g[("reg", "oracle")] == 1
    # accuracy: best trivial is equal (0.85), oracle 0.95, linear 0.90
    assert g[("cls", "linear")] == pytest.approx(0.5)
    g = quality.gains(raw).set_index(["benchmark", "weighting"])
    assert g.loc[("reg", "linear"), "gain_low"] <= 0.5 <= g.loc[("reg", "linear"), "gain_high"]
    checks = quality.checks(raw)
    assert checks.check.str.startswith("reg/linear: minus single_task +0.5 ± 0 (paired, 2 seeds) > 2 s.e.").any()
    assert checks.check.str.startswith("cls/linear: minus equal +0.05 ± 0.01 (paired, 2 seeds)").any()
    assert checks["pass"].all()


def test_the_bootstrap_interval_of_gain_recovered_resamples_seeds_jointly():
    import numpy as np

    st, eq, orc, lin = [1.0, 1.4, 0.9, 1.1], [2.0, 2.1, 1.9, 2.2], [0.1, 0.3, 0.2, 0.2], [0.6, 0.5, 0.9, 0.4]
    raw = pd.DataFrame(rows("r", "mse", "single_task", st) + rows("r", "mse", "equal", eq)
                       + rows("r", "mse", "oracle", orc) + rows("r", "mse", "linear", lin))
    g = quality.gains(raw, resamples=4000).set_index("weighting").loc["linear"]
    assert g.gain_recovered == pytest.approx((np.mean(st) - np.mean(lin)) / (np.mean(st) - np.mean(orc)))
    # the same percentiles computed by hand from the same draws (seed 0 of numpy's default generator)
    draws = np.random.default_rng(0).integers(0, 4, size=(4000, 4))
    m = lambda v: np.asarray(v)[draws].mean(1)  # noqa: E731
    base = np.maximum(-m(st), -m(eq))
    boot = (-m(lin) - base) / (-m(orc) - base)
    assert g.gain_low == pytest.approx(np.percentile(boot, 2.5)) and g.gain_high == pytest.approx(np.percentile(boot, 97.5))


def test_a_difference_within_two_paired_standard_errors_fails_the_check():
    raw = pd.DataFrame(rows("r", "mse", "single_task", [1.0, 1.0, 1.0]) + rows("r", "mse", "equal", [2.0] * 3)
                       + rows("r", "mse", "oracle", [0.1, 0.1, 0.1]) + rows("r", "mse", "linear", [0.5, 1.1, 0.9]))
    beat = quality.checks(raw).iloc[0]  # +0.1667 better, paired s.e. 0.176
    assert beat["check"].startswith("r/linear: minus single_task +0.1667 ± 0.18") and not beat["pass"]


def test_no_gain_available_means_matching_single_task_within_one_standard_error():
    raw = pd.DataFrame(
        rows("d", "accuracy", "single_task", [0.88, 0.90]) + rows("d", "accuracy", "equal", [0.85, 0.86])
        + rows("d", "accuracy", "oracle", [0.88, 0.90]) + rows("d", "accuracy", "linear", [0.875, 0.895]))
    assert math.isnan(quality.gains(raw).set_index(["benchmark", "weighting"]).loc[("d", "linear"), "gain_recovered"])
    (check,) = quality.checks(raw).to_dict("records")
    assert check["check"].startswith("d/linear: minus single_task -0.005 ± 0 (paired, 2 seeds)") and not check["pass"]
    close = raw.copy()
    close.loc[close.weighting == "linear", "test_metric"] = [0.87, 0.90]  # 0.005 below, paired s.e. 0.005
    (check,) = quality.checks(close).to_dict("records")
    assert check["pass"] and check["value"] == pytest.approx(-0.005)


def test_harmful_to_helpful_ratio_counts_seeds():
    raw = pd.DataFrame(rows("toy", "mse", "linear", [0.1] * 4, harm_ratio=[0.01, 0.05, 0.2, 0.02]))
    (row,) = quality.harm_ratios(raw).to_dict("records")
    assert row["seeds below 0.1"] == "3/4" and row["median ratio"] == pytest.approx(0.035)


def test_set_trains_the_learned_weightings_with_those_settings_and_leaves_the_others():
    import torch

    from auxilearn_hpo.learner import AuxiliaryLearner, LearnerConfig
    from auxilearn_hpo.tasks import make_task

    row = quality.train_one("toy", "linear", 0, {"train_batches": 2, "update_every": 4}, final_data="train")
    torch.manual_seed(0)
    task = make_task("toy", seed=0)  # the same run built by hand
    learner = AuxiliaryLearner.from_task(task, "linear", config=LearnerConfig(train_batches=2, update_every=4))
    reports = list(learner.fit(task.defaults.epochs))
    assert row["test_metric"] == float(task.metric_fn(learner.model, task.test_loader))
    assert row["w/harmful"] == reports[-1].weights["harmful"]
    assert row["test_metric"] != quality.train_one("toy", "linear", 0, final_data="train")["test_metric"]
    # a baseline takes no learner settings: the same run with or without them
    plain = quality.train_one("toy", "single_task", 0)
    assert quality.train_one("toy", "single_task", 0, {"update_every": 3})["test_metric"] == plain["test_metric"]


def test_rows_carry_the_protocol_the_pipeline_cost_and_the_learning_run_test_metric():
    row = quality.train_one("toy", "linear", 0)
    assert row["final_data"] == "all" and row["cpu_seconds"] > 0
    assert row["test_metric"] != row["learn_test_metric"]
    assert row["learn_test_metric"] == quality.train_one("toy", "linear", 0, final_data="train")["test_metric"]


@pytest.mark.parametrize("items, match", [
    (["--seeds", "5-3"], "--seeds takes a count N"),
    (["--set", "train_batches=0"], "--set: train_batches must be an int >= 1"),
    (["--set", "nokey"], "--set must be KEY=VALUE"),
    (["--weightings", "alignment", "--set", "compile=true"], "--set with alignment: compile=True needs"),
])
def test_bad_set_is_a_one_line_usage_error(items, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        quality.main(["--seeds", "1", "--benchmarks", "toy", *items])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err and "Traceback" not in err
