"""Results tables: every column against hand-made reports, the same content from Optuna and Ray.

No Ray runtime: a Ray experiment is written to disk by hand (the files Ray Tune writes) and a
``ResultGrid`` is a small fake class; the Optuna study lives in memory.
"""
import ast
import doctest
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from auxilearn_hpo import results
from auxilearn_hpo.integrations import optuna as aux_optuna
from auxilearn_hpo.integrations import ray_tune
from auxilearn_hpo.plots import plot_metric_vs_setting, plot_weight_trajectories
from auxilearn_hpo.results import (
    TableError,
    best_trial, rank_trials, read_tables, reports_frame, summary_frame, trials_frame, weights_frame, write_tables,
)


def rec(source):
    """Trial records of a study, Optuna trials, a Ray experiment folder or result grid (the adapters' readers)."""
    if hasattr(source, "get_trials") or (isinstance(source, list) and source and hasattr(source[0], "user_attrs")):
        return aux_optuna.records(source)
    return ray_tune.records(source)

NAN = math.nan
TASKS = ("main", "aux")
STANDARD = ["epoch", "step", "val_metric", "train_loss", "task_losses/main", "task_losses/aux", "weights/main",
            "weights/aux", "hypersteps", "hypersteps_skipped", "hypergrad_norm", "solver_iterations", "residual",
            "seconds", "test_metric", "higher_is_better", "learn_test_metric", "refit_gain", "refit_score"]


def make_report(epoch, val, w_aux, seconds, *, test=NAN, w_main=1.0, skipped=0, hib=1.0):
    """One flattened report as EpochReport.flat() produces it (keys in EpochReport field order)."""
    return {
        "epoch": epoch, "step": 10 * epoch, "val_metric": val, "train_loss": 1.0 / epoch,
        "task_losses/main": 0.5 / epoch, "task_losses/aux": 0.25 / epoch,
        "weights/main": w_main, "weights/aux": w_aux, "hypersteps": 2 * epoch, "hypersteps_skipped": skipped,
        "hypergrad_norm": 0.1 * epoch, "solver_iterations": 3.0, "residual": NAN, "seconds": seconds,
        "test_metric": test, "higher_is_better": hib,
    }


# Four trials of a maximised metric: two completed, one pruned after 1 epoch, one failed after diverging.
TRIALS = [
    {"config": {"weighting": "linear", "update_every": 5, "epochs": 3}, "state": "COMPLETE",
     "reports": [make_report(1, 0.5, 0.2, 1.0), make_report(2, 0.7, 0.3, 1.5),
                 make_report(3, 0.6, 0.4, 2.0, test=0.65)]},
    {"config": {"weighting": "nonlinear", "update_every": 10, "epochs": 3}, "state": "COMPLETE",
     "reports": [make_report(1, 0.4, 0.5, 2.0), make_report(2, 0.45, 0.6, 2.0),
                 make_report(3, 0.8, 0.7, 2.0, test=0.75)]},
    {"config": {"weighting": "linear", "update_every": 10, "epochs": 3}, "state": "PRUNED",
     "reports": [make_report(1, 0.3, 0.1, 0.5)]},
    {"config": {"weighting": "nonlinear", "update_every": 5, "epochs": 3}, "state": "FAIL",
     "reports": [make_report(1, 0.2, 0.9, 1.25), make_report(2, NAN, NAN, 0.25, w_main=NAN, skipped=1)]},
]

# trials_frame by hand: ranked by score, the mean val_metric of the last 3 epochs run
# (0.6, 0.55, 0.3, NaN), higher is better; trial 1 has the best single epoch (0.8) yet ranks second.
EXPECTED_ORDER = [0, 1, 2, 3]
EXPECTED_TRIALS = pd.DataFrame({
    "status": pd.Series(["completed", "completed", "pruned", "failed"], dtype="str"),
    "config/epochs": pd.Series([3, 3, 3, 3], dtype="int64"),
    "config/update_every": pd.Series([5, 10, 10, 5], dtype="int64"),
    "config/weighting": pd.Series(["linear", "nonlinear", "linear", "nonlinear"], dtype="str"),
    "final_metric": [0.6, 0.8, 0.3, NAN],  # val_metric of the last epoch run (NaN: diverged)
    "best_metric": [0.7, 0.8, 0.3, 0.2],
    "score": [0.6, 0.55, 0.3, NAN],  # a diverged last epoch gives NaN: never selected
    "test_metric": [0.65, 0.75, NAN, NAN],
    "epochs": pd.Series([3, 3, 1, 2], dtype="int64"),
    "weights/main": [1.0, 1.0, 1.0, NAN],
    "weights/aux": [0.4, 0.7, 0.1, NAN],
    "hypersteps": pd.Series([6, 6, 2, 4], dtype="Int64"),
    "hypersteps_skipped": pd.Series([0, 0, 0, 1], dtype="Int64"),
    "wall_time": [4.5, 6.0, 0.5, 1.5],
})
TRIAL_COLUMNS = ["trial_id", "framework", "status", "reason", *EXPECTED_TRIALS.columns[1:]]
REPORT_COLUMNS = ["trial_id", "framework", "status", "reason", "config/epochs", "config/update_every",
                  "config/weighting",
                  *STANDARD]


def json_safe(report):
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}


# ---------------------------------------------------------------------------- sources
@pytest.fixture
def optuna_mod():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_study(optuna, trials=TRIALS):
    study = optuna.create_study(direction="maximize")
    dists = {"weighting": optuna.distributions.CategoricalDistribution(["linear", "nonlinear"]),
             "update_every": optuna.distributions.IntDistribution(1, 10)}
    for t in trials:
        state = getattr(optuna.trial.TrialState, t["state"])
        params = {k: t["config"][k] for k in dists}
        value = t["reports"][-1]["val_metric"] if t["state"] == "COMPLETE" else None
        study.add_trial(optuna.trial.create_trial(
            state=state, params=params, distributions=dists, value=value,
            user_attrs={"reports": [json_safe(r) for r in t["reports"]], "config": t["config"]}))
    return study


