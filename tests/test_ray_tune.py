"""Ray Tune adapter: reports and checkpoints, ASHA runs, retries, restore, bad input, the example.

Most behaviour is checked Ray-free by calling :func:`trainable` with ``tune.report`` and
``tune.get_checkpoint`` patched; the tests that need a running Ray share one runtime
(``ray_session`` in conftest.py) and a tiny task, so the whole file takes well under a minute.
"""
import dataclasses
import importlib
import json
import math
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.integrations.trial import Trial

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from auxilearn_hpo.integrations import ray_tune  # noqa: E402
from auxilearn_hpo.integrations.ray_tune import (  # noqa: E402
    CHECKPOINT_FILE, checkpoint_history, load_state, register, run, search_space, to_frame, trainable,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Ray workers cannot import this test module (pytest put its folder on sys.path, Ray's workers
# do not have it): ship its task factories by value.
from ray import cloudpickle  # noqa: E402  (Ray pickles with its own vendored copy)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

EPOCHS = 3
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ray_tune_own_model.py"


# ---------------------------------------------------------------------- a tiny task of our own
def _mse(model, loader):
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += float(((model(x)[:, 0] - y[:, 0]) ** 2).sum())
            count += len(x)
    return total / count


def _sq_errors(model, batch):
    x, y = batch
    return (model(x) - y) ** 2  # (B, 1) against (B, 3) -> (B, 3)


def tiny_task(config):
    """2-D linear regression, 64 training samples (16 of them the auxiliary set): a noisy main
    task, a helpful auxiliary (same optimum, low noise) and a harmful one (another optimum)."""
    seed = int(config.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -4.0]]).T  # (2, 3): one column per task

    def draw(n, noise):
        x = torch.randn(n, 2, generator=g)
        return x, x @ w + torch.tensor(noise) * torch.randn(n, 3, generator=g)

    train, aux = draw(48, [2.0, 0.1, 0.1]), draw(16, [2.0, 0.1, 0.1])
    val, test = draw(64, [0.0, 0.0, 0.0]), draw(64, [0.0, 0.0, 0.0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(2, 1, bias=False)
    return Task(
        name="tiny", model=model, loss_fn=_sq_errors,
        train_loader=DataLoader(TensorDataset(*train), batch_size=16, shuffle=True,
                                generator=torch.Generator().manual_seed(seed + 1)),
        aux_loader=DataLoader(TensorDataset(*aux), batch_size=16),
        val_loader=DataLoader(TensorDataset(*val), batch_size=64),
        test_loader=DataLoader(TensorDataset(*test), batch_size=64),
        metric_fn=_mse, metric_name="mse", mode="min", task_names=["main", "helpful", "harmful"],
        defaults={"epochs": EPOCHS, "lr": 0.05, "learner": {"aux_lr": 0.05, "update_every": 1}},
    )


class CrashOnce:
    """``tiny_task`` whose evaluation after epoch ``at_epoch`` raises once: the first attempt
    creates ``marker`` and crashes; every later attempt (marker present) trains normally."""

    def __init__(self, marker, at_epoch=2):
        self.marker, self.at_epoch = str(marker), at_epoch

    def __call__(self, config):
        task = tiny_task(config)
        calls = {"n": 0}

        def metric_fn(model, loader):
            if loader is task.val_loader:
                calls["n"] += 1
                if calls["n"] == self.at_epoch and not os.path.exists(self.marker):
                    Path(self.marker).touch()
                    raise RuntimeError(f"simulated crash in epoch {self.at_epoch}")
            return task.metric_fn(model, loader)

        return dataclasses.replace(task, metric_fn=metric_fn)


CONFIG = {"weighting": "linear", "solver": "neumann", "update_every": 2, "steps": 3, "epochs": EPOCHS}


# ---------------------------------------------------------------------- helpers
def direct_reports(config, task=tiny_task):
    """The flattened reports of an uninterrupted run outside Ray, and the final state."""
    trial = Trial(task, config)
    reports = [r.flat() for r in trial.reports()]
    return reports, trial.state_dict()


def same(a, b):
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def assert_same_metrics(got, expected):
    """Equal values except the epoch's wall time; NaN equals NaN."""
    keys = set(expected) - {"seconds"}
    assert keys <= set(got), sorted(keys - set(got))
    bad = {k: (got[k], expected[k]) for k in keys if not same(got[k], expected[k])}
    assert not bad, bad


def patch_tune(monkeypatch, checkpoint=None):
    """Replace ``tune.report``/``tune.get_checkpoint``; returns the list of (metrics, state) reported."""
    reported = []

    def report(metrics, *, checkpoint=None):
        with checkpoint.as_directory() as directory:  # read now: the directory is temporary
            state = torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)
        reported.append((metrics, state))

    monkeypatch.setattr(tune, "report", report)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: checkpoint)
    return reported


