"""Your own model and losses, tuned through the registered Ray Tune trainable.

A regression model with a shared trunk predicts a main target and three auxiliary targets of
its own: one that shares the main signal, one of pure noise and one on a 100x larger scale.
AuxiLearn learns how to weight them inside every trial; Ray Tune (with ASHA) searches the
outer settings around it.

    python examples/ray_tune_own_model.py                 # 8 trials x 30 epochs
    python examples/ray_tune_own_model.py --smoke         # a tiny budget (under a minute)
"""
from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.data import split_auxiliary


class TrunkAndHeads(nn.Module):
    def __init__(self, n_in: int = 8, n_tasks: int = 4):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh())
        self.heads = nn.Linear(16, n_tasks)  # one output per task

    def forward(self, x):
        return self.heads(self.trunk(x))


def per_task_losses(model: nn.Module, batch) -> torch.Tensor:
    """(B, 4) losses: Huber on the main target, squared error on the auxiliaries."""
    x, y = batch
    out = model(x)
    main = nn.functional.huber_loss(out[:, :1], y[:, :1], reduction="none")
    aux = (out[:, 1:] - y[:, 1:]) ** 2
    return torch.cat([main, aux], dim=1)


def mse_on_main(model: nn.Module, loader: DataLoader) -> float:
    errors = [((model(x)[:, 0] - y[:, 0]) ** 2) for x, y in loader]
    return float(torch.cat(errors).mean())


def make_task(config: dict) -> Task:
    """The task factory Ray pickles to its workers: ``config -> Task`` (module level)."""
    seed = int(config.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)

    def draw(n, noise):
        x = torch.randn(n, 8, generator=g)
        signal = torch.sin(x @ w)
        y = torch.stack([signal + noise * torch.randn(n, generator=g),          # main (noisy)
                         signal + 0.05 * torch.randn(n, generator=g),           # helpful
                         torch.randn(n, generator=g),                           # pure noise
                         100 * torch.cos(x @ w) + torch.randn(n, generator=g)],  # large scale
                        dim=1)
        return TensorDataset(x, y)

    train, aux = split_auxiliary(draw(96, 0.5), 16, seed=seed)
    torch.manual_seed(seed)
    return Task(
        name="own-regression", model=TrunkAndHeads(), loss_fn=per_task_losses,
        train_loader=DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        aux_loader=DataLoader(aux, batch_size=16), val_loader=DataLoader(draw(256, 0.0), batch_size=256),
        test_loader=DataLoader(draw(1024, 0.0), batch_size=1024), metric_fn=mse_on_main, metric_name="mse",
        mode="min", task_names=["main", "helpful", "noise", "large"],
        shared_params=lambda m: list(m.trunk.parameters()),
        defaults={"epochs": 30, "lr": 1e-2, "aux_lr": 1e-2, "update_every": 2, "alpha": 1e-4},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny budget")
    ap.add_argument("--storage-path", default=os.path.abspath("runs"), help="where Ray Tune keeps the experiment")
    args = ap.parse_args()

    from ray import tune

    from auxilearn_hpo import results
    from auxilearn_hpo.integrations import ray_tune

    ray_tune.init_local()
    name = ray_tune.register(task=make_task)  # tune.Tuner("auxilearn", ...) now trains this task
    epochs = 3 if args.smoke else 30
    space = {**ray_tune.search_space(combiners=["linear", "nonlinear"], methods=["neumann", "cg"],
                                     update_every=[1, 2, 5], steps=[1, 3], aux_lr=(1e-3, 1e-1)),
             "epochs": epochs}
    tuner = tune.Tuner(
        name, param_space=space,
        tune_config=tune.TuneConfig(metric="val_metric", mode="min", num_samples=2 if args.smoke else 8,
                                    scheduler=tune.schedulers.ASHAScheduler(max_t=epochs, grace_period=max(1, epochs // 3))),
        run_config=tune.RunConfig(storage_path=os.path.abspath(args.storage_path), name="own-model", verbose=0),
    )
    grid = tuner.fit()
    trials = results.trials_frame(grid)
    cols = ["trial_id", "status", "config/combiner", "config/method", "final_metric", "best_metric",
            "weights/helpful", "weights/noise", "weights/large"]
    print(trials[cols].to_string(index=False))


if __name__ == "__main__":
    main()
