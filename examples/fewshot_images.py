"""Few-shot image classification with your own auxiliary tasks, under the fair protocol.

The problem stands in for yours: ten labelled images per class (2 of each class held out as the
auxiliary set), a 784-256-256 MLP, and auxiliary annotations of mixed value:

* six shape regressions computed from each image (ink mass, centre of ink, its spread along
  rows and columns, left-right symmetry), standardised — cheap, mildly informative;
* one 3-class shape label (how many closed loops the digit has: 0, 1 or 2) — class-level, helpful;
* three random-label 10-class tasks, drawn independently of the image — harmful.

The images are scikit-learn's bundled 8x8 digits (``pip install auxilearn-hpo[digits]``),
upsampled to 28x28. The factory ``make_task(config) -> Task`` uses plain ``TensorDataset``
loaders, as a user would. Each seed compares the final models a user would choose between,
all trained on every labelled image (train ∪ auxiliary set): single-task, and the shipped
default (``"linear"``: learns the weights on the split, then refits on all of it)::

    python examples/fewshot_images.py --seeds 1000-1009
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo import Task

SHAPES = ("ink", "centre_row", "centre_col", "spread_row", "spread_col", "symmetry")
RANDOM = ("random1", "random2", "random3")
TASKS = ("main", *SHAPES, "loops", *RANDOM)
LOOPS = torch.tensor([1, 0, 0, 0, 1, 0, 1, 0, 2, 1])  # closed loops of each digit


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 784)`` images in [0, 1] and ``(N,)`` labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.as_tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.flatten(1), torch.as_tensor(data.target, dtype=torch.long)


def shape_targets(x: torch.Tensor) -> torch.Tensor:
    """The raw :data:`SHAPES` of images ``(N, 784)``: ``(N, 6)``."""
    img = x.reshape(-1, 28, 28)
    mass = img.sum((1, 2)).clamp_min(1e-6)
    pos = torch.arange(28, dtype=x.dtype)
    rows, cols = img.sum(2) / mass[:, None], img.sum(1) / mass[:, None]
    r, c = (rows * pos).sum(1), (cols * pos).sum(1)
    return torch.stack([mass, r, c, ((rows * (pos - r[:, None]) ** 2).sum(1)).sqrt(),
                        ((cols * (pos - c[:, None]) ** 2).sum(1)).sqrt(), -(img - img.flip(2)).abs().mean((1, 2))], 1)


class Net(nn.Module):
    """784-256-256 trunk; heads: 10 classes, 6 shapes, 3 loop classes, 3 x 10 random labels."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.main, self.shapes = nn.Linear(256, 10), nn.Linear(256, len(SHAPES))
        self.loops, self.random = nn.Linear(256, 3), nn.Linear(256, 10 * len(RANDOM))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.trunk(x)
        return self.main(z), self.shapes(z), self.loops(z), self.random(z).reshape(len(x), len(RANDOM), 10)


def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
    """``(B, 11)``: main cross entropy, 6 squared errors, loop cross entropy, 3 random-label cross entropies."""
    x, y, shapes, loops, random = batch
    main, shape_out, loop_out, random_out = model(x)
    rnd = F.cross_entropy(random_out.flatten(0, 1), random.flatten(), reduction="none").reshape(len(x), -1)
    return torch.cat([F.cross_entropy(main, y, reduction="none")[:, None], (shape_out - shapes) ** 2,
                      F.cross_entropy(loop_out, loops, reduction="none")[:, None], rnd], 1)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(b[0])[0].argmax(1) == b[1]).sum()) for b in loader)
    model.train()
    return hits / len(loader.dataset)


def make_task(config: dict) -> Task:
    """The task of one seed: ``config["seed"]`` draws the images and the model."""
    seed = int(config.get("seed", 0))
    x, y = images()
    g = torch.Generator().manual_seed(seed)
    train, aux = [], []
    for c in range(10):
        chosen = torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:10]].tolist()
        train += chosen[2:]
        aux += chosen[:2]
    rest = [i for i in torch.randperm(len(y), generator=g).tolist() if i not in set(train + aux)]
    val, test = rest[:200], rest[200:]
    shapes = shape_targets(x)
    shapes = (shapes - shapes[train + aux].mean(0)) / shapes[train + aux].std(0)
    random = torch.randint(0, 10, (len(y), len(RANDOM)), generator=g)

    def data(idx: list[int]) -> TensorDataset:
        i = torch.as_tensor(idx)
        return TensorDataset(x[i], y[i], shapes[i], LOOPS[y[i]], random[i])

    torch.manual_seed(seed)
    return Task(
        name="fewshot_images", model=Net(), loss_fn=loss_fn,
        train_loader=DataLoader(data(train), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)),
        aux_loader=DataLoader(data(aux), batch_size=20), val_loader=DataLoader(data(val), batch_size=500),
        test_loader=DataLoader(data(test), batch_size=500), metric_fn=accuracy, metric_name="accuracy", mode="max",
        task_names=TASKS, shared_params=lambda m: list(m.trunk.parameters()),
        defaults={"epochs": 40, "lr": 1e-3, "batch_size": 16},
    )


def main(argv: list[str] | None = None) -> None:
    from auxilearn_hpo.bench.seeds import parse_seeds
    from auxilearn_hpo.integrations.trial import Trial

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1000-1004", help="a count, a range A-B or a list (default 1000-1004)")
    ap.add_argument("--weightings", nargs="+", default=["single_task", "linear"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in parse_seeds(args.seeds):
        row = {"seed": seed}
        for weighting in args.weightings:
            row[weighting] = list(Trial(make_task, {"weighting": weighting, "seed": seed}).reports())[-1].test_metric
        rows.append(row)
        print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows).set_index("seed")
    print(frame.agg(["mean", "sem"]).round(4).to_string())
    for weighting in args.weightings[1:]:
        d = frame[weighting] - frame[args.weightings[0]]
        print(f"{weighting} - {args.weightings[0]}: {d.mean():+.4f} ± {d.sem():.4f} (paired s.e., {len(d)} seeds, "
              f"ahead on {int((d > 0).sum())})")


if __name__ == "__main__":
    main()
