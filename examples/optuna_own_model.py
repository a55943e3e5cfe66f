"""Tune AuxiLearn's outer settings for YOUR OWN model and losses with Optuna (pruning, SQLite).

The problem here stands in for yours: a small tabular regression with few labelled samples for
the main target and three auxiliary targets measured on the same rows:

* ``main``     ``y = sin(x . a) + 0.5 (x . b)``, very noisy labels (what we care about);
* ``related``  the same function without the sine, nearly noiseless: **helps** the shared trunk;
* ``sensor``   pure noise: **harms** if weighted up;
* ``scaled``   ``10 *`` a quadratic of unrelated directions: large loss, different structure.

You write three things: a model (shared trunk + one head per target), a per-sample, per-target
loss ``(B, T)`` (here Huber for the noisy main target, MSE for the others) and a factory
``config -> auxilearn_hpo.Task``. AuxiLearn learns the weights of the four losses inside every
trial; Optuna searches how those weights are learned. The study lives in SQLite, so a killed run
continues where it stopped when started again with the same ``--out``.

Run::

    python examples/optuna_own_model.py --out runs/own        # 30 trials of 30 epochs
    python examples/optuna_own_model.py --smoke               # 4 trials of 3 epochs (< 30 s)
    optuna-dashboard sqlite:///runs/own/optuna_own_model.db   # if installed
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.data import split_auxiliary
from auxilearn_hpo.integrations.optuna import Categorical, LogUniform, run

TASKS = ["main", "related", "sensor", "scaled"]


class TrunkAndHeads(nn.Module):
    """Shared MLP trunk, one linear head per target: ``(B, F) -> (B, T)``."""

    def __init__(self, n_features: int, n_targets: int, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.heads = nn.Linear(hidden, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x))


def per_task_loss(model: nn.Module, batch) -> torch.Tensor:
    """Huber on the noisy main target, MSE on the auxiliaries; shape ``(B, T)``."""
    x, y = batch
    pred = model(x)
    main = nn.functional.huber_loss(pred[:, :1], y[:, :1], reduction="none", delta=1.0)
    return torch.cat([main, (pred[:, 1:] - y[:, 1:]) ** 2], dim=1)


def main_mae(model: nn.Module, loader: DataLoader) -> float:
    """Mean absolute error of the main target over a loader."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += float((model(x)[:, 0] - y[:, 0]).abs().sum())
            count += len(x)
    return total / count


def make_task(config: dict, *, n_train: int = 128, n_features: int = 8) -> Task:
    """The factory Optuna calls once per trial: same data for every trial of a seed."""
    seed = int(config.get("seed", 0))
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(n_features, generator=g) / n_features ** 0.5 for _ in range(3))

    def draw(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, n_features, generator=g)
        smooth = 0.5 * (x @ b)
        y = torch.stack([torch.sin(x @ a) + smooth, 2.0 * smooth, torch.zeros(n), 10.0 * (x @ c) ** 2], dim=1)
        if noisy:
            y = y + torch.tensor([1.0, 0.05, 1.0, 0.1]) * torch.randn(n, 4, generator=g)
        return x, y

    pool, val, test = draw(n_train, True), draw(512, False), draw(2048, False)
    train, aux = split_auxiliary(TensorDataset(*pool), 0.15, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TrunkAndHeads(n_features, len(TASKS))
    return Task(
        name="own_model", model=model, loss_fn=per_task_loss,
        train_loader=DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        aux_loader=DataLoader(aux, batch_size=16),
        val_loader=DataLoader(TensorDataset(*val), batch_size=512),
        test_loader=DataLoader(TensorDataset(*test), batch_size=2048),
        metric_fn=main_mae, metric_name="mae", mode="min", task_names=TASKS, main_task=0,
        shared_params=lambda m: list(m.trunk.parameters()),
        defaults={"epochs": 30, "lr": 1e-2},
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the SQLite study (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=30, help="total trials of the study")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="a tiny budget: 4 trials of 3 epochs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs = 4, 3
    out = args.out or Path(tempfile.mkdtemp(prefix="auxilearn-optuna-"))
    out.mkdir(parents=True, exist_ok=True)

    import optuna

    torch.set_num_threads(1)  # a model this small runs faster on one thread (and trials may share cores)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {
        "update_every": Categorical((1, 5, 10)),
        "steps": Categorical((1, 3, 5)),
        "solver": Categorical(("neumann", "cg")),
        "weighting": Categorical(("linear", "nonlinear")),
        "aux_lr": LogUniform(1e-3, 1e-1),
    }
    df, study = run(
        make_task, args.trials, space=space, fixed={"epochs": args.epochs},
        storage=f"sqlite:///{out / 'optuna_own_model.db'}", study_name="own_model",
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    wanted = ["number", "trial_id", "status", "state", "value", "final_metric", "best_metric", "test_metric",
              *[c for c in df.columns if c.startswith(("config/", "params_", "weights/"))],
              "hypersteps", "user_attrs_hypersteps"]
    shown = [c for c in dict.fromkeys(wanted) if c in df.columns] or list(df.columns)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        print(df[shown].to_string(index=False))
    best = study.best_trial
    test = best.user_attrs.get("test_metric")
    print(f"\nbest trial {best.number}: val MAE {best.value:.4f}, test MAE "
          f"{'n/a' if test is None else format(test, '.4f')}")
    print("learned weights:", {k: round(v, 3) for k, v in best.user_attrs["weights"].items()})
    print(f"study stored in {out / 'optuna_own_model.db'} (run again with --out {out} to continue it)")
    return df


if __name__ == "__main__":
    main()