@pytest.fixture
def study(optuna_mod):
    return make_study(optuna_mod)


RAY_OWN = {"checkpoint_dir_name": None, "done": False, "pid": 123, "hostname": "vm", "node_ip": "127.0.0.1",
           "time_this_iter_s": 0.5}


def ray_lines(trial_id, config, reports, minute=0):
    """result.json lines as Ray Tune writes them: our metrics plus Ray's own keys and the config."""
    lines = []
    for i, report in enumerate(reports, start=1):
        lines.append({**report, **RAY_OWN, "timestamp": 1767225600 + i, "training_iteration": i,
                      "trial_id": trial_id, "date": f"2026-01-01_00-{minute:02d}-{10 + i:02d}",
                      "time_total_s": 0.5 * i, "config": config, "time_since_restore": 0.5 * i,
                      "iterations_since_restore": i})
    return lines


def write_ray_trial(exp, index, config, lines, *, error_at=None, pickle_only=False, name="auxilearn"):
    trial_id = f"abcde_{index:05d}"
    trial_dir = exp / f"{name}_{trial_id}_{index}_weighting={config.get('weighting')}_2026-01-01_00-00-00"
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps(config, indent=2))
    (trial_dir / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if pickle_only:
        (trial_dir / "error.pkl").write_bytes(b"\x80\x04N.")
    elif error_at is not None:
        (trial_dir / "error.txt").write_text(
            f"Failure # 1 (occurred at {error_at})\nTraceback ...\nRuntimeError: boom\n")
    return trial_dir


@pytest.fixture
def ray_dir(tmp_path):
    exp = tmp_path / "storage" / "exp"
    for i, t in enumerate(TRIALS):
        lines = ray_lines(f"abcde_{i:05d}", t["config"], t["reports"])
        # The failed trial crashed after its last report (error written later than that report).
        write_ray_trial(exp, i, t["config"], lines, error_at="2026-01-01_00-00-30" if t["state"] == "FAIL" else None)
    return tmp_path / "storage"


class FakeResult:
    """The part of ray.tune.Result that results.py reads."""

    def __init__(self, lines, config, error, path):
        rows = [{**{k: v for k, v in line.items() if k != "config"},
                 **{f"config/{k}": v for k, v in line["config"].items()}} for line in lines]
        self.metrics_dataframe = pd.DataFrame(rows)
        self.config, self.error, self.path = config, error, str(path)
        self.metrics = {k: v for k, v in lines[-1].items()} if lines else {}


class FakeResultGrid:
    """Duck type of ray.tune.ResultGrid: get_dataframe and iteration over results."""

    def __init__(self, results_):
        self._results = list(results_)

    def __iter__(self):
        return iter(self._results)

    def __len__(self):
        return len(self._results)

    def __getitem__(self, i):
        return self._results[i]

    def get_dataframe(self):  # pragma: no cover - present for the duck type only
        return pd.DataFrame([r.metrics for r in self._results])


@pytest.fixture
def result_grid(tmp_path):
    items = []
    for i, t in enumerate(TRIALS):
        lines = ray_lines(f"abcde_{i:05d}", t["config"], t["reports"])
        error = RuntimeError("Traceback ...\nRuntimeError: boom") if t["state"] == "FAIL" else None
        items.append(FakeResult(lines, t["config"], error, tmp_path / f"auxilearn_abcde_{i:05d}_{i}"))
    return FakeResultGrid(items)


def without_ids(df):
    """Without what differs by framework: ids, the framework, and the wording of failure reasons."""
    return df.drop(columns=["trial_id", "framework", "reason"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- Optuna
def test_optuna_reports_frame_columns_and_every_value(study):
    df = reports_frame(rec(study))
    # Long format: one row per trial and epoch (3 + 3 + 1 + 2), leading columns, settings, report keys.
    assert list(df.columns) == REPORT_COLUMNS
    assert len(df) == 9
    assert df["framework"].eq("optuna").all()
    assert str(df["epoch"].dtype) == "Int64" and str(df["hypersteps"].dtype) == "Int64"
    for number, t in enumerate(TRIALS):
        rows = df[df["trial_id"] == str(number)]
        # Every reported value comes back, None (Optuna's JSON for NaN) as NaN.
        for key in STANDARD:
            expected = np.array([r.get(key, NAN) for r in t["reports"]], dtype="float64")
            np.testing.assert_array_equal(rows[key].to_numpy("float64", na_value=NAN), expected, err_msg=key)
        # Settings from user_attrs["config"] repeat on every row of the trial.
        for key, value in t["config"].items():
            assert rows[f"config/{key}"].tolist() == [value] * len(t["reports"])
    # Optuna states map to our statuses.
    assert df.groupby("trial_id")["status"].first().to_dict() == {
        "0": "completed", "1": "completed", "2": "pruned", "3": "failed"}


def test_optuna_trials_frame_values_by_hand(study):
    df = trials_frame(rec(study))
    # Wide format, best first: trial numbers ranked by score.
    assert list(df.columns) == TRIAL_COLUMNS
    assert df["trial_id"].tolist() == [str(i) for i in EXPECTED_ORDER]
    pd.testing.assert_frame_equal(without_ids(df), EXPECTED_TRIALS)


def test_optuna_running_trial_is_interrupted_and_waiting_is_not_started(optuna_mod):
    study = make_study(optuna_mod, TRIALS[:1])
    study.add_trial(optuna_mod.trial.create_trial(state=optuna_mod.trial.TrialState.RUNNING, params={},
                                                  distributions={}, user_attrs={"config": {"weighting": "linear"}}))
    study.enqueue_trial({})
    # A trial stopped by Ctrl-C: Optuna records FAIL, the objective marks it interrupted.
    study.add_trial(optuna_mod.trial.create_trial(state=optuna_mod.trial.TrialState.FAIL, params={},
                                                  distributions={}, user_attrs={"interrupted": True}))
    df = trials_frame(rec(study)).set_index("trial_id")
    # A trial left running has reported nothing here: it keeps a row, with 0 epochs and no metric.
    assert df["status"].to_dict() == {"0": "completed", "1": "interrupted", "2": "not_started", "3": "interrupted"}
    assert df["epochs"].tolist() == [3, 0, 0, 0]
    assert math.isnan(df.loc["1", "best_metric"]) and pd.isna(df.loc["1", "hypersteps"])


def test_optuna_without_reports_uses_intermediate_values(optuna_mod):
    study = optuna_mod.create_study(direction="minimize")
    study.add_trial(optuna_mod.trial.create_trial(
        state=optuna_mod.trial.TrialState.COMPLETE, params={"x": 1.0},
        distributions={"x": optuna_mod.distributions.FloatDistribution(0, 2)}, value=0.2,
        intermediate_values={1: 0.5, 2: 0.2, 3: 0.3}))
    df = trials_frame(rec(study))
    # Epochs and val_metric from trial.report; minimised because the study minimises.
    assert df[["config/x", "final_metric", "best_metric", "epochs"]].iloc[0].tolist() == [1.0, 0.3, 0.2, 3]


def test_empty_study_gives_empty_frames_with_columns(optuna_mod):
    study = optuna_mod.create_study()
    reports = reports_frame(rec(study))
    # Empty input: no rows, but the leading and standard report columns (like Optuna's own frames).
    assert reports.shape == (0, 4 + len([c for c in STANDARD if "/" not in c]))
    assert list(reports.columns) == ["trial_id", "framework", "status", "reason",
                                     *[c for c in STANDARD if "/" not in c]]
    trials = trials_frame(rec(study))
    assert trials.shape == (0, 12)
    assert list(trials.columns) == ["trial_id", "framework", "status", "reason", "final_metric", "best_metric", "score",
                                    "test_metric", "epochs", "hypersteps", "hypersteps_skipped", "wall_time"]
    assert list(weights_frame(rec(study)).columns) == ["trial_id", "epoch", "task", "weight"]
    assert weights_frame(rec(study)).empty


# ---------------------------------------------------------------------------- Ray
def test_ray_folder_gives_the_same_values(ray_dir, study):
    reports = reports_frame(rec(ray_dir))
    # Ray's own columns (training_iteration, date, pid, ...) are dropped; the rest is ours.
    assert list(reports.columns) == REPORT_COLUMNS
    assert reports["trial_id"].unique().tolist() == [f"abcde_{i:05d}" for i in range(4)]
    assert reports["framework"].eq("ray").all()
    pd.testing.assert_frame_equal(without_ids(reports), without_ids(reports_frame(rec(study))))
    trials = trials_frame(rec(ray_dir))
    assert list(trials.columns) == TRIAL_COLUMNS
    assert trials["trial_id"].tolist() == [f"abcde_{i:05d}" for i in EXPECTED_ORDER]
    # Same statuses as Optuna's: error.txt -> failed, one epoch of three without error -> pruned.
    pd.testing.assert_frame_equal(without_ids(trials), EXPECTED_TRIALS)


def test_ray_result_grid_matches_the_folder(result_grid, ray_dir):
    # A ResultGrid (duck type) and the experiment folder describe the same trials identically.
    pd.testing.assert_frame_equal(reports_frame(rec(result_grid)), reports_frame(rec(ray_dir)))
    pd.testing.assert_frame_equal(trials_frame(rec(result_grid)), trials_frame(rec(ray_dir)))
    # A list of Result objects works too.
    pd.testing.assert_frame_equal(trials_frame(rec(list(result_grid))), trials_frame(rec(ray_dir)))


def test_frameworks_give_identical_columns(study, ray_dir, result_grid):
    for build in (reports_frame, trials_frame, weights_frame):
        columns = [list(build(rec(source)).columns) for source in (study, ray_dir, result_grid)]
        # The same content gives the same columns, in the same order, whichever framework ran it.
        assert columns[0] == columns[1] == columns[2], build.__name__


def test_ray_status_rules(tmp_path):
    exp = tmp_path / "exp"
    three = [make_report(e, 0.1 * e, 0.5, 1.0) for e in (1, 2, 3)]
    # 0: stopped at 2 of its configured 3 epochs, no error -> pruned (an ASHA stop).
    write_ray_trial(exp, 0, {"weighting": "linear", "epochs": 3}, ray_lines("abcde_00000", {"epochs": 3}, three[:2]))
    # 1: failed once, retried from its checkpoint and went on: error.txt stays, but it is completed.
    write_ray_trial(exp, 1, {"weighting": "linear", "epochs": 3}, ray_lines("abcde_00001", {"epochs": 3}, three),
                    error_at="2026-01-01_00-00-11")
    # 2: only error.pkl -> failed. 3 and 4: epochs unknown (None) -> compared with the most any trial ran.
    write_ray_trial(exp, 2, {"weighting": "linear", "epochs": 3}, ray_lines("abcde_00002", {"epochs": 3}, three),
                    pickle_only=True)
    write_ray_trial(exp, 3, {"weighting": "x", "epochs": None}, ray_lines("abcde_00003", {"epochs": None}, three[:1]))
    write_ray_trial(exp, 4, {"weighting": "x", "epochs": None}, ray_lines("abcde_00004", {"epochs": None}, three))
    # 5: crashed before its first report: kept, with 0 epochs.
    write_ray_trial(exp, 5, {"weighting": "linear", "epochs": 3}, [], error_at="2026-01-01_00-00-05")
    df = trials_frame(rec(tmp_path)).set_index("trial_id").sort_index()
    assert df["status"].tolist() == ["pruned", "completed", "failed", "pruned", "completed", "failed"]
    assert df["epochs"].tolist() == [2, 3, 3, 1, 3, 0]
    # The trial without reports keeps its settings from params.json.
    assert df.loc["abcde_00005", "config/weighting"] == "linear"


def test_ray_repeated_epochs_keep_the_last_report(tmp_path):
    # Restored from the epoch-1 checkpoint after a crash: epoch 2 is reported twice; the rerun counts.
    reports = [make_report(1, 0.1, 0.2, 1.0), make_report(2, 0.9, 0.3, 1.0), make_report(2, 0.2, 0.4, 1.0),
               make_report(3, 0.3, 0.5, 1.0)]
    write_ray_trial(tmp_path / "exp", 0, {"epochs": 3}, ray_lines("abcde_00000", {"epochs": 3}, reports))
    df = reports_frame(rec(tmp_path))
    assert df["epoch"].tolist() == [1, 2, 3]
    assert df["val_metric"].tolist() == [0.1, 0.2, 0.3]
    assert trials_frame(rec(tmp_path))["best_metric"].iloc[0] == 0.3


def test_ray_trainable_without_epoch_uses_training_iteration(tmp_path):
    lines = ray_lines("abcde_00000", {"lr": 0.1}, [{"val_metric": 0.5, "higher_is_better": 1.0}] * 2)
    write_ray_trial(tmp_path / "exp", 0, {"lr": 0.1}, lines)
    assert reports_frame(rec(tmp_path))["epoch"].tolist() == [1, 2]


def test_ray_interrupted_last_line_is_skipped(tmp_path):
    trial_dir = write_ray_trial(tmp_path / "exp", 0, {"epochs": 3},
                                ray_lines("abcde_00000", {"epochs": 3}, TRIALS[0]["reports"]))
    with (trial_dir / "result.json").open("a") as f:
        f.write('{"epoch": 4, "val_met')  # the run was killed while writing
    assert reports_frame(rec(tmp_path))["epoch"].tolist() == [1, 2, 3]


# ---------------------------------------------------------------------- custom loops
def test_custom_tuples_flatten_nested_reports_and_settings():
    nested = [{"epoch": 1, "val_metric": 2.0, "weights": {"main": 1.0, "aux": 0.5}, "higher_is_better": 0.0,
               "my_metric": 7}]
    config = {"weighting": "linear", "weighting_options": {"hidden": 8}, "tasks": ["a", "b"], "scaled": True}
    df = reports_frame([("run-1", config, nested, "completed")])
    # Nested dicts become a/b columns (as Ray names them), lists JSON text, extra report keys kept.
    assert df.loc[0, "config/weighting_options/hidden"] == 8
    assert df.loc[0, "config/tasks"] == '["a", "b"]'
    assert df["config/scaled"].dtype == bool
    assert df.loc[0, "weights/aux"] == 0.5 and df.loc[0, "my_metric"] == 7
    assert list(df.columns[-1:]) == ["my_metric"]


def test_bad_source_and_status_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="source must be"):
        reports_frame(42)
    with pytest.raises(ValueError, match="status of trial 'a'"):
        reports_frame([("a", {}, [], "done")])
    with pytest.raises(ValueError, match="mode must be"):
        trials_frame([], mode="maximize")
    # A folder without tables or a Ray experiment: the message says what was looked for.
    with pytest.raises(FileNotFoundError, match="holds no reports.csv.*ray_tune.records"):
        reports_frame(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no Ray Tune experiment"):
        ray_tune.records(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        reports_frame(tmp_path / "missing")


# ---------------------------------------------------------------------- ranking
def test_mode_overrides_higher_is_better(study):
    df = trials_frame(rec(study), mode="min")
    # Lowest score first (0.3, 0.55, 0.6); the diverged trial's NaN score ranks last, its
    # best_metric skips the NaN epoch.
    assert df["trial_id"].tolist() == ["2", "1", "0", "3"]
    assert df["best_metric"].tolist() == [0.3, 0.4, 0.5, 0.2]


def test_direction_must_be_known():
    no_flag = [{"epoch": 1, "val_metric": 1.0}]
    # Without higher_is_better nobody can tell which way is better: ask for mode.
    with pytest.raises(ValueError, match="pass mode='max' or mode='min'"):
        trials_frame([("a", {}, no_flag)])
    assert trials_frame([("a", {}, no_flag)], mode="max")["best_metric"].tolist() == [1.0]
    mixed = [("a", {}, [{**no_flag[0], "higher_is_better": 1.0}]), ("b", {}, [{**no_flag[0], "higher_is_better": 0.0}])]
    with pytest.raises(ValueError, match="disagree"):
        trials_frame(mixed)
    # Another metric than val_metric needs a mode.
    with pytest.raises(ValueError, match="rank 'train_loss'"):
        trials_frame([("a", {}, [{"epoch": 1, "train_loss": 1.0, "higher_is_better": 1.0}])], metric="train_loss")


def test_best_trial_skips_failed_trials(study):
    best = best_trial(rec(study))
    # Trial 0 has the best score (0.6 against 0.55), though trial 1 has the best single epoch.
    assert best["trial_id"] == "0" and best["score"] == 0.6 and best["config/weighting"] == "linear"
    # Plain Python values, ready for json.
    assert type(best["epochs"]) is int and type(best["best_metric"]) is float
    failed_best = [("f", {}, [{"epoch": 1, "val_metric": 9.0, "higher_is_better": 1.0}], "failed"),
                   ("ok", {}, [{"epoch": 1, "val_metric": 1.0, "higher_is_better": 1.0}], "completed")]
    # The failed trial ranks first in the table, but best_trial passes over it.
    assert trials_frame(failed_best)["trial_id"].iloc[0] == "f"
    assert best_trial(failed_best)["trial_id"] == "ok"
    with pytest.raises(ValueError, match="no completed or pruned trial"):
        best_trial(failed_best[:1])


def _one(val, status, w_main=1.0, w_aux=0.5, epochs=3):
    return [make_report(e, val, w_aux, 1.0, w_main=w_main) for e in range(1, epochs + 1)], status


def test_an_interrupted_trial_never_ranks_best():
    # After a resume: an interrupted trial with the best score (its last epochs looked good, it never
    # finished, no test metric), a pruned trial that beats every completed one on its early epochs.
    trials = [(tid, {"epochs": 3}, *_one(val, status, epochs=epochs)) for tid, val, status, epochs in (
        ("stopped", 0.99, "interrupted", 2), ("early", 0.9, "pruned", 1), ("done", 0.6, "completed", 3),
        ("better", 0.7, "completed", 3), ("broken", 0.95, "failed", 3), ("queued", NAN, "not_started", 0))]
    frame = trials_frame(trials)
    # The table lists every trial by score: the interrupted one on top.
    assert frame["trial_id"].iloc[0] == "stopped"
    # The ranking keeps finished trials only, completed before pruned, each by score.
    assert rank_trials(frame)["trial_id"].tolist() == ["better", "done", "early"]
    # best_trial is the ranking's top row, whatever source it is given.
    assert best_trial(frame)["trial_id"] == best_trial(trials)["trial_id"] == "better"
    # With no completed trial the best pruned one stands.
    assert best_trial([t for t in trials if t[3] != "completed"])["trial_id"] == "early"


def test_trial_weights_are_relative_to_the_main_tasks():
    # Two trials learned the same ratio (aux / main = 0.1) on scales 40x apart (a searched
    # normalisation): the trials table shows the same relative weights.
    trials = [("a", {}, *_one(0.5, "completed", w_main=434.7, w_aux=43.47)),
              ("b", {}, *_one(0.5, "completed", w_main=10.0, w_aux=1.0)),
              ("c", {}, *_one(0.5, "completed", w_main=0.0, w_aux=1.0))]
    frame = trials_frame(trials).set_index("trial_id")
    assert frame.loc["a", "weights/main"] == frame.loc["b", "weights/main"] == 1.0
    assert frame.loc["a", "weights/aux"] == pytest.approx(0.1) and frame.loc["b", "weights/aux"] == pytest.approx(0.1)
    # A main weight of 0 has no ratio: NaN, not inf.
    assert frame.loc["c", ["weights/main", "weights/aux"]].isna().all()
    # Another task as the reference; the raw weights stay in the reports and weights frames.
    assert trials_frame(trials, main_task="aux").set_index("trial_id").loc["a", "weights/main"] == pytest.approx(10.0)
    assert reports_frame(trials)["weights/main"].iloc[0] == 434.7
    with pytest.raises(ValueError, match="unknown main_task 'nope'"):
        trials_frame(trials, main_task="nope")


def test_plots_and_results_do_not_import_each_other():
    # Imports run one way: plots draws frames and imports nothing of results (results may call plots).
    root = Path(results.__file__).parent
    tree = ast.parse((root / "plots.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m.endswith("results")}


# ---------------------------------------------------------------------- weights
def test_weights_frame_long_format(study):
    df = weights_frame(rec(study))
    assert list(df.columns) == ["trial_id", "epoch", "task", "weight"]
    # 9 (trial, epoch) rows x 2 tasks; the diverged epoch's NaN weights are kept.
    assert df.shape == (18, 4)
    assert df["epoch"].dtype == "int64"
    first = df[df["trial_id"] == "0"]
    assert first[["epoch", "task", "weight"]].values.tolist() == [
        [1, "main", 1.0], [1, "aux", 0.2], [2, "main", 1.0], [2, "aux", 0.3], [3, "main", 1.0], [3, "aux", 0.4]]
    failed = df[(df["trial_id"] == "3") & (df["epoch"] == 2)]
    assert failed["weight"].isna().all()


def test_weights_frame_leaves_out_tasks_a_trial_never_had():
    a = [{"epoch": 1, "weights": {"main": 1.0, "aux": 0.5}}]
    b = [{"epoch": 1, "weights": {"main": 1.0, "depth": 0.3}}]
    df = weights_frame([("a", {}, a), ("b", {}, b)])
    assert df[["trial_id", "task"]].values.tolist() == [["a", "main"], ["a", "aux"], ["b", "main"], ["b", "depth"]]


# ---------------------------------------------------------------------- summary
def test_summary_frame_numbers_by_hand(study):
    trials = trials_frame(rec(study))
    summary = summary_frame(trials, by="config/weighting")
    assert list(summary.columns) == ["config/weighting", "trials", "count", "mean", "std", "min", "max"]
    assert summary["config/weighting"].tolist() == ["linear", "nonlinear"]
    # linear: best 0.7 and 0.3; nonlinear: 0.8 and 0.2. Sample std of two values = |a - b| / sqrt(2).
    np.testing.assert_allclose(summary["mean"], [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(summary["std"], [0.4 / math.sqrt(2), 0.6 / math.sqrt(2)], rtol=1e-12)
    assert summary["min"].tolist() == [0.3, 0.2] and summary["max"].tolist() == [0.7, 0.8]
    final = summary_frame(trials, by="weighting", metric="final_metric")
    # The failed trial has no final metric: 2 trials in the group, 1 counted; one value has no std.
    assert final["trials"].tolist() == [2, 2] and final["count"].tolist() == [2, 1]
    np.testing.assert_allclose(final["mean"], [0.45, 0.8], rtol=1e-12)
    assert math.isnan(final["std"].iloc[1])


def test_summary_frame_short_names_and_several_settings(study):
    trials = trials_frame(rec(study))
    # "weighting" means "config/weighting".
    pd.testing.assert_frame_equal(summary_frame(trials, by="weighting"), summary_frame(trials, by="config/weighting"))
    two = summary_frame(trials, by=["weighting", "update_every"])
    assert two[["config/weighting", "config/update_every", "count"]].values.tolist() == [
        ["linear", 5, 1], ["linear", 10, 1], ["nonlinear", 5, 1], ["nonlinear", 10, 1]]
    # mode sorts by mean, best first; any source is turned into trials first.
    assert summary_frame(rec(study), by="update_every", mode="max")["config/update_every"].tolist() == [10, 5]


def test_summary_frame_unknown_column_is_named(study):
    trials = trials_frame(rec(study))
    with pytest.raises(ValueError, match=r"unknown by column 'optimizer'.*available columns.*config/weighting"):
        summary_frame(trials, by="optimizer")
    with pytest.raises(ValueError, match="unknown metric column 'accuracy'"):
        summary_frame(trials, metric="accuracy")
    with pytest.raises(ValueError, match="must be numeric"):
        summary_frame(trials, metric="status")


# ---------------------------------------------------------------------- plots
PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(study, tmp_path):
    pytest.importorskip("matplotlib")
    trials = trials_frame(rec(study))
    path = plot_metric_vs_setting(trials, "weighting", tmp_path / "box.png")
    # A real, non-empty PNG at the path returned.
    assert path == tmp_path / "box.png" and path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
    many = pd.DataFrame({"config/lr": np.logspace(-5, -1, 20), "best_metric": np.linspace(0, 1, 20)})
    scatter = plot_metric_vs_setting(many, "lr", tmp_path / "sub" / "scatter.png")
    assert scatter.read_bytes()[:8] == PNG
    weights = weights_frame(rec(study))
    for trial_id, name in ((None, "all.png"), (0, "one.png")):
        out = plot_weight_trajectories(weights, tmp_path / name, trial_id=trial_id)
        assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="no weights of trial_id '99'"):
        plot_weight_trajectories(weights, tmp_path / "x.png", trial_id=99)
    with pytest.raises(ValueError, match="no finite values"):
        plot_metric_vs_setting(trials.assign(best_metric=NAN), "weighting", tmp_path / "x.png")


def test_plots_name_the_extra_without_matplotlib(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    trials = pd.DataFrame({"config/weighting": ["a"], "best_metric": [1.0]})
    with pytest.raises(ImportError, match=r"pip install auxilearn-hpo\[plot\]"):
        plot_metric_vs_setting(trials, "weighting", tmp_path / "x.png")
    # write_tables still writes its tables, just no plots.
    paths = write_tables([("a", {}, [{"epoch": 1, "val_metric": 1.0, "higher_is_better": 1.0}])], tmp_path / "out")
    assert sorted(paths) == ["reports", "trials", "weights"]


# ---------------------------------------------------------------------- files
def test_write_read_tables_round_trip(study, tmp_path):
    paths = write_tables(rec(study), tmp_path / "out")
    assert {"reports", "trials", "weights"} <= set(paths)
    expected_plots = {"plot_metric_vs_weighting", "plot_metric_vs_update_every", "plot_weights"}
    if "matplotlib" in sys.modules or pytest.importorskip("matplotlib"):
        assert expected_plots <= set(paths) and all(paths[k].stat().st_size > 0 for k in expected_plots)
    tables = read_tables(tmp_path / "out")
    # What was written comes back with the same values and dtypes (trial ids stay text).
    pd.testing.assert_frame_equal(tables["reports"], reports_frame(rec(study)))
    pd.testing.assert_frame_equal(tables["trials"], trials_frame(rec(study)))
    pd.testing.assert_frame_equal(tables["weights"], weights_frame(rec(study)))
    # The trials table recomputed from reports.csv equals trials.csv.
    pd.testing.assert_frame_equal(trials_frame(tables["reports"]), tables["trials"])
    # The --out folder is itself a source.
    pd.testing.assert_frame_equal(reports_frame(tmp_path / "out"), reports_frame(rec(study)))


def test_round_trip_keeps_settings_types(tmp_path):
    reports = [{"epoch": 1, "val_metric": 0.1 + 0.2, "higher_is_better": 1.0}]
    configs = [{"weighting": "linear", "lr": None, "scaled": True, "max_grad_norm": 10.0, "opts": {"k": 1}},
               {"weighting": "uncertainty", "lr": 0.01, "scaled": False, "max_grad_norm": None, "opts": None}]
    source = [(f"t{i}", config, reports) for i, config in enumerate(configs)] + [("t9", configs[0], [], "failed")]
    write_tables(source, tmp_path, plots=False)
    tables = read_tables(tmp_path)
    original = reports_frame(source)
    # None settings become NaN; bools, ints, floats and text survive the CSV (floats exactly).
    assert original["config/scaled"].dtype == bool and original["config/max_grad_norm"].dtype == "float64"
    pd.testing.assert_frame_equal(tables["reports"], original)
    pd.testing.assert_frame_equal(tables["trials"], trials_frame(source))
    pd.testing.assert_frame_equal(trials_frame(tables["reports"]), tables["trials"])


def test_read_tables_needs_reports_csv(tmp_path):
    with pytest.raises(FileNotFoundError, match="no reports.csv"):
        read_tables(tmp_path)


def test_ray_folder_round_trip(ray_dir, tmp_path):
    write_tables(rec(ray_dir), tmp_path / "out", plots=False)
    tables = read_tables(tmp_path / "out")
    pd.testing.assert_frame_equal(tables["trials"], trials_frame(rec(ray_dir)))
    pd.testing.assert_frame_equal(trials_frame(tables["reports"]), tables["trials"])


# ---------------------------------------------------------------------- contract
def test_the_core_never_imports_ray_or_optuna_nor_knows_their_files():
    core = Path(results.__file__).parent
    top = {"cli", "bench", "integrations"}  # the top layers: the command line and the benchmarks
    for path in sorted(core.rglob("*.py")):
        if path.relative_to(core).parts[0] in top:
            continue
        text = path.read_text()
        imported = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        # Not even lazily, and no knowledge of their files: the adapters turn trials into records.
        assert not imported & {"ray", "optuna"}, path
        assert "__import__" not in text, path
        for name in ("result.json", "progress.csv", "experiment_state", "error.txt", "user_attrs", "study.db"):
            assert name not in text, (path, name)


def test_report_columns_are_the_epoch_report_fields():
    from auxilearn_hpo.report import EpochReport

    report = EpochReport(epoch=2, step=10, val_metric=0.7, train_loss=0.3, task_losses={"main": 0.2, "aux": 0.4},
                         weights={"main": 1.0, "aux": 0.3}, hypersteps=4, hypergrad_norm=0.5, seconds=1.5,
                         higher_is_better=1.0)
    flat = report.flat()
    # One definition: the reports frame's standard columns are the record's fields, per-task ones expanded.
    assert list(flat) == ["epoch", "step", "val_metric", "train_loss", "task_losses/main", "task_losses/aux",
                          "weights/main", "weights/aux", "hypersteps", "hypersteps_skipped", "hypergrad_norm",
                          "solver_iterations", "residual", "seconds", "test_metric", "higher_is_better",
                          "learn_test_metric", "refit_gain", "refit_score"]
    assert flat["weights/aux"] == 0.3 and flat["hypersteps"] == 4 and math.isnan(flat["residual"])
    assert type(flat["epoch"]) is int and type(flat["val_metric"]) is float
    frame = reports_frame([("a", {}, [flat])])
    assert [c for c in frame.columns if c not in ("trial_id", "framework", "status", "reason")] == list(flat)
    assert EpochReport.from_dict(report.to_dict()) == report
    assert EpochReport(1, weights={"aux": math.inf}, val_metric=0.5).non_finite() == ["weights/aux"]


def test_docstring_examples_run():
    outcome = doctest.testmod(results, optionflags=doctest.ELLIPSIS)
    assert outcome.attempted >= 8 and outcome.failed == 0


# ------------------------------------------------------------ statuses, atomic writes, corrupt tables
def write_experiment_state(exp, trials):
    """experiment_state-*.json as Ray Tune 2.60 writes it: trial_data = [[trial JSON, runtime JSON], ...]."""
    data = [[json.dumps({"trial_id": tid, "status": status, "config": config, "relative_logdir": logdir}), "{}"]
            for tid, status, config, logdir in trials]
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": data, "runner_data": {}, "stats": {}}))


def test_ray_folder_statuses_come_from_the_experiment_state(tmp_path):
    exp = tmp_path / "exp"
    three = [make_report(e, 0.1 * e, 0.5, 1.0) for e in (1, 2, 3)]
    cfg = {"weighting": "linear", "epochs": 3}
    a = write_ray_trial(exp, 0, cfg, ray_lines("abcde_00000", cfg, three))
    b = write_ray_trial(exp, 1, cfg, ray_lines("abcde_00001", cfg, three[:1]))
    c = write_ray_trial(exp, 2, cfg, ray_lines("abcde_00002", cfg, three[:2]))
    write_experiment_state(exp, [("abcde_00000", "TERMINATED", cfg, a.name),
                                 ("abcde_00001", "TERMINATED", cfg, b.name),  # stopped by ASHA
                                 ("abcde_00002", "RUNNING", cfg, c.name),  # Ctrl-C mid-trial
                                 ("abcde_00003", "PENDING", {"weighting": "nonlinear", "epochs": 3}, "")])
    df = trials_frame(rec(tmp_path)).set_index("trial_id").sort_index()
    # Short of its epochs is only "pruned" when Ray ended it; interrupted and never-started trials say so.
    assert df["status"].to_dict() == {"abcde_00000": "completed", "abcde_00001": "pruned",
                                      "abcde_00002": "interrupted", "abcde_00003": "not_started"}
    assert df.loc["abcde_00003", "config/weighting"] == "nonlinear" and df.loc["abcde_00003", "epochs"] == 0


def test_ray_folder_with_a_cut_short_experiment_state_still_reads_the_trials(tmp_path):
    exp = tmp_path / "exp"
    cfg = {"epochs": 1}
    write_ray_trial(exp, 0, cfg, ray_lines("abcde_00000", cfg, [make_report(1, 0.5, 0.1, 1.0)]))
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{\\"tri')
    assert trials_frame(rec(tmp_path))["status"].tolist() == ["completed"]


def test_result_grid_statuses_label_interrupted_and_not_started(result_grid):
    class TrialStub:
        def __init__(self, trial_id, status):
            self.trial_id, self.status = trial_id, status

    class Analysis:
        trials = [TrialStub("abcde_00000", "TERMINATED"), TrialStub("abcde_00001", "PAUSED"),
                  TrialStub("abcde_00002", "PENDING"), TrialStub("abcde_00003", "ERROR")]

    result_grid._experiment_analysis = Analysis()
    df = trials_frame(rec(result_grid)).set_index("trial_id").sort_index()
    # 2 reported an epoch before it was put back in the queue: interrupted, not "not started".
    assert df["status"].tolist() == ["completed", "interrupted", "interrupted", "failed"]


@pytest.mark.parametrize("bad", [{"val_metric": NAN}, {"weights/aux": math.inf}])
def test_a_diverged_trial_is_failed_whatever_the_framework_said(tmp_path, bad, optuna_mod):
    reports = [make_report(1, 0.5, 0.1, 1.0), {**make_report(2, 0.6, 0.1, 1.0), **bad}]
    cfg = {"weighting": "linear", "update_every": 5, "epochs": 2}
    write_ray_trial(tmp_path / "exp", 0, cfg, ray_lines("abcde_00000", cfg, reports))
    # Ray ended it without error (TERMINATED); its last report is not finite: failed, as Optuna says.
    assert trials_frame(rec(tmp_path))["status"].tolist() == ["failed"]
    if not math.isnan(reports[-1]["val_metric"]):  # Optuna itself records a NaN value as FAIL
        study = make_study(optuna_mod, [{"config": cfg, "state": "COMPLETE", "reports": reports}])
        assert trials_frame(rec(study))["status"].tolist() == ["failed"]
    assert trials_frame([("a", cfg, reports, "completed")])["status"].tolist() == ["failed"]


def test_write_tables_replaces_files_atomically(study, tmp_path, monkeypatch):
    write_tables(rec(study), tmp_path, plots=False)
    before = {name: (tmp_path / name).read_bytes() for name in ("reports.csv", "trials.csv", "weights.csv")}
    real = pd.DataFrame.to_csv

    def half_then_crash(self, path, *args, **kwargs):
        if "weights" in str(path):
            Path(path).write_text("trial_id,ep")  # cut short, as by a crash or Ctrl-C mid-write
            raise KeyboardInterrupt
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_tables(rec(study.trials[:2]), tmp_path, plots=False)
    # Nothing was replaced: the old tables are whole and consistent, and no temporary file is left.
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports.csv", "trials.csv", "weights.csv"]


@pytest.mark.parametrize("name", ["reports.csv", "trials.csv", "weights.csv"])
@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02PK\x03\x04garbage", b"a,b\n1,2\n", b'trial_id,epoch\n"3'])
def test_corrupt_tables_give_one_line_errors(study, tmp_path, name, content):
    write_tables(rec(study), tmp_path, plots=False)
    (tmp_path / name).write_bytes(content)
    with pytest.raises(TableError) as info:
        read_tables(tmp_path)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_result_grid_after_ctrl_c_takes_the_saved_state_over_the_stopped_live_trials(result_grid, tmp_path):
    class TrialStub:
        def __init__(self, trial_id):
            self.trial_id, self.status = trial_id, "TERMINATED"  # what Ray leaves in memory after stopping them
            self.config = {"weighting": "nonlinear", "epochs": 3}

    class Analysis:
        trials = [TrialStub(f"abcde_0000{i}") for i in range(4)]

    exp = tmp_path / "exp"
    exp.mkdir()
    cfg = {"epochs": 3}
    write_experiment_state(exp, [("abcde_00000", "TERMINATED", cfg, ""), ("abcde_00001", "RUNNING", cfg, ""),
                                 ("abcde_00002", "PENDING", cfg, ""), ("abcde_00003", "ERROR", cfg, "")])
    result_grid._experiment_analysis = Analysis()
    result_grid.experiment_path = str(exp)
    never_ran = FakeResult([], {}, None, tmp_path / "auxilearn_abcde_00004_4")  # PENDING: no report, no config
    result_grid._results.append(never_ran)
    Analysis.trials.append(TrialStub("abcde_00004"))
    write_experiment_state(exp, [("abcde_00000", "TERMINATED", cfg, ""), ("abcde_00001", "RUNNING", cfg, ""),
                                 ("abcde_00002", "PENDING", cfg, ""), ("abcde_00003", "ERROR", cfg, ""),
                                 ("abcde_00004", "PENDING", {"weighting": "linear", "epochs": 3}, "")])
    df = trials_frame(rec(result_grid)).set_index("trial_id").sort_index()
    assert df["status"].tolist() == ["completed", "interrupted", "interrupted", "failed", "not_started"]
    # The trial that never ran keeps its sampled settings (from the saved state).
    assert df.loc["abcde_00004", "config/weighting"] == "linear"


def test_pcgrad_coefficients_get_their_own_columns_next_to_the_weights():
    report = {"epoch": 1, "weights": {"main": 1.0, "aux": 1.0}, "coefficients": {"main": 1.0, "aux": 3e5},
              "val_metric": 0.5}
    df = reports_frame([("pc", {"weighting": "pcgrad"}, [report], "completed")])
    assert df.loc[0, "weights/aux"] == 1.0 and df.loc[0, "coefficients/aux"] == 3e5
    columns = list(df.columns)
    assert columns.index("weights/aux") < columns.index("coefficients/main") < columns.index("hypersteps")


def test_the_trials_table_says_why_a_failed_trial_failed_and_keeps_it_through_csv(tmp_path):
    from auxilearn_hpo.records import TrialRecord

    report = {"epoch": 1, "val_metric": 0.5, "higher_is_better": 1.0}
    ok = TrialRecord("0", "optuna", {}, [report], status="completed")
    killed = TrialRecord("1", "optuna", {}, [report], status="failed", reason="killed: its worker stopped heartbeating")
    frame = trials_frame([ok, killed]).set_index("trial_id")
    assert frame.loc["1", "reason"] == "killed: its worker stopped heartbeating" and pd.isna(frame.loc["0", "reason"])
    write_tables([ok, killed], tmp_path, plots=False)
    again = read_tables(tmp_path)
    pd.testing.assert_frame_equal(again["trials"], trials_frame([ok, killed]))
    pd.testing.assert_frame_equal(trials_frame(again["reports"]), again["trials"])