def save_checkpoint(state, directory):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / CHECKPOINT_FILE)
    return tune.Checkpoint.from_directory(str(directory))


def final_metric_column(frame):
    """``auxilearn_hpo.results.trials_frame`` calls it final_metric; get_dataframe() val_metric."""
    return "final_metric" if "final_metric" in frame.columns else "val_metric"


def history(result):
    """A trial's reported metrics as Tune logged them, one row per report, in order.

    Read from progress.csv: after a retry Ray 2.60's ``metrics_dataframe`` (result.json) can
    miss the reports made just before the crash.
    """
    import pandas as pd

    return pd.read_csv(Path(result.path) / "progress.csv").sort_values("training_iteration").reset_index(drop=True)


def assert_model_equal(state, expected):
    for key, tensor in expected["model"].items():
        torch.testing.assert_close(state["model"][key], tensor, rtol=0, atol=0)


# ---------------------------------------------------------------------- Ray-free: the trainable
def test_trainable_reports_what_the_trial_reports(monkeypatch):
    reported = patch_tune(monkeypatch)
    trainable(dict(CONFIG), task=tiny_task)
    expected, _ = direct_reports(CONFIG)
    # one tune.report per epoch, each with the trial's own report values
    assert len(reported) == EPOCHS
    for (metrics, _), report in zip(reported, expected):
        assert_same_metrics(metrics, report)
    # Tune needs plain Python numbers (a tensor in the metrics fails the trial)
    assert all(type(v) in (int, float, bool, str) for m, _ in reported for v in m.values())
    # weights are flattened to one column per task, as Ray names nested metrics
    assert {"weights/main", "weights/helpful", "weights/harmful"} <= set(reported[0][0])


def test_trainable_checkpoints_every_epoch(monkeypatch):
    reported = patch_tune(monkeypatch)
    trainable(dict(CONFIG), task=tiny_task)
    _, final = direct_reports(CONFIG)
    # each checkpoint holds the learner after the epoch it is reported with
    assert [state["epoch"] for _, state in reported] == [1, 2, 3]
    assert [len(state["history"]) for _, state in reported] == [1, 2, 3]
    # the last checkpoint is the state of an uninterrupted run
    assert_model_equal(reported[-1][1], final)


def test_trainable_resumes_from_checkpoint(monkeypatch, tmp_path):
    first = patch_tune(monkeypatch)
    trainable(dict(CONFIG), task=tiny_task)
    checkpoint = save_checkpoint(first[0][1], tmp_path / "epoch1")
    resumed = patch_tune(monkeypatch, checkpoint)
    trainable(dict(CONFIG), task=tiny_task)
    expected, final = direct_reports(CONFIG)
    # only the epochs after the checkpoint are reported, with the uninterrupted run's values
    assert [m["epoch"] for m, _ in resumed] == [2, 3]
    for (metrics, _), report in zip(resumed, expected[1:]):
        assert_same_metrics(metrics, report)
    assert_model_equal(resumed[-1][1], final)


def test_trainable_applies_perturbed_config_after_restore(monkeypatch, tmp_path):
    first = patch_tune(monkeypatch)
    trainable(dict(CONFIG, lr=0.05, aux_lr=0.05), task=tiny_task)
    checkpoint = save_checkpoint(first[0][1], tmp_path / "epoch1")
    resumed = patch_tune(monkeypatch, checkpoint)
    trainable(dict(CONFIG, lr=0.01, aux_lr=0.02), task=tiny_task)  # as PBT's exploit/explore does
    state = resumed[-1][1]
    # the new config's learning rates replace the checkpoint's (PBT's perturbation takes effect)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    assert state["config"]["aux_lr"] == pytest.approx(0.02)


