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
    checks = quality.checks(raw).set_index("check")["pass"]
    assert checks["reg/linear: beats single_task (1.1)"] and checks["cls/linear: beats equal (0.85)"]
    assert checks["reg/linear: gain_recovered >= 0.5"]


def test_no_gain_available_means_matching_single_task_within_one_standard_error():
    raw = pd.DataFrame(
        rows("d", "accuracy", "single_task", [0.88, 0.90]) + rows("d", "accuracy", "equal", [0.85, 0.86])
        + rows("d", "accuracy", "oracle", [0.88, 0.90]) + rows("d", "accuracy", "linear", [0.875, 0.895]))
    assert math.isnan(quality.gains(raw).set_index(["benchmark", "weighting"]).loc[("d", "linear"), "gain_recovered"])
    (check,) = quality.checks(raw).to_dict("records")
    assert check["check"].startswith("d/linear: within one s.e. of single_task") and check["pass"]
    worse = raw.copy()
    worse.loc[worse.weighting == "linear", "test_metric"] = [0.86, 0.87]  # 0.025 below, s.e. 0.01
    assert not quality.checks(worse)["pass"].any()


def test_harmful_to_helpful_ratio_counts_seeds():
    raw = pd.DataFrame(rows("toy", "mse", "linear", [0.1] * 4, harm_ratio=[0.01, 0.05, 0.2, 0.02]))
    (row,) = quality.harm_ratios(raw).to_dict("records")
    assert row["seeds below 0.1"] == "3/4" and row["median ratio"] == pytest.approx(0.035)


def test_set_trains_the_learned_weightings_with_those_settings_and_leaves_the_others():
    import torch

    from auxilearn_hpo.learner import AuxiliaryLearner, LearnerConfig
    from auxilearn_hpo.tasks import make_task

    row = quality.train_one("toy", "linear", 0, {"train_batches": 2, "update_every": 4})
    torch.manual_seed(0)
    task = make_task("toy", seed=0)  # the same run built by hand
    learner = AuxiliaryLearner.from_task(task, "linear", config=LearnerConfig(train_batches=2, update_every=4))
    reports = list(learner.fit(task.defaults.epochs))
    assert row["test_metric"] == float(task.metric_fn(learner.model, task.test_loader))
    assert row["w/harmful"] == reports[-1].weights["harmful"]
    assert row["test_metric"] != quality.train_one("toy", "linear", 0)["test_metric"]
    # a baseline takes no learner settings: the same run with or without them
    plain = quality.train_one("toy", "single_task", 0)
    assert quality.train_one("toy", "single_task", 0, {"update_every": 3})["test_metric"] == plain["test_metric"]


@pytest.mark.parametrize("items, match", [
    (["--set", "train_batches=0"], "--set: train_batches must be an int >= 1"),
    (["--set", "nokey"], "--set must be KEY=VALUE"),
    (["--weightings", "alignment", "--set", "compile=true"], "--set with alignment: compile=True needs"),
])
def test_bad_set_is_a_one_line_usage_error(items, match, capsys):
    with pytest.raises(SystemExit) as exit_:
        quality.main(["--seeds", "1", "--benchmarks", "toy", *items])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err and "Traceback" not in err
