"""The Optuna adapter: objective == a direct Trial run, pruning, resume, dead workers, shared studies."""
from __future__ import annotations

import copy
import importlib
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.integrations import optuna as aux_optuna
from auxilearn_hpo.integrations.optuna import (
    Categorical, IntRange, LogUniform, Uniform, default_space, objective, resolve_storage, run, suggest,
)
from auxilearn_hpo.bench import studies
from auxilearn_hpo.integrations.optuna import workers
from auxilearn_hpo.integrations.optuna.storage import report_heartbeat_errors
from auxilearn_hpo.integrations.space import default_point, flat_params
from auxilearn_hpo.integrations.trial import Trial

optuna = pytest.importorskip("optuna")
from optuna.testing.pruners import DeterministicPruner  # noqa: E402
from optuna.trial import FixedTrial, TrialState  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SPACE = {"update_every": [1, 2], "steps": IntRange(1, 3), "solver": ["neumann", "cg"], "aux_lr": LogUniform(1e-3, 1e-1)}
CONFIG = {"update_every": 1, "steps": 2, "solver": "cg", "aux_lr": 0.01}


def journal(path) -> "optuna.storages.JournalStorage":
    """A journal-file storage, as Optuna users write it."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


# ------------------------------------------------------------------------------------------ tiny tasks
def tiny_task(config: dict, mode: str = "min") -> Task:
    """2-D linear regression: main (noisy), helpful (same optimum), harmful (other optimum); 64 samples."""
    seed = int(config.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, -4.0]])  # (2, 3): one column per task

    def draw(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 2, generator=g)
        y = x @ w
        return x, (y + torch.tensor([2.0, 0.1, 0.1]) * torch.randn(n, 3, generator=g)) if noisy else y

    x, y = draw(64, True)
    val, test = draw(64, False), draw(64, False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(2, 1, bias=False)
    sign = 1.0 if mode == "min" else -1.0

    def metric_fn(m: nn.Module, loader: DataLoader) -> float:
        xs, ys = loader.dataset.tensors
        with torch.no_grad():
            return sign * float(((m(xs)[:, 0] - ys[:, 0]) ** 2).mean())

    return Task(
        name="tiny", model=model, loss_fn=lambda m, batch: (m(batch[0]) - batch[1]) ** 2,
        train_loader=DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16, shuffle=True,
                                generator=torch.Generator().manual_seed(seed + 1)),
        aux_loader=DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16),
        val_loader=DataLoader(TensorDataset(*val), batch_size=64),
        test_loader=DataLoader(TensorDataset(*test), batch_size=64),
        metric_fn=metric_fn, metric_name="mse" if mode == "min" else "neg_mse", mode=mode,
        task_names=["main", "helpful", "harmful"], defaults={"epochs": 2, "lr": 0.05},
    )


def tiny_task_max(config: dict) -> Task:
    return tiny_task(config, mode="max")


def slow_tiny_task(config: dict) -> Task:
    """``tiny_task`` that takes 0.2 s longer, so that two workers started together both get trials."""
    time.sleep(0.2)
    return tiny_task(config)


def dying_task(config: dict) -> Task:
    """Kills its process mid-trial, as a crash or `kill -9` would."""
    os._exit(3)


def dying_later_task(config: dict) -> Task:
    """Kills its process 1.5 s into the trial: after Optuna's heartbeat thread has beaten once."""
    time.sleep(1.5)
    os._exit(3)


def interrupted_task(config: dict) -> Task:
    """Stopped by Ctrl-C while the trial builds its task."""
    raise KeyboardInterrupt