# ---------------------------------------------------------------------- Ray-free: run()'s wiring
class FakeTuner:
    """Records what run() hands to tune.Tuner / Tuner.restore; fit() returns a marker."""

    calls: list = []
    restorable = False

    def __init__(self, trainable, *, param_space, tune_config, run_config):
        FakeTuner.calls.append(("new", dict(param_space=param_space, tune_config=tune_config, run_config=run_config)))

    @classmethod
    def can_restore(cls, path, **kwargs):
        return cls.restorable

    @classmethod
    def restore(cls, path, trainable, **kwargs):
        FakeTuner.calls.append(("restore", dict(path=path, **kwargs)))
        return cls.__new__(cls)

    def fit(self):
        return "grid"


@pytest.fixture
def fake_tuner(monkeypatch):
    FakeTuner.calls, FakeTuner.restorable = [], False
    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray start
    monkeypatch.setattr(ray_tune.tuner, "bound_trainable", lambda task: trainable)  # no object store
    monkeypatch.setattr(ray_tune.tuner, "to_frame", lambda grid, **kw: ("frame", kw))
    return FakeTuner


def test_run_wires_asha_mode_and_checkpoints(fake_tuner, tmp_path, monkeypatch):
    from ray.tune.schedulers import ASHAScheduler

    monkeypatch.chdir(tmp_path)
    frame, grid = run(tiny_task, num_samples=3, fixed={"epochs": 7}, max_failures=2, max_concurrent=2)
    (kind, got), = fake_tuner.calls
    cfg, rcfg = got["tune_config"], got["run_config"]
    # a fresh experiment: the task's mode, ASHA over training_iteration up to the fixed epochs
    assert kind == "new" and cfg.mode == "min" and cfg.metric == "score" and cfg.num_samples == 3
    assert isinstance(cfg.scheduler, ASHAScheduler) and cfg.scheduler._max_t == 7
    assert cfg.scheduler._time_attr == "training_iteration"
    assert cfg.reuse_actors and cfg.max_concurrent_trials == 2
    # fixed settings are merged into the default search space
    assert got["param_space"]["epochs"] == 7 and "update_every" in got["param_space"]
    # storage is absolute (trials change directory), failures retry, checkpoints are pruned
    assert rcfg.storage_path == str(tmp_path / "runs") and rcfg.name == "auxilearn"
    assert rcfg.failure_config.max_failures == 2 and rcfg.checkpoint_config.num_to_keep == 2
    # the table is built with the task's mode
    assert frame == ("frame", {"mode": "min", "metric": "val_metric"}) and grid == "grid"


def test_run_takes_epochs_from_the_task_for_asha(fake_tuner, tmp_path):
    run(tiny_task, param_space={"weighting": "linear"}, storage_path=tmp_path, mode="max")
    cfg = fake_tuner.calls[0][1]["tune_config"]
    # no epochs in the space: the task's default (3) bounds ASHA; an explicit mode wins
    assert cfg.scheduler._max_t == EPOCHS and cfg.mode == "max"


def test_run_restores_an_existing_experiment(fake_tuner, tmp_path):
    fake_tuner.restorable = True
    run(tiny_task, param_space={"weighting": "linear"}, storage_path=tmp_path, name="exp")
    # an experiment already at storage_path/name is restored, errored trials included
    assert fake_tuner.calls == [("restore", {"path": str(tmp_path / "exp"), "resume_errored": True,
                                             "storage_filesystem": None})]


@pytest.mark.parametrize("uri", ["s3://bucket/runs", "gs://bucket/runs/", "file:///shared/runs"])
def test_storage_uris_reach_ray_untouched(fake_tuner, uri):
    run(tiny_task, param_space={"weighting": "linear"}, storage_path=uri, name="exp")
    (kind, got), = fake_tuner.calls
    # a URI is Ray's to resolve: not made absolute, not joined as a local path
    assert kind == "new" and got["run_config"].storage_path == uri and got["run_config"].name == "exp"
    fake_tuner.calls.clear()
    fake_tuner.restorable = True
    run(tiny_task, param_space={"weighting": "linear"}, storage_path=uri, name="exp")
    assert fake_tuner.calls[0][1]["path"] == uri.rstrip("/") + "/exp"


