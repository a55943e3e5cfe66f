"""Tune AuxiLearn's outer settings with Ray Tune on YOUR OWN model, loss and auxiliary tasks.

The problem (made up for this example, nothing shipped with the library): predict a machine's
energy use ``y`` from 8 sensor readings, with only 96 labelled rows. Three cheap auxiliary
targets exist for the same rows:

* ``load``       the machine's load, which drives most of the energy use   (helps)
* ``sensor0``    reconstruct the first sensor reading (self-supervised)     (mildly helpful)
* ``label_noise`` a column of random numbers someone logged by mistake      (harms)

AuxiLearn learns, inside every trial, how much each auxiliary loss should count; Ray Tune's
ASHA searches the outer settings around it (solver, hyperstep frequency, combiner, learning
rates) and stops poor trials early.

Run::

    python examples/ray_tune_own_model.py            # 16 trials x 30 epochs
    python examples/ray_tune_own_model.py --smoke    # 3 trials x 3 epochs (< 1 minute)

The task factory lives at module level: Ray pickles it to the trial processes, and each trial
changes into its own directory, so any file a factory reads needs an absolute path.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.data import split_auxiliary
from auxilearn_hpo.integrations import ray_tune

TASKS = ["energy", "load", "sensor0", "label_noise"]  # column 0 is the main task


class EnergyNet(nn.Module):
    """A shared trunk and one linear head per target; ``forward`` returns ``(B, 4)``."""

    def __init__(self, n_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.Linear(hidden, len(TASKS))  # one output per task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


def per_task_losses(model: nn.Module, batch) -> torch.Tensor:
    """Squared error per sample and task, ``(B, 4)``: what the learner weights and combines."""
    x, y = batch
    return (model(x) - y) ** 2


def energy_mse(model: nn.Module, loader: DataLoader) -> float:
    """The metric we care about: mean squared error of the energy prediction."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += float(((model(x)[:, 0] - y[:, 0]) ** 2).sum())
            count += len(x)
    return total / count


def trunk_params(model: EnergyNet) -> list:
    return list(model.trunk.parameters())


def make_energy_task(config: dict) -> Task:
    """Task factory ``config -> Task``: data, split and model are all seeded by ``config["seed"]``."""
    seed = int(config.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    w_load = torch.randn(8, generator=g)

    def draw(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 8, generator=g)
        load = torch.tanh(x @ w_load / 2)
        energy = 3 * load + 0.5 * x[:, 1] * x[:, 2]
        if noisy:  # the energy meter is noisy; the auxiliaries are cheap and clean
            energy = energy + 1.0 * torch.randn(n, generator=g)
        junk = torch.randn(n, generator=g)
        return x, torch.stack([energy, load, x[:, 0], junk], dim=1)

    pool = TensorDataset(*draw(96, noisy=True))
    train, aux = split_auxiliary(pool, 16, seed=seed)  # the auxiliary set: main loss only
    val, test = TensorDataset(*draw(256, noisy=False)), TensorDataset(*draw(512, noisy=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EnergyNet()
    return Task(
        name="energy", model=model, loss_fn=per_task_losses,
        train_loader=DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        aux_loader=DataLoader(aux, batch_size=16),
        val_loader=DataLoader(val, batch_size=256), test_loader=DataLoader(test, batch_size=512),
        metric_fn=energy_mse, metric_name="mse", mode="min", task_names=TASKS, main_task=0,
        shared_params=trunk_params,
        defaults={"epochs": 30, "lr": 1e-2, "learner": {"aux_lr": 1e-2}},
    )


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", default=bool(os.environ.get("AUXILEARN_SMOKE")),
                        help="tiny budget (3 trials x 3 epochs); also set by AUXILEARN_SMOKE=1")
    parser.add_argument("--storage-path", default=None,
                        help="where Ray Tune writes the experiment (default ./runs; a temp dir with --smoke)")
    args = parser.parse_args(argv)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    epochs, samples = (3, 3) if args.smoke else (30, 16)
    storage = args.storage_path or (tempfile.mkdtemp(prefix="auxilearn-") if args.smoke else "./runs")
    storage = os.path.abspath(storage)  # trials run in their own working directories

    started = ray_tune.init_local()  # quiet local Ray; use ray_tune.connect(address) for a cluster
    name = ray_tune.register(task=make_energy_task)  # "auxilearn"
    space = ray_tune.search_space(
        weightings=("linear", "nonlinear"), solvers=("neumann", "cg"),
        update_every=(1, 5), steps=(1, 3), aux_lr=(1e-3, 1e-1), extra={"epochs": epochs},
    )
    tuner = tune.Tuner(
        name,
        param_space=space,
        tune_config=tune.TuneConfig(
            # score: the mean val_metric of a trial's last epochs, the one definition of best
            # (auxilearn_hpo.records.trial_score) that the tables and Optuna rank by too
            metric="score", mode="min", num_samples=samples, reuse_actors=True,
            scheduler=ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=1),
        ),
        run_config=tune.RunConfig(
            storage_path=storage, name=f"energy-{time.strftime('%Y%m%d-%H%M%S')}", verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    grid = tuner.fit()
    frame = ray_tune.to_frame(grid, mode="min")
    shown = [c for c in frame.columns
             if c in ("trial_id", "score", "final_metric", "best_metric", "test_metric", "training_iteration",
                      "epochs", "status")
             or c.startswith(("weights/", "config/weighting", "config/solver", "config/update_every"))]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(frame[shown].to_string(index=False))
    best = grid.get_best_result()
    print(f"best trial: {best.config} -> energy MSE {best.metrics['score']:.4f} (score: mean of the last epochs)")
    if started:
        import ray

        ray.shutdown()
    return frame


if __name__ == "__main__":
    main(sys.argv[1:])