def broken_task(config: dict) -> Task:
    """A trial that fails with an error of its own (the same every time)."""
    raise RuntimeError("this task cannot be built")


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter that can import this module as ``test_optuna``."""
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=_ENV)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is faster and does not fight other processes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# ------------------------------------------------------------------------------------------ space
def test_default_space_holds_the_documented_settings():
    space = default_space()
    # the outer settings the design names, with their ranges
    assert space["update_every"] == Categorical((1, 3, 8, 16))
    assert space["steps"] == Categorical((1, 3, 5, 10))
    assert space["solver"] == Categorical(("neumann", "cg"))
    assert space["weighting"] == Categorical(("linear", "nonlinear"))
    assert space["aux_lr"] == LogUniform(1e-3, 1.0)
    assert space["weighting_options"] == {"positive": Categorical(("exp", "clamp")),
                                          "normalize": Categorical(("main", None)),
                                          "init_total": LogUniform(0.03, 3.0)}
    assert "alpha" not in space  # the learner's alpha="auto" applies


def test_suggest_accepts_specs_shorthands_optuna_distributions_and_fixed_values():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = {
        "update_every": IntRange(1, 20), "steps": [1, 3], "solver": CategoricalDistribution(["cg"]),
        "aux_lr": FloatDistribution(1e-4, 1e-1, log=True), "warmup_steps": IntDistribution(0, 4),
        "alpha": Uniform(0.0, 1.0), "lr": LogUniform(1e-3, 1.0), "seed": 7,
    }
    params = {"update_every": 5, "steps": 3, "solver": "cg", "aux_lr": 0.01, "warmup_steps": 2, "alpha": 0.5,
              "lr": 0.1}
    # FixedTrial answers every suggest_* call with its params; the fixed seed passes through
    assert suggest(FixedTrial(params), space) == {**params, "seed": 7}


def test_suggest_draws_within_ranges_with_a_real_trial():
    trial = optuna.create_study().ask()
    config = suggest(trial, default_space())
    # one value per setting, inside its range
    assert config["update_every"] in (1, 3, 8, 16) and config["solver"] in ("neumann", "cg")
    assert 1e-3 <= config["aux_lr"] <= 1.0 and "alpha" not in config
    assert 0.03 <= config["weighting_options"]["init_total"] <= 3.0
    # and Optuna records them as parameters, nested ones as outer/inner
    options = config.pop("weighting_options")
    assert trial.params == {**config, **{f"weighting_options/{k}": v for k, v in options.items()}}


@pytest.mark.parametrize("kwargs", [
    {"space": {"update_evry": [1, 2]}}, {"fixed": {"update_evry": 3}},
], ids=["space", "fixed"])
def test_unknown_setting_raises_value_error_naming_it(kwargs):
    # a typo is caught before any trial runs, and named
    with pytest.raises(ValueError, match="update_evry"):
        objective(tiny_task, **kwargs)
    with pytest.raises(ValueError, match="update_evry"):
        run(tiny_task, 1, **kwargs)


def test_suggest_rejects_unknown_setting():
    with pytest.raises(ValueError, match="bogus"):
        suggest(FixedTrial({}), {"bogus": 1})


@pytest.mark.parametrize("make", [
    lambda: Categorical(()), lambda: Categorical(([1],)), lambda: LogUniform(0.0, 1.0), lambda: Uniform(2.0, 1.0),
    lambda: IntRange(3, 1), lambda: IntRange(0, 5, log=True), lambda: IntRange(1, 2.5),
], ids=["empty", "list-choice", "log-zero", "low>high", "int-low>high", "int-log-zero", "int-float"])
def test_specs_validate_at_construction(make):
    with pytest.raises((ValueError, TypeError)):
        make()


# ------------------------------------------------------------------------------------------ objective
def test_objective_value_and_attrs_equal_a_direct_trial_run():
    trial = FixedTrial(CONFIG)
    value = objective(tiny_task, SPACE)(trial)
    reports = list(Trial(tiny_task, CONFIG).reports())
    # the objective trains nothing itself: same config, same numbers as the shared Trial; its
    # value is the score of the final model, here a refit on all labelled data (its own last epochs)
    assert value == pytest.approx(reports[-1].refit_score, rel=1e-12)
    assert value != pytest.approx((reports[0].val_metric + reports[1].val_metric) / 2, rel=1e-6)
    attrs = trial.user_attrs
    assert attrs["score"] == value and attrs["val_source"] == "validation" and attrs["cpu_s"] > 0
    assert attrs["weights"] == reports[-1].weights
    assert attrs["hypersteps"] == reports[-1].hypersteps > 0
    assert attrs["hypersteps_skipped"] == reports[-1].hypersteps_skipped
    assert attrs["test_metric"] == reports[-1].test_metric
    assert attrs["best_metric"] == min(r.val_metric for r in reports)
    assert attrs["higher_is_better"] == 0.0 and attrs["metric_name"] == "mse" and attrs["epochs"] == 2
    assert attrs["config"] == CONFIG
    # reports are the flattened reports, JSON-safe (NaN -> None)
    assert [r["val_metric"] for r in attrs["reports"]] == [r.val_metric for r in reports]
    assert set(attrs["reports"][0]) == set(reports[0].flat())
    json.dumps(attrs, allow_nan=False)


def test_fixed_settings_override_the_space():
    trial = FixedTrial({k: v for k, v in CONFIG.items() if k != "solver"})
    objective(tiny_task, SPACE, fixed={"solver": "neumann", "epochs": 1})(trial)
    # method is not searched (not a param) and the fixed value reaches the trial
    assert trial.user_attrs["config"]["solver"] == "neumann" and "solver" not in trial.params
    assert trial.user_attrs["epochs"] == 1


def test_objective_reports_every_epoch_as_an_intermediate_value():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(objective(tiny_task, SPACE, fixed={"epochs": 3, "final_data": "train"}), n_trials=1)
    t = study.trials[0]
    # steps are the 1-based epochs; each is the score so far, the last one is the trial's value:
    # the mean val_metric of the last 3 epochs (selection_score; the final model is the learning
    # run's, no refit)
    assert sorted(t.intermediate_values) == [1, 2, 3]
    vals = [r["val_metric"] for r in t.user_attrs["reports"]]
    assert t.intermediate_values[1] == pytest.approx(vals[0])
    assert t.value == t.intermediate_values[3] == t.user_attrs["score"] == pytest.approx(sum(vals) / 3)


def test_pruned_trial_stops_after_first_report_and_keeps_its_reports():
    study = optuna.create_study(pruner=DeterministicPruner(True))
    trial = study.ask()
    # the pruner says "prune" at the first report, so training stops after epoch 1
    with pytest.raises(optuna.TrialPruned):
        objective(tiny_task, SPACE, fixed={"epochs": 3})(trial)
    study.optimize(objective(tiny_task, SPACE, fixed={"epochs": 3}), n_trials=1)
    t = study.trials[-1]
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]
    # what is known is stored before raising; the test metric is only computed at the end
    assert len(t.user_attrs["reports"]) == 1 and t.user_attrs["epochs"] == 1
    assert set(t.user_attrs["weights"]) == {"main", "helpful", "harmful"}
    assert t.user_attrs["test_metric"] is None


@pytest.mark.parametrize("epochs, first", [(2, 1), (4, 1), (8, 2), (10, 3), (12, 3)])
def test_no_trial_is_pruned_before_the_warmup(epochs, first):
    study = optuna.create_study(pruner=DeterministicPruner(True))
    study.optimize(objective(tiny_task, SPACE, fixed={"epochs": epochs}), n_trials=1)
    t = study.trials[0]
    # a pruner that always says "prune" is first asked at ceil(0.25 * epochs): the trial ran that far
    assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == list(range(1, first + 1))
    assert first == aux_optuna.warmup_epochs(epochs)


def test_prune_warmup_is_a_fraction():
    study = optuna.create_study(pruner=DeterministicPruner(True))
    study.optimize(objective(tiny_task, SPACE, fixed={"epochs": 4}, prune_warmup=0.5), n_trials=1)
    # half of 4 epochs: pruned at epoch 2, never at epoch 1
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    with pytest.raises(ValueError, match="prune_warmup must be a fraction"):
        objective(tiny_task, SPACE, prune_warmup=1.5)


def test_warm_started_trial_starts_from_the_stored_weights():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    fixed = {"epochs": 3, "update_every": 1, "weighting": "linear"}
    # trial 0 learns its weights fast; trials 1 and 2 barely move theirs (aux_lr 1e-9)
    study.enqueue_trial({"aux_lr": 0.5})
    study.optimize(objective(tiny_task, {"aux_lr": LogUniform(1e-9, 1.0)}, fixed=fixed), n_trials=1)
    learned = study.trials[0].user_attrs["weights"]
    # the same trial run directly, without warm start: its weights after one epoch (they barely move)
    init = next(Trial(tiny_task, {**fixed, "aux_lr": 1e-9}).reports()).weights
    assert learned["harmful"] < 0.5 * init["harmful"]  # trial 0 moved its harmful weight well down
    space = {"aux_lr": LogUniform(1e-9, 1.0)}
    for warm in (True, False):
        study.enqueue_trial({"aux_lr": 1e-9})
        study.optimize(objective(tiny_task, space, fixed={**fixed, "warm_start": warm}), n_trials=1)
    warm_t, cold_t = study.trials[1], study.trials[2]
    # the warm-started trial starts from trial 0's learned weights (and keeps them: aux_lr 1e-9) ...
    assert warm_t.user_attrs["warm_started_from"] == 0
    first = warm_t.user_attrs["reports"][0]
    for name, value in learned.items():
        assert first[f"weights/{name}"] == pytest.approx(value, rel=1e-5), name
    # ... while a trial without warm start starts from the initial weights
    assert "warm_started_from" not in cold_t.user_attrs
    for name, value in init.items():
        assert cold_t.user_attrs["reports"][0][f"weights/{name}"] == pytest.approx(value, rel=1e-6), name


def test_warm_start_ignores_stored_weights_of_another_parametrisation():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    base = {"epochs": 1, "weighting": "linear"}
    study.optimize(objective(tiny_task, {}, fixed={**base, "weighting_options": {"positive": "clamp"}}), n_trials=1)
    study.optimize(objective(tiny_task, {}, fixed={**base, "warm_start": True}), n_trials=1)
    # plain weights never load as log-weights: no compatible trial, a fresh start
    assert study.trials[1].user_attrs["warm_started_from"] is None


def _learned_then(study, fixed, space_fixed):
    """Trial 0 learns its weights fast; then one trial with ``space_fixed`` (warm starts on)."""
    study.enqueue_trial({"aux_lr": 0.5})
    study.optimize(objective(tiny_task, {"aux_lr": LogUniform(1e-9, 1.0)}, fixed=fixed), n_trials=1)
    study.optimize(objective(tiny_task, {}, fixed={**fixed, "warm_start": True, **space_fixed}), n_trials=1)
    return study.trials[0], study.trials[-1]


def test_held_trial_trains_with_the_stored_weights_times_the_gain():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    fixed = {"epochs": 3, "update_every": 1, "weighting": "linear"}
    source, held = _learned_then(study, fixed, {"hold_gain": 10.0})
    learned = source.user_attrs["weights"]
    assert held.user_attrs["warm_started_from"] == 0 and held.user_attrs["held"] is True
    # every epoch trains with the learned weights, the auxiliaries times 10, and takes no hyperstep
    for report in held.user_attrs["reports"]:
        for name, value in learned.items():
            assert report[f"weights/{name}"] == pytest.approx(value * (1 if name == "main" else 10), rel=1e-5)
        assert report["hypersteps"] == 0
    # it is the same run as a fixed-weight trial with those weights (reference: trained directly)
    weights = {k: v * (1 if k == "main" else 10) for k, v in learned.items()}
    direct = list(Trial(tiny_task, {"epochs": 3, "weighting": "fixed",
                                    "weighting_options": {"weights": weights}}).reports())
    assert [r["val_metric"] for r in held.user_attrs["reports"]] == pytest.approx(
        [r.val_metric for r in direct], rel=1e-5)
    # its curve is no reference for the pruner: Optuna gets its last epoch's score only
    assert held.intermediate_values == {3: held.value}
    # whatever weighting a held trial names, it holds the best linear trial's weights
    for other in ({"weighting": "nonlinear"}, {"weighting_options": {"positive": "clamp"}}):
        study.optimize(objective(tiny_task, {}, fixed={**fixed, **other, "warm_start": True, "hold_gain": 10.0}),
                       n_trials=1)
        assert study.trials[-1].user_attrs["twin_of"] == held.number
    # the trials table says which trials held whose weights
    recs = aux_optuna.records(study)
    assert [r.config.get("held_from") for r in recs] == [None, 0, 0, 0]
    # a held trial stores no weighting: the next warm start still comes from trial 0
    assert "weighting_state" not in held.user_attrs
    study.optimize(objective(tiny_task, {}, fixed={**fixed, "warm_start": True}), n_trials=1)
    assert study.trials[-1].user_attrs["warm_started_from"] == 0 and study.trials[-1].user_attrs["held"] is False


def test_a_held_trial_that_would_repeat_a_finished_one_is_pruned_untrained():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    fixed = {"epochs": 3, "update_every": 1, "weighting": "linear"}
    _, held = _learned_then(study, fixed, {"hold_gain": 3.0})
    # other hyperstep settings do not change a held trial's training ...
    again = {**fixed, "warm_start": True, "hold_gain": 3.0, "solver": "cg", "steps": 7, "aux_lr": 0.01}
    study.optimize(objective(tiny_task, {}, fixed=again), n_trials=1)
    twin = study.trials[-1]
    # ... so it trains nothing: pruned at once (a sampler learns to leave a repeat), no epochs;
    # the finished trial keeps the result
    assert twin.user_attrs["twin_of"] == held.number and twin.state == TrialState.PRUNED
    assert "reports" not in twin.user_attrs and twin.intermediate_values == {} and twin.user_attrs["cpu_s"] < 0.5
    assert study.best_trial.number != twin.number
    # ... as training it confirms (the signature's claim, checked by running both)
    stored = study.trials[0].user_attrs["weighting_state"]
    runs = []
    for config in ({**fixed, "warm_start": True, "hold_gain": 3.0}, again):
        run = Trial(tiny_task, config)
        assert run.warm_start(stored) and run.held
        runs.append(([r.val_metric for r in run.reports()], run.held_signature()))
    assert runs[0] == runs[1]
    # another gain or another seed is another run
    study.optimize(objective(tiny_task, {}, fixed={**again, "hold_gain": 30.0}), n_trials=1)
    assert "twin_of" not in study.trials[-1].user_attrs


def test_a_held_trial_is_never_pruned():
    fixed = {"epochs": 4, "update_every": 1, "weighting": "linear"}
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({"aux_lr": 0.5})
    study.optimize(objective(tiny_task, {"aux_lr": LogUniform(1e-9, 1.0)}, fixed=fixed), n_trials=1)
    study.pruner = DeterministicPruner(True)  # prunes every trial it is asked about
    for gain in (None, 2.0):
        study.optimize(objective(tiny_task, {}, fixed={**fixed, "warm_start": True, "hold_gain": gain},
                                 prune_warmup=0.0), n_trials=1)
    learning, held = study.trials[1], study.trials[2]
    assert learning.state == TrialState.PRUNED and learning.user_attrs["epochs"] == 1
    assert held.state == TrialState.COMPLETE and held.user_attrs["epochs"] == 4 and held.user_attrs["held"]


def test_held_trial_checkpoint_resumes_held():
    fixed = {"epochs": 2, "update_every": 1, "weighting": "linear", "aux_lr": 0.5}
    source = Trial(tiny_task, fixed)
    list(source.reports())
    config = {**fixed, "epochs": 4, "warm_start": True, "hold_gain": 5.0}
    held = Trial(tiny_task, config)
    assert held.warm_start(source.weighting_state()) and held.held
    reports = held.reports()
    first = [next(reports), next(reports)]
    state = copy.deepcopy(held.state_dict())  # the learner's state holds references
    assert set(state["held_weights"]) == {"main", "helpful", "harmful"}
    rest = list(reports)
    # a new trial of the same config (it would learn) resumes the held run from the checkpoint
    resumed = Trial(tiny_task, config)
    resumed.load_state_dict(state)
    assert resumed.held and resumed.weighting_state() == {}
    again = list(resumed.reports())
    assert [r.val_metric for r in again] == [r.val_metric for r in rest]
    assert again[-1].weights == first[0].weights


@pytest.mark.parametrize("gain", [0, -1.0, float("nan"), float("inf"), True, "10"])
def test_hold_gain_must_be_a_positive_number(gain):
    with pytest.raises(ValueError, match="hold_gain must be None or a finite number > 0"):
        Trial(tiny_task, {"hold_gain": gain})


def test_study_direction_must_match_the_task_mode():
    study = optuna.create_study(direction="minimize")
    # a "max" task in a minimising study would rank trials backwards
    with pytest.raises(ValueError, match="maximize"):
        study.optimize(objective(tiny_task_max, SPACE), n_trials=1)


def test_named_benchmark_task():
    pytest.importorskip("auxilearn_hpo.tasks")
    trial = FixedTrial(CONFIG)
    value = objective("toy", SPACE, fixed={"epochs": 1})(trial)
    assert math.isfinite(value) and set(trial.user_attrs["weights"]) == {"main", "helpful", "harmful"}


# ------------------------------------------------------------------------------------------ run
def test_run_in_memory_returns_one_row_per_trial_and_the_study():
    df, study = run(tiny_task, 3, space=SPACE)
    assert len(df) == 3 and len(study.trials) == 3
    # direction comes from the task's mode
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert all("weights" in t.user_attrs for t in study.trials)


def test_run_maximises_a_max_task():
    _, study = run(tiny_task_max, 1, space=SPACE)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_run_with_threads_finishes_exactly_n_trials():
    _, study = run(tiny_task, 4, space=SPACE, n_jobs=2)
    assert len(_finished(study)) == 4 == len(study.trials)


def test_run_prunes_with_the_given_pruner():
    _, study = run(tiny_task, 2, space=SPACE, pruner=DeterministicPruner(True))
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2


def test_sqlite_study_resumes_to_the_total_without_duplicates(tmp_path):
    storage = tmp_path / "study.db"
    _, first = run(tiny_task, 2, space=SPACE, storage=f"sqlite:///{storage}")
    assert len(first.trials) == 2
    df, study = run(tiny_task, 4, space=SPACE, storage=f"sqlite:///{storage}")
    # n_trials is the study's total: the second call ran only the 2 missing trials
    assert len(df) == 4
    assert [t.number for t in study.trials] == [0, 1, 2, 3] and len(_finished(study)) == 4
    # the resumed sampler does not replay the first draws
    assert len({t.params["aux_lr"] for t in study.trials}) == 4
    # a study already at its total runs nothing
    _, again = run(tiny_task, 4, space=SPACE, storage=f"sqlite:///{storage}")
    assert len(again.trials) == 4


def test_stored_direction_must_match(tmp_path):
    storage = journal(tmp_path / "study.log")
    run(tiny_task, 1, space=SPACE, storage=storage)
    with pytest.raises(ValueError, match="direction"):
        run(tiny_task_max, 1, space=SPACE, storage=storage)


def test_trial_left_running_by_a_killed_process_is_failed_and_replaced(tmp_path):
    # SQLite without a heartbeat: the fallback that looks for the worker's process on this host
    storage = tmp_path / "study.db"
    killed = _python(f"""
        import test_optuna as t
        from auxilearn_hpo.integrations.optuna import run
        run(t.dying_task, 3, space=t.SPACE, storage="sqlite:///{storage}", direction="minimize")
    """)
    assert killed.returncode == 3, killed.stderr
    stuck = optuna.load_study(study_name="auxilearn", storage=f"sqlite:///{storage}")
    assert [t.state for t in stuck.trials] == [TrialState.RUNNING]
    _, study = run(tiny_task, 2, space=SPACE, storage=f"sqlite:///{storage}")
    # the dead worker's trial is FAIL, and 2 trials finished besides it
    assert study.trials[0].state == TrialState.FAIL
    assert len(_finished(study)) == 2 and len(study.trials) == 3
    # the dead trial was the defaults' (trial 0): the next trial runs them again, and finishes
    defaults = flat_params(default_point(SPACE))
    assert study.trials[0].system_attrs["fixed_params"] == defaults
    assert study.trials[1].system_attrs["fixed_params"] == defaults
    assert study.trials[1].state == TrialState.COMPLETE and study.trials[2].system_attrs["fixed_params"] == {}
    # its record says why it failed; the others failed of nothing
    assert [r.reason for r in aux_optuna.records(study)] == ["killed: its worker process was gone", None, None]


def test_a_resumed_study_runs_the_defaults_again_after_their_trial_was_interrupted(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    defaults = flat_params(default_point(SPACE))
    with pytest.raises(KeyboardInterrupt):
        run(interrupted_task, 3, space=SPACE, storage=storage, direction="minimize")
    _, study = run(tiny_task, 3, space=SPACE, storage=storage)
    first, again = study.trials[0], study.trials[1]
    # Ctrl-C stopped the defaults' trial: the rerun starts with them, once
    assert first.state == TrialState.FAIL and first.user_attrs["interrupted"]
    assert aux_optuna.records(study)[0].reason == "interrupted (Ctrl-C)"
    assert again.state == TrialState.COMPLETE and {k: again.params[k] for k in defaults} == defaults
    assert [t.system_attrs.get("fixed_params") for t in study.trials] == [defaults, defaults, {}, {}]
    # a study that holds a finished defaults' trial never repeats it
    _, study = run(tiny_task, 4, space=SPACE, storage=storage)
    assert study.trials[-1].system_attrs.get("fixed_params") == {}


def test_defaults_that_failed_with_an_error_are_not_run_again(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run(broken_task, 1, space=SPACE, storage=storage, direction="minimize", catch=(RuntimeError,))
    _, study = run(tiny_task, 1, space=SPACE, storage=storage)
    # the error would come back: the place goes to the sampler
    assert aux_optuna.records(study)[0].reason == "RuntimeError: this task cannot be built"
    assert study.trials[1].system_attrs.get("fixed_params") == {} and study.trials[1].state == TrialState.COMPLETE


def test_heartbeat_fails_a_dead_workers_trial_and_the_callback_retries_its_settings(tmp_path):
    # SQLite with Optuna's heartbeat: the storage itself says which trial stopped beating.
    url = f"sqlite:///{tmp_path / 'study.db'}"
    killed = _python(f"""
        import test_optuna as t
        from auxilearn_hpo.integrations.optuna import run
        run(t.dying_later_task, 2, space=t.SPACE, storage={url!r}, direction="minimize", heartbeat_interval=1)
    """)
    assert killed.returncode == 3, killed.stderr
    start = time.monotonic()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    _, study = run(tiny_task, 2, space=SPACE, storage=url, heartbeat_interval=1, grace_period=2,
                   stale_trial_callback=retry, poll_interval=0.2)
    states = [t.state for t in study.trials]
    # the dead worker's trial 0 is FAIL (not lost, not left RUNNING); two trials finished besides it
    assert states.count(TrialState.FAIL) == 1 and study.trials[0].state == TrialState.FAIL
    assert len(_finished(study)) == 2 and len(study.trials) == 3
    # one of them is the callback's retry of trial 0, with trial 0's settings
    (retried,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert retried.state == TrialState.COMPLETE and retried.params == study.trials[0].params
    # its record says why it failed
    assert aux_optuna.records(study)[0].reason == "killed: its worker stopped heartbeating"
    # nobody looked for the process: Optuna waited out the grace period (2 s) after the last beat
    assert time.monotonic() - start < 30


def test_worker_liveness_check():
    here = {"host": socket.gethostname(), "ns": workers.pid_namespace(), "started": None}
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    # this process's parent lives; the finished child is gone
    assert not workers.worker_gone({**here, "pid": os.getppid()})
    assert workers.worker_gone({**here, "pid": dead_pid}) or os.name == "nt"
    # other hosts and other containers (PID namespaces) are never judged
    assert not workers.worker_gone({**here, "host": here["host"] + "-elsewhere", "pid": dead_pid})
    assert not workers.worker_gone({**here, "ns": "pid:[1]", "pid": dead_pid})
    assert not workers.worker_gone(None)


def test_two_worker_processes_share_one_journal_study(tmp_path):
    storage, n_trials = tmp_path / "shared.log", 8
    worker = f"""
        import sys, time, pathlib
        import test_optuna as t
        from auxilearn_hpo.integrations.optuna import run
        me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
        me.touch()
        while not other.exists():  # start together, so that both take trials
            time.sleep(0.01)
        run(t.slow_tiny_task, {n_trials}, space=t.SPACE, storage=t.journal({str(storage)!r}),
            study_name="shared")
    """
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(worker), str(me), str(other)],
                              cwd=str(ROOT), env=_ENV, stderr=subprocess.PIPE, text=True) for me, other in ((a, b), (b, a))]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    study = optuna.load_study(study_name="shared", storage=journal(storage))
    finished = _finished(study)
    # exactly n_trials finished across both workers; none lost, none duplicated
    assert len(finished) == n_trials
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert all(t.state != TrialState.RUNNING for t in study.trials)
    # both processes did some of the work
    assert len({t.user_attrs["worker"]["pid"] for t in finished}) == 2


# ------------------------------------------------------------------------------------------ storage
def test_resolve_storage_takes_urls_and_storage_objects_as_optuna_does(tmp_path, monkeypatch):
    assert resolve_storage(None) is None
    # any SQLAlchemy URL passes through
    assert resolve_storage("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_storage("mysql+pymysql://u@h/db") == "mysql+pymysql://u@h/db"
    memory = optuna.storages.InMemoryStorage()
    assert resolve_storage(memory) is memory
    log = journal(tmp_path / "s.log")
    assert resolve_storage(log) is log
    # a file path is not guessed from its suffix: the error says what to pass instead
    for path in (tmp_path / "s.db", str(tmp_path / "s.log")):
        with pytest.raises(ValueError, match=r"storage must be .*URL.*JournalStorage"):
            resolve_storage(path)


def test_driverless_postgresql_url_uses_psycopg3_when_psycopg2_is_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "psycopg" else
                        None if name == "psycopg2" else real(name, *a))
    # SQLAlchemy's default driver for postgresql:// is psycopg2; only psycopg 3 is installed here
    assert resolve_storage("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    # an explicit driver is kept
    assert resolve_storage("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"


def test_heartbeat_options_need_a_url():
    with pytest.raises(ValueError, match="heartbeat_interval apply to a storage given as a URL"):
        run(tiny_task, 1, space=SPACE, storage=optuna.storages.InMemoryStorage(), heartbeat_interval=1)
    with pytest.raises(ValueError, match="grace_period needs heartbeat_interval"):
        run(tiny_task, 1, space=SPACE, storage="sqlite:///:memory:", grace_period=3)


# ------------------------------------------------------------------------------------------ optional import
def test_missing_optuna_raises_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails
    monkeypatch.delitem(sys.modules, "auxilearn_hpo.integrations.optuna")
    import auxilearn_hpo.integrations as package

    monkeypatch.setattr(package, "optuna", None, raising=False)
    fresh = importlib.import_module("auxilearn_hpo.integrations.optuna")
    # importing the adapter and describing a space need no Optuna
    assert fresh is not aux_optuna and "aux_lr" in fresh.default_space()
    for use in (lambda: fresh.objective(tiny_task), lambda: fresh.run(tiny_task, 1)):
        with pytest.raises(ImportError, match=r"pip install auxilearn-hpo\[optuna\]") as info:
            use()
        # the original error is chained
        assert isinstance(info.value.__cause__, ImportError)


# ------------------------------------------------------------------------------------------ example
@pytest.mark.slow
def test_example_runs_in_smoke_mode(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "optuna_own_model.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=_ENV)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "optuna_own_model.db").exists()
    study = optuna.load_study(study_name="own_model", storage=f"sqlite:///{tmp_path / 'optuna_own_model.db'}")
    assert len(_finished(study)) == 4


# ------------------------------------------------------------------------- failures, divergence, Ctrl-C
class MetricAt:
    """A tiny task factory whose validation metric does ``what`` at epoch ``epoch`` (counted per trial)."""

    def __init__(self, epoch: int, what: str) -> None:
        self.epoch, self.what = epoch, what

    def __call__(self, config: dict) -> Task:
        task = tiny_task(config)
        calls = {"n": 0}
        inner = task.metric_fn

        def metric_fn(m, loader):
            if loader is task.val_loader:
                calls["n"] += 1
                if calls["n"] == self.epoch:
                    if self.what == "nan":
                        return math.nan
                    raise KeyboardInterrupt
            return inner(m, loader)

        task.metric_fn = metric_fn
        return task


def test_a_diverged_trial_stops_and_fails_with_its_reason(tmp_path):
    df, study = run(MetricAt(2, "nan"), n_trials=1, space=SPACE, fixed={"epochs": 4}, storage=None)
    (t,) = study.trials
    # Stopped at the first non-finite epoch (2 of 4), recorded FAIL with the reason, labelled failed.
    assert t.state == TrialState.FAIL and t.user_attrs["epochs"] == 2
    assert t.user_attrs["error"] == "diverged at epoch 2: val_metric not finite"
    assert df["status"].tolist() == ["failed"] and df["epochs"].tolist() == [2]


def test_caught_errors_fail_one_trial_and_the_study_goes_on(monkeypatch):
    calls = {"n": 0}

    def flaky(config):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("combiner 'conv' needs (B, T, H, W) losses,\ngot (B, T)")
        return tiny_task(config)

    df, study = run(flaky, n_trials=3, space=SPACE, fixed={"epochs": 1}, storage=None,
                    direction="minimize", catch=(ValueError,))
    states = [t.state for t in study.trials]
    # The bad trial is FAIL with a one-line reason; the study went on with the next trials.
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["error"] == "ValueError: combiner 'conv' needs (B, T, H, W) losses, got (B, T)"
    assert sorted(df["status"]) == ["completed", "completed", "failed"]


def test_uncaught_errors_still_propagate():
    def broken(config):
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        run(broken, n_trials=1, space=SPACE, fixed={"epochs": 1}, storage=None, direction="minimize")


def test_ctrl_c_marks_the_trial_interrupted_and_propagates(tmp_path):
    storage = journal(tmp_path / "study.log")
    with pytest.raises(KeyboardInterrupt):
        run(MetricAt(2, "interrupt"), n_trials=2, space=SPACE, fixed={"epochs": 3}, storage=storage)
    study = optuna.load_study(study_name="auxilearn", storage=storage)
    (t,) = study.trials
    from auxilearn_hpo.integrations.optuna import records as aux_optuna_records
    from auxilearn_hpo.results import trials_frame

    # Optuna records FAIL (so a rerun replaces it); the tables say interrupted, with the epoch it reached.
    assert t.state == TrialState.FAIL and t.user_attrs["interrupted"] is True
    frame = trials_frame(aux_optuna_records(study))
    assert frame["status"].tolist() == ["interrupted"] and frame["epochs"].tolist() == [1]


def test_two_processes_starting_on_a_new_sqlite_file_share_it(tmp_path):
    db = tmp_path / "new.db"
    code = """
        import sys, time
        from auxilearn_hpo.integrations.optuna import run
        from test_optuna import tiny_task, SPACE
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both start at the same moment
        run(tiny_task, n_trials=4, space=SPACE, fixed={"epochs": 1}, storage="sqlite:///" + sys.argv[1],
            direction="minimize")
    """
    start = str(time.time() + 3.0)
    prelude = f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
    procs = [subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), str(db), start],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=_ENV)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        # Before: one of them failed with sqlite3.OperationalError: table ... already exists.
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="auxilearn", storage=f"sqlite:///{db}")
    assert len(_finished(study)) == 4


# ---------------------------------------------------------------------- benchmark helpers
def test_optimize_within_stops_once_the_trials_cpu_reaches_the_budget():
    def func(trial):
        trial.set_user_attr("cpu_s", 1.0)
        x = trial.suggest_float("x", -1, 1)
        if trial.number == 1:
            raise optuna.TrialPruned()
        return x * x

    rows = studies.optimize_within(func, 3.5, direction="minimize", sampler=studies.tpe_sampler(0))
    # 1 + 1 + 1 < 3.5 <= 4 CPU-seconds: the fourth trial is the last
    assert [r["number"] for r in rows] == [0, 1, 2, 3]
    assert [r["state"] for r in rows] == ["complete", "pruned", "complete", "complete"]
    assert rows[1]["value"] is None and all(0 <= r["value"] <= 1 for r in rows if r["state"] == "complete")
    assert all(r["user_attrs"]["cpu_s"] == 1.0 for r in rows)
    assert len(studies.optimize_within(func, 100.0, direction="minimize", max_trials=2)) == 2


def test_count_finished_counts_complete_and_pruned_trials_in_a_journal(tmp_path):
    storage = studies.journal_storage(tmp_path / "study.log")
    study = optuna.create_study(study_name="s", storage=storage)
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None))
    assert studies.count_finished("s", studies.journal_storage(tmp_path / "study.log")) == 3


def test_the_benchmark_helpers_keep_their_old_adapter_path():
    # they moved to auxilearn_hpo.bench.studies; the adapter still finds them by name
    for name in aux_optuna.BENCH_HELPERS:
        assert getattr(aux_optuna, name) is getattr(studies, name)
    from auxilearn_hpo.integrations.optuna import optimize_within, tpe_sampler  # noqa: F401
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        aux_optuna.nothing  # noqa: B018


def test_a_new_study_starts_at_the_shipped_defaults_and_a_resumed_one_does_not_repeat_them(tmp_path):
    from auxilearn_hpo.integrations.space import default_point, flat_params

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    _, study = run(tiny_task, 2, space=SPACE, storage=storage)
    # the first trial runs the defaults the space can take (steps 3, neumann); the rest is drawn
    assert flat_params(default_point(SPACE)) == {"steps": 3, "solver": "neumann"}
    first = study.trials[0]
    assert {k: first.params[k] for k in ("steps", "solver")} == {"steps": 3, "solver": "neumann"}
    assert set(first.params) == set(SPACE)
    _, study = run(tiny_task, 4, space=SPACE, storage=storage)
    assert [t.params["aux_lr"] for t in study.trials].count(first.params["aux_lr"]) == 1
    # the default space: the first trial is the default learner, exactly
    _, study = run(tiny_task, 1, fixed={"epochs": 1})
    assert study.trials[0].params == flat_params(default_point(default_space()))
    assert study.trials[0].user_attrs["config"]["weighting_options"]["init_total"] == 0.45
    # a fixed weighting brings its own defaults; start_at_default=False leaves the sampler alone
    _, study = run(tiny_task, 1, fixed={"epochs": 1, "weighting": "nonlinear"})
    assert study.trials[0].params["weighting_options/init_total"] == 0.3
    _, study = run(tiny_task, 1, space=SPACE, start_at_default=False, sampler=optuna.samplers.RandomSampler(seed=3))
    reference = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    assert study.trials[0].params == suggest(reference.ask(), SPACE)  # the sampler's own first draw
    with pytest.raises(ValueError, match="start_at_default"):
        run(tiny_task, 1, space=SPACE, start_at_default=1)


def _can_write_now(path: Path) -> bool:
    """Whether another process can write to the SQLite file at once (busy timeout 0)."""
    code = ("import sqlite3, sys\n"
            "db = sqlite3.connect(sys.argv[1], timeout=0)\n"
            "try:\n    db.execute('INSERT INTO t VALUES (2)'); db.commit(); print('wrote')\n"
            "except sqlite3.OperationalError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "wrote"


def test_the_study_lock_leaves_sqlites_own_locks_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "study.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE t (x INTEGER)")
    db.execute("BEGIN IMMEDIATE")  # this process holds SQLite's write lock
    db.execute("INSERT INTO t VALUES (1)")
    assert not _can_write_now(path)
    with aux_optuna.storage_lock(f"sqlite:///{path}", "places:x"):
        pass
    # Closing a descriptor of the database file would have dropped that lock (POSIX locks belong to
    # the process); the study lock is a file of its own, so the lock still holds.
    assert not _can_write_now(path)
    assert (tmp_path / ".study.db.lock").exists()
    db.execute("COMMIT")
    assert _can_write_now(path)


def test_sqlite_storages_wait_for_a_busy_database(tmp_path):
    import sqlite3
    import threading

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = aux_optuna.open_storage(url, heartbeat_interval=10)
    study = optuna.create_study(storage=storage, study_name="s")
    holder = sqlite3.connect(tmp_path / "study.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database for 6 s, past Python's 5 s default
    release = threading.Timer(6.0, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    study.enqueue_trial({"x": 1.0})  # a write: waits instead of failing with "database is locked"
    release.join()
    assert time.monotonic() - started >= 5.5
    assert [t.params for t in study.get_trials()] == [{}] and study.get_trials()[0].state == TrialState.WAITING


def test_a_failed_heartbeat_is_one_log_line_not_a_traceback(tmp_path, monkeypatch, caplog):
    import sqlite3
    import threading

    passed_on = []
    monkeypatch.setattr(threading, "excepthook", lambda args: passed_on.append(args.exc_value))
    aux_optuna.open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat_interval=10)  # installs the hook
    report_heartbeat_errors()  # once only: not wrapped twice

    def record_heartbeat() -> None:  # what Optuna's heartbeat thread raises when SQLite stays locked
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as err:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from err

    def other() -> None:
        raise ValueError("not a heartbeat")

    with caplog.at_level("WARNING", logger="auxilearn_hpo.integrations.optuna"):
        for target, name in ((record_heartbeat, "Thread-7 (_record_heartbeat)"), (other, "Thread-8 (other)")):
            thread = threading.Thread(target=target, name=name)
            thread.start()
            thread.join()
    assert [r.getMessage() for r in caplog.records] == [
        "a trial's heartbeat could not be recorded (OperationalError: database is locked); workers sharing the "
        "study may fail that trial as stale"]
    # the heartbeat's error stops at the hook; every other thread's goes to the previous hook
    assert [type(e).__name__ for e in passed_on] == ["ValueError"]