def test_a_file_uri_stores_the_experiment_in_that_folder(ray_session, tmp_path):
    frame, grid = run(tiny_task, param_space=dict(CONFIG), num_samples=1, scheduler=None,
                      storage_path=f"file://{tmp_path}/shared", name="uri")
    # the trial ran and its reports are in the table; the experiment sits under the URI's folder
    assert not grid.errors and len(frame) == 1 and frame["epochs"].tolist() == [EPOCHS]
    assert (tmp_path / "shared" / "uri" / "tuner.pkl").exists()
    assert grid[0].path.startswith(str(tmp_path / "shared" / "uri"))


def test_a_pyarrow_filesystem_holds_the_experiment(ray_session, tmp_path):
    import pyarrow.fs

    fs = pyarrow.fs.SubTreeFileSystem(str(tmp_path), pyarrow.fs.LocalFileSystem())
    frame, grid = run(tiny_task, param_space=dict(CONFIG), num_samples=1, scheduler=None,
                      storage_path="bucket/runs", storage_filesystem=fs, name="fs")
    # the path is one inside the filesystem (not made absolute here): the experiment lands in its subtree
    assert not grid.errors and len(frame) == 1 and frame["epochs"].tolist() == [EPOCHS]
    assert (tmp_path / "bucket" / "runs" / "fs" / "tuner.pkl").exists()


# ---------------------------------------------------------------------- Ray-free: bad input
def test_unknown_setting_in_param_space_is_named():
    # validated before Ray starts, naming the setting
    with pytest.raises(ValueError, match="bogus_setting"):
        run(tiny_task, param_space={"weighting": "linear", "bogus_setting": 1})


def test_unknown_setting_in_fixed_is_named():
    with pytest.raises(ValueError, match="'epoch'"):
        run(tiny_task, param_space={"weighting": "linear"}, fixed={"epoch": 3})


@pytest.mark.parametrize("kwargs, match", [
    ({"weightings": ["linear", "no_such_combiner"]}, "no_such_combiner"),
    ({"solvers": "newton"}, "newton"),
    ({"aux_lr": (0.1, 0.01)}, "aux_lr"),
    ({"extra": {"epochs": 3, "update_evry": 2}}, "update_evry"),
], ids=["weighting", "solver", "range", "extra"])
def test_search_space_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        search_space(**kwargs)


def test_search_space_samples_valid_configs():
    from ray.tune.search.variant_generator import generate_variants

    space = search_space(extra={"epochs": 2})
    configs = [cfg for _ in range(20) for _, cfg in generate_variants(space)]
    # every sample is a complete, valid trial config within the requested ranges
    for cfg in configs:
        assert cfg["weighting"] in ("linear", "nonlinear") and cfg["solver"] in ("neumann", "cg")
        assert cfg["update_every"] in (1, 3, 8, 16) and cfg["steps"] in (1, 3, 5, 10)
        assert 1e-3 <= cfg["aux_lr"] <= 1.0 and cfg["epochs"] == 2 and "alpha" not in cfg
        assert 0.03 <= cfg["weighting_options"]["init_total"] <= 3.0


def test_bad_scheduler_is_rejected():
    with pytest.raises(ValueError, match="hyperband"):
        ray_tune.spaces.make_scheduler(tune, "hyperband", 3)


