"""The search benchmark's bookkeeping against hand-computed trajectories.

The table is only as honest as these helpers: selection by validation (never test), cumulative
CPU in time order, trials counted only when they finish within a budget, the black-box target and
the speedup. FixedWeights itself is tested in test_baselines.py.
"""
import math

import pandas as pd
import pytest

from auxilearn_hpo.integrations import search_bench as sb

NAN = math.nan


def trials(approach, rows, benchmark="b"):
    """Events from ``(t_end, cpu_s, val, test)`` (final) or ``(t_end, cpu_s)`` (not final)."""
    out = []
    for i, r in enumerate(rows):
        final = len(r) == 4
        out.append({"benchmark": benchmark, "approach": approach, "trial": i, "t_end": r[0], "cpu_s": r[1],
                    "final": final, "val_metric": r[2] if final else NAN, "test_metric": r[3] if final else NAN})
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


# ---------------------------------------------------------------------- the budget table


@pytest.fixture
def events():
    return frame(
        # (ii) cum 2, 4, 8, 12: the last one finishes after the budget of 10
        trials("tpe_weights", [(1, 2.0, 0.5, 0.5), (2, 2.0, 0.3, 0.35), (3, 4.0, 0.2, 0.3), (4, 4.0, 0.1, 0.1)]),
        # (iii) three epochs of work, then two members finish at cum 5 and 6
        trials("pbt_weights", [(1, 1.5), (2, 1.5), (3, 1.0), (4, 1.0, 0.25, 0.32), (5, 1.0, 0.35, 0.28)]),
        # (i) cum 1, 2, 4
        trials("auxilearn", [(1, 1.0, 0.3, 0.31), (2, 1.0, 0.2, 0.29), (3, 2.0, 0.1, 0.2)]),
        trials("equal", [(1, 0.5, 0.6, 0.7)]),
    )


def test_summary_table_exact_values(events):
    table, target = sb.summary_table(events, "min", 10.0)
    # target: the better black-box answer at 100 % of the budget, min(0.3, 0.32)
    assert target == 0.3
    table = table.set_index("approach")
    assert list(table.index) == ["auxilearn", "tpe_weights", "pbt_weights", "equal"]
    expected = {
        #              trials cpu_used  @25%  @50%  @100% reach  speedup
        "auxilearn": (3, 4.0, 0.29, 0.2, 0.2, 2.0, 4.0),
        "tpe_weights": (3, 12.0, 0.5, 0.35, 0.3, 8.0, 1.0),
        "pbt_weights": (2, 6.0, NAN, 0.32, 0.32, NAN, NAN),
        "equal": (1, 0.5, 0.7, 0.7, 0.7, NAN, NAN),
    }
    cols = ["trials", "cpu_used_s", "test@25%", "test@50%", "test@100%", "reach_cpu_s", "speedup"]
    for approach, values in expected.items():
        got = [table.loc[approach, c] for c in cols]
        for c, g, e in zip(cols, got, values):
            assert (math.isnan(e) and math.isnan(g)) or g == pytest.approx(e, abs=1e-12), (approach, c, g, e)


def test_summary_table_without_black_box_has_no_target(events):
    table, target = sb.summary_table(events[events["approach"].isin(["auxilearn", "equal"])], "min", 10.0)
    assert math.isnan(target)
    assert table["reach_cpu_s"].isna().all() and table["speedup"].isna().all()
    assert table["test@100%"].tolist() == [0.2, 0.7]


def test_summary_table_max_mode():
    ev = frame(trials("tpe_weights", [(1, 1.0, 0.8, 0.80), (2, 1.0, 0.9, 0.85)]),
               trials("auxilearn", [(1, 0.5, 0.95, 0.9)]))
    table, target = sb.summary_table(ev, "max", 2.0, fractions=(0.5, 1.0))
    assert target == 0.85
    row = table.set_index("approach").loc["auxilearn"]
    assert row["reach_cpu_s"] == 0.5 and row["speedup"] == 4.0  # black box reached 0.85 at 2.0
    assert list(table.columns) == ["approach", "trials", "cpu_used_s", "test@50%", "test@100%", "reach_cpu_s",
                                   "speedup"]


