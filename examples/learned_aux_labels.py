"""Learn an auxiliary task for YOUR OWN classifier (AuxiLearn's label generator), tuned with Optuna.

No auxiliary labels exist here, so one is learned: a generator network gives each training
sample a soft label over ``psi`` sub-classes of its class, your model predicts it with an extra
head, and the generator is trained by implicit differentiation on the main loss of a held-out
auxiliary set. Optuna searches ``psi``, the generator's size, the auxiliary-loss weight, the
generator's learning rate, the update frequency and the solver.

The problem stands in for yours: 4 classes in 10-D, each class a mixture of 3 Gaussian blobs
(sub-classes exist, but nobody labelled them), with 12 labelled samples per class.

You write three things: a model with an auxiliary head, a per-sample loss ``(B, 2)`` (main,
generated labels) that calls the generator, and a factory ``config -> Task`` that builds both
and sets ``Task.label_generator``. Everything else is the library's::

    python examples/learned_aux_labels.py            # 20 trials of 40 epochs
    python examples/learned_aux_labels.py --smoke    # 3 trials of 2 epochs (seconds)
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task
from auxilearn_hpo.combiners import AuxiliaryLabelGenerator, soft_label_loss
from auxilearn_hpo.data import split_auxiliary
from auxilearn_hpo.integrations.space import label_generator_space
from auxilearn_hpo.integrations.optuna import run

N_FEATURES, N_CLASSES, BLOBS = 10, 4, 3


class Classifier(nn.Module):
    """Your model: a trunk, the main head and an auxiliary head over ``N_CLASSES * psi`` sub-classes."""

    def __init__(self, psi: int, hidden: int = 32) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, N_CLASSES)
        self.aux_head = nn.Linear(hidden, N_CLASSES * psi)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.head(z), self.aux_head(z)


def draw(n_per_class: int, g: torch.Generator, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` samples of each class, spread over its blobs: ``x (N, 10)``, ``y (N,)``."""
    y = torch.arange(N_CLASSES).repeat_interleave(n_per_class)
    blob = torch.randint(0, BLOBS, (len(y),), generator=g)
    x = centres[y, blob] + torch.randn(len(y), N_FEATURES, generator=g)
    return x, y


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x)[0].argmax(1) == y).sum())
            total += len(y)
    return correct / total


def make_task(config: dict) -> Task:
    """The factory Optuna calls once per trial: reads ``psi`` and the generator's size from the config."""
    seed = int(config.get("seed", 0))
    psi = int(config.get("psi") or 3)
    width, depth = int(config.get("generator_width") or 32), int(config.get("generator_depth") or 1)
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(N_CLASSES, BLOBS, N_FEATURES, generator=g)
    pool, val, test = draw(12, g, centres), draw(100, g, centres), draw(500, g, centres)
    train, aux = split_auxiliary(TensorDataset(*pool), 0.25, seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(psi)
        generator = AuxiliaryLabelGenerator(N_FEATURES, N_CLASSES, psi, hidden=(width,) * depth)

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        """``(B, 2)``: main cross entropy, cross entropy against the generated soft labels."""
        x, y = batch
        logits, aux_logits = model(x)
        return torch.stack([F.cross_entropy(logits, y, reduction="none"),
                            soft_label_loss(aux_logits, generator(x, y))], dim=1)

    return Task(
        name="own_classifier", model=model, loss_fn=loss_fn,
        train_loader=DataLoader(train, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        aux_loader=DataLoader(aux, batch_size=12),
        val_loader=DataLoader(TensorDataset(*val), batch_size=400),
        test_loader=DataLoader(TensorDataset(*test), batch_size=2000),
        metric_fn=accuracy, metric_name="accuracy", mode="max", task_names=["main", "generated"],
        shared_params=lambda m: list(m.trunk.parameters()),
        defaults={"epochs": 40, "lr": 3e-3},
        label_generator=generator,  # "this task learns auxiliary labels"
    )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None, help="folder for the SQLite study (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="a tiny budget: 3 trials of 2 epochs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.epochs = 3, 2
    out = args.out or Path(tempfile.mkdtemp(prefix="auxilearn-labels-"))
    out.mkdir(parents=True, exist_ok=True)

    import optuna

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    df, study = run(make_task, args.trials, space=label_generator_space(), fixed={"epochs": args.epochs},
                    storage=f"sqlite:///{out / 'learned_aux_labels.db'}", study_name="learned_aux_labels",
                    sampler=optuna.samplers.TPESampler(seed=0))
    shown = [c for c in df.columns if c in ("trial_id", "status", "final_metric", "test_metric", "hypersteps")
             or (c.startswith("config/") and c != "config/epochs")]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 4):
        print(df[shown].to_string(index=False))
    best = study.best_trial
    print(f"\nbest trial {best.number}: val accuracy {best.value:.4f}, test accuracy "
          f"{best.user_attrs.get('test_metric', float('nan')):.4f}, settings {best.params}")
    return df


if __name__ == "__main__":
    main()