def test_a_failed_trial_says_why_and_a_diverged_one_at_which_epoch(tmp_path):
    exp = tmp_path / "exp"
    for index, (metric, error) in enumerate(((0.5, True), (float("nan"), False), (0.4, False))):
        trial_dir = exp / f"auxilearn_abcde_{index:05d}_{index}_2026-01-01_00-00-00"
        trial_dir.mkdir(parents=True)
        line = {"epoch": 1, "val_metric": metric, "higher_is_better": 0.0, "trial_id": f"abcde_{index:05d}",
                "training_iteration": 1, "date": "2026-01-01_00-00-10", "config": {"epochs": 1}}
        (trial_dir / "result.json").write_text(json.dumps(line) + "\n")
        if error:
            (trial_dir / "error.txt").write_text("Failure # 1 (occurred at 2026-01-01_00-00-20)\n"
                                                 "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    found = {r.trial_id: r for r in ray_tune.records(exp)}
    # the error's last line; the epoch a trial diverged at; nothing for a trial that finished
    assert found["abcde_00000"].reason == "RuntimeError: boom"
    assert found["abcde_00001"].reason == "diverged at epoch 1: val_metric or weights not finite"
    assert found["abcde_00002"].reason is None


def test_quiet_logs_route_rays_driver_log_to_a_file(tmp_path, capsys):
    import logging

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    log, before = tmp_path / "driver.log", list(logging.getLogger("ray").handlers)
    with ray_tune.quiet_logs(log):
        try:
            raise RuntimeError("the actor died")
        except RuntimeError as err:
            logger.error("Trial task failed for trial x", exc_info=err)
    # nothing on the terminal: the record and its traceback are in the file
    assert "Trial task failed" not in capsys.readouterr().err
    assert "Trial task failed for trial x" in log.read_text() and "RuntimeError: the actor died" in log.read_text()
    # Ray's own handlers are back afterwards
    assert logging.getLogger("ray").handlers == before


def test_run_with_verbose_0_writes_rays_driver_log_into_the_experiment(fake_tuner, tmp_path, monkeypatch):
    import logging

    def fit(self):
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial x")
        return "grid"

    monkeypatch.setattr(fake_tuner, "fit", fit)
    run(tiny_task, num_samples=1, fixed={"epochs": 2}, storage_path=str(tmp_path), name="exp")
    # verbose=0 (the default): silent; what Ray logged is in the experiment's driver.log
    assert "Trial task failed for trial x" in (tmp_path / "exp" / "driver.log").read_text()


def test_missing_ray_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    monkeypatch.delitem(sys.modules, "auxilearn_hpo.integrations.ray_tune")
    import auxilearn_hpo.integrations as package

    monkeypatch.setattr(package, "ray_tune", None, raising=False)  # the fresh import rebinds it; undone after
    fresh = importlib.import_module("auxilearn_hpo.integrations.ray_tune")  # importing never fails
    for use in (fresh.search_space, fresh.init_local, lambda: fresh.register(tiny_task)):
        with pytest.raises(ImportError, match=r"pip install auxilearn-hpo\[ray\]") as info:
            use()
        # the original error is chained for debugging
        assert isinstance(info.value.__cause__, ImportError)


# ---------------------------------------------------------------------- with Ray
def test_registered_name_with_asha(ray_session, tmp_path):
    from ray.tune.schedulers import ASHAScheduler

    name = register(task=tiny_task, name="auxilearn-test")
    tuner = tune.Tuner(
        name,
        param_space={**CONFIG, "update_every": tune.grid_search([1, 2, 4])},
        tune_config=tune.TuneConfig(metric="val_metric", mode="min", reuse_actors=True,
                                    scheduler=ASHAScheduler(max_t=EPOCHS, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="asha", verbose=0),
    )
    grid = tuner.fit()
    assert grid.num_errors == 0 and len(grid) == 3
    frame = to_frame(grid, mode="min")
    column = final_metric_column(frame)
    for result in grid:
        rows = history(result)
        expected, _ = direct_reports(result.config)
        # every epoch reported once, in order (a trial stopped by ASHA reports a prefix)
        assert list(rows["epoch"]) == list(range(1, len(rows) + 1))
        for i, row in rows.iterrows():
            assert_same_metrics(row.to_dict(), {k: v for k, v in expected[i].items() if k in row})
        # the table holds each trial's last reported metric
        final = frame.loc[frame["trial_id"] == result.metrics["trial_id"], column]
        assert final.item() == pytest.approx(rows["val_metric"].iloc[-1], rel=0, abs=0)


def test_crashed_trial_is_retried_from_its_checkpoint(ray_session, tmp_path):
    marker = tmp_path / "crashed"
    frame, grid = run(CrashOnce(marker), param_space=dict(CONFIG), num_samples=1, scheduler=None,
                      max_failures=1, storage_path=tmp_path, name="retry")
    result = grid[0]
    expected, final = direct_reports(CONFIG)
    # the first attempt did crash, and the retry finished
    assert marker.exists() and result.error is None
    rows = history(result)
    # each epoch appears exactly once: the retry continued after epoch 1, not from scratch
    assert list(rows["epoch"]) == [1, 2, 3]
    for i, row in rows.iterrows():
        assert_same_metrics(row.to_dict(), {k: v for k, v in expected[i].items() if k in row})
    # the learner's own history (in the checkpoint) also holds each epoch once
    assert checkpoint_history(result)["epoch"].tolist() == [1, 2, 3]
    # same final model and weights as an uninterrupted run
    assert_model_equal(load_state(result.checkpoint), final)
    assert len(frame) == 1


def test_restore_finishes_an_errored_experiment(ray_session, tmp_path):
    marker = tmp_path / "crashed"
    # run()'s defaults otherwise: ASHA over the task's epochs, the task's mode ("min")
    options = dict(param_space=dict(CONFIG), num_samples=1, max_failures=0, storage_path=tmp_path, name="restore")
    _, grid = run(CrashOnce(marker), **options)
    # without retries the trial errors in epoch 2, after reporting epoch 1
    assert grid.num_errors == 1 and history(grid[0])["epoch"].tolist() == [1]
    assert tune.Tuner.can_restore(str(tmp_path / "restore"))

    frame, grid = run(CrashOnce(marker), **options)  # resume=True: Tuner.restore(..., resume_errored=True)
    result = grid[0]
    expected, final = direct_reports(CONFIG)
    # the restored trial continued from its epoch-1 checkpoint and finished
    assert grid.num_errors == 0 and history(result)["epoch"].tolist() == [1, 2, 3]
    assert result.metrics["val_metric"] == expected[-1]["val_metric"]
    assert frame[final_metric_column(frame)].item() == expected[-1]["val_metric"]
    # the experiment ranks by the task's mode without being told it
    assert grid.get_best_result().metrics["val_metric"] == expected[-1]["val_metric"]


def test_example_smoke(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--smoke", "--storage-path", str(tmp_path)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    # the example printed its table of trials
    assert "val_metric" in out or "final_metric" in out


# ---------------------------------------------------------------------- divergence, damaged state
def test_trainable_stops_after_the_first_non_finite_epoch(monkeypatch):
    reported = patch_tune(monkeypatch)

    def diverging(config):
        task = tiny_task(config)
        calls = {"n": 0}
        inner = task.metric_fn

        def metric_fn(model, loader):
            if loader is task.val_loader:
                calls["n"] += 1
                if calls["n"] == 2:
                    return math.nan
            return inner(model, loader)

        return dataclasses.replace(task, metric_fn=metric_fn)

    trainable(dict(CONFIG), task=diverging)
    # Epoch 2's NaN is reported (so the tables can say failed) and training stops there.
    assert [m["epoch"] for m, _ in reported] == [1, 2]
    assert math.isnan(reported[-1][0]["val_metric"])


def test_damaged_experiment_state_is_refused_before_ray_starts(fake_tuner, tmp_path):
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "tuner.pkl").write_bytes(b"not read")
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{\\"trial_id')
    fake_tuner.restorable = True
    with pytest.raises(ValueError, match=r"experiment_state-2026-01-01_00-00-00.json is damaged") as info:
        run(tiny_task, param_space={"weighting": "linear"}, storage_path=tmp_path, name="exp")
    assert "\n" not in str(info.value)
    # Nothing was restored or started over it.
    assert fake_tuner.calls == []


def test_check_experiment_counts_the_trials(tmp_path):
    trial = json.dumps({"trial_id": "abcde_00000", "status": "TERMINATED"})
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [[trial, "{}"], [trial.replace("00000", "00001"), "{}"]]}))
    assert ray_tune.check_experiment(tmp_path) == 2
    with pytest.raises(ValueError, match="no experiment_state"):
        ray_tune.check_experiment(tmp_path / "missing")


def test_the_first_trial_runs_the_shipped_defaults(ray_session, tmp_path):
    from auxilearn_hpo.integrations.space import default_point, default_space

    frame, grid = run(tiny_task, num_samples=2, fixed={"epochs": 1}, scheduler=None, storage_path=tmp_path,
                      name="start")
    configs = [r.config for r in grid]
    point = default_point(default_space())
    assert point["weighting"] == "linear" and point["update_every"] == 16
    started = [c for c in configs if {k: c[k] for k in point} == point]
    assert len(started) == 1 and len(configs) == 2  # one trial at the defaults, the other drawn
    frame, grid = run(tiny_task, num_samples=1, fixed={"epochs": 1}, scheduler=None, storage_path=tmp_path,
                      name="drawn", start_at_default=False, search_alg=ray_tune.random_search(seed=5))
    assert {k: grid[0].config[k] for k in point} != point
    with pytest.raises(ValueError, match="start_at_default"):
        run(tiny_task, num_samples=1, storage_path=tmp_path, name="bad", start_at_default="yes")