# ---------------------------------------------------------------------- search spaces


def test_outer_config_maps_linear_exp_to_the_log_weight_combiner():
    optuna = pytest.importorskip("optuna")
    fixed = optuna.trial.FixedTrial({"weighting": "linear_exp", "aux_lr": 0.01, "update_every": 5, "steps": 3})
    assert sb._outer_config(fixed) == {"weighting": "linear", "aux_lr": 0.01, "update_every": 5, "steps": 3,
                                       "weighting_options": {"positive": "exp"}}
    fixed = optuna.trial.FixedTrial({"weighting": "nonlinear", "aux_lr": 0.1, "update_every": 1, "steps": 1})
    assert sb._outer_config(fixed)["weighting"] == "nonlinear"


def test_weights_config_gives_fixed_weights_per_auxiliary_task():
    optuna = pytest.importorskip("optuna")
    fixed = optuna.trial.FixedTrial({"w_helpful": 0.5, "w_harmful": 1e-3})
    config = sb._weights_config(fixed, ["helpful", "harmful"], (1e-4, 10.0))
    assert config == {"weighting": "fixed", "weighting_options": {"weights": {"helpful": 0.5, "harmful": 1e-3}}}


# ---------------------------------------------------------------------- the PBT trainable, without Ray running


def test_pbt_trainable_reports_cpu_and_takes_perturbed_weights_after_restore(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    import torch
    from ray import tune

    from auxilearn_hpo.integrations.ray_tune import CHECKPOINT_FILE, load_state

    reports, states = [], []

    def fake_report(metrics, checkpoint=None):
        reports.append(dict(metrics))
        states.append(load_state(checkpoint))

    monkeypatch.setattr(tune, "report", fake_report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    config = {"benchmark": "toy", "epochs": 2, "seed": 0, "w_helpful": 1.0, "w_harmful": 1.0}
    sb.pbt_trainable(config)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert all(r["cpu_s"] >= 0 for r in reports)
    assert math.isnan(reports[0]["test_metric"]) and math.isfinite(reports[1]["test_metric"])
    assert reports[0]["weights/harmful"] == 1.0

    # a PBT exploit: this member restarts from the epoch-1 checkpoint with perturbed weights
    torch.save(states[0], tmp_path / CHECKPOINT_FILE)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(tmp_path)))
    reports.clear()
    sb.pbt_trainable({**config, "w_harmful": 0.25})
    assert [r["epoch"] for r in reports] == [2]
    assert reports[0]["weights/harmful"] == 0.25 and reports[0]["weights/helpful"] == 1.0


# ---------------------------------------------------------------------- a tiny end-to-end run


@pytest.mark.slow
def test_main_tiny_budget_writes_table_and_trajectory(tmp_path, capsys):
    pytest.importorskip("optuna")
    assert sb.main(["--benchmarks", "toy", "--approaches", "auxilearn", "tpe_weights", "equal",
                    "--cpu-s", "0.3", "--processes", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy: budget 0.3 CPU-s" in out and "tpe_weights" in out and "process_time" in out
    events = pd.read_csv(tmp_path / "search_bench_events.csv")
    assert set(events["approach"]) == {"auxilearn", "tpe_weights", "equal"}
    # every approach ran until its trials' CPU reached the budget (equal: exactly one run)
    spent = events.groupby("approach")["cpu_s"].sum()
    assert spent["auxilearn"] >= 0.3 and spent["tpe_weights"] >= 0.3
    assert (events["approach"] == "equal").sum() == 1
    assert events["final"].all() and events["test_metric"].notna().all()
    table = pd.read_csv(tmp_path / "search_bench_table.csv")
    assert set(table["approach"]) == {"auxilearn", "tpe_weights", "equal"}
