"""``digits``: few-shot classification of scikit-learn's bundled 8x8 digits with auxiliary regressions.

Needs scikit-learn (``pip install auxilearn-hpo[digits]``); ``load_digits`` ships inside its wheel,
so nothing is downloaded. Pixels are scaled to ``[0, 1]``.

Split (defaults): ``shots=10`` labelled images per class form the training pool (100); of each
class, ``aux_shots=2`` are split off with :func:`~auxilearn_hpo.data.split_auxiliary` as the
auxiliary set (20, stratified), leaving 80 for training. Of the remaining 1697 images,
``n_val=300`` are the validation set and the rest (1397) the test set. ``info["indices"]`` holds
the row numbers in ``load_digits()`` of each part.

Tasks (column: what):

* 0 ``main``: 10-way classification, per-sample cross entropy. Metric: accuracy (``mode="max"``).
* 1-8, pixel attributes, standardised with the training pool's mean and std, per-sample squared
  error: ``ink_top``, ``ink_bottom``, ``ink_left``, ``ink_right`` (mean ink of each half),
  ``sym_lr``, ``sym_ud`` (minus the mean absolute difference to the mirrored image),
  ``centroid_row``, ``centroid_col`` (centre of ink mass). They are functions of the input that
  describe a digit's shape, i.e. no new information: measured (seeds 0-4) they are neutral at
  small weights and mildly **harmful** at weight 1 (about -1 to -3 accuracy points).
* last ``n_noise`` (default 3) ``noise1``...: targets drawn ``N(0, 1)`` independently of the image —
  pure noise the trunk can only memorise: **harmful**.

``info``: ``attributes``, ``harmful`` (the noise tasks' names), ``pure_noise`` (their loss-column
indices), ``n`` (sizes) and ``indices``.

So the best achievable weighting here is close to the main task alone (test accuracy about
0.87-0.92 with the defaults); equal weights lose 2-4 points. The task checks that a method
avoids harm from unhelpful auxiliaries with a tiny (20-image) auxiliary set.

Model: trunk ``Linear(64, 64) - ReLU`` (``Task.shared_params``), a classification head
``Linear(64, 10)`` and a regression head ``Linear(64, 8 + n_noise)`` (one output, i.e. one linear
head, per auxiliary). Shapes: a batch is ``(x, label, targets)`` with ``x`` ``(B, 64)`` float32,
``label`` ``(B,)`` int64 and ``targets`` ``(B, 8 + n_noise)`` float32; ``loss_fn`` returns
``(B, 9 + n_noise)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..data import split_auxiliary
from ..task import Task
from ._common import classification_task, derive_seed, generator, main_accuracy, make_loaders

__all__ = ["make", "ATTRIBUTES", "pixel_attributes", "load_images"]

ATTRIBUTES = ("ink_top", "ink_bottom", "ink_left", "ink_right", "sym_lr", "sym_ud", "centroid_row", "centroid_col")
HIDDEN = 64
N_CLASSES = 10


def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits: ``(1797, 64)`` pixels in [0, 1] and ``(1797,)`` labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' benchmark needs scikit-learn (its bundled load_digits data): "
            "pip install auxilearn-hpo[digits]"
        ) from err
    data = load_digits()
    return torch.as_tensor(data.data, dtype=torch.float32) / 16.0, torch.as_tensor(data.target, dtype=torch.long)


def pixel_attributes(x: torch.Tensor) -> torch.Tensor:
    """The raw (unstandardised) :data:`ATTRIBUTES` of images ``x`` ``(N, 64)``, ``(N, 8)``."""
    img = x.reshape(-1, 8, 8)
    mass = img.sum((1, 2)).clamp_min(1e-6)
    pos = torch.arange(8, dtype=x.dtype)
    return torch.stack([
        img[:, :4].mean((1, 2)), img[:, 4:].mean((1, 2)), img[:, :, :4].mean((1, 2)), img[:, :, 4:].mean((1, 2)),
        -(img - img.flip(2)).abs().mean((1, 2)), -(img - img.flip(1)).abs().mean((1, 2)),
        (img.sum(2) * pos).sum(1) / mass, (img.sum(1) * pos).sum(1) / mass,
    ], dim=1)


class DigitsNet(nn.Module):
    """Trunk plus a classification head and a regression head; ``forward`` -> ``(logits, aux)``."""

    def __init__(self, n_aux: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU())
        self.classifier = nn.Linear(HIDDEN, N_CLASSES)
        self.regressor = nn.Linear(HIDDEN, n_aux)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.classifier(z), self.regressor(z)


def loss_fn(model: nn.Module, batch) -> torch.Tensor:
    """Per-sample cross entropy (column 0) and squared errors of the auxiliaries, ``(B, T)``."""
    x, label, targets = batch
    logits, aux = model(x)
    return torch.cat([F.cross_entropy(logits, label, reduction="none")[:, None], (aux - targets) ** 2], dim=1)


metric_fn = main_accuracy


def make(
    seed: int = 0, *, shots: int = 10, aux_shots: int = 2, n_noise: int = 3, n_val: int = 300, batch_size: int = 16,
) -> Task:
    """Build the task (see the module docstring). ``shots`` labelled images per class, of which
    ``aux_shots`` per class form the auxiliary set; ``n_noise`` pure-noise auxiliary targets."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 2:
        raise ValueError(f"shots must be an int >= 2, got {shots!r}")
    if isinstance(aux_shots, bool) or not isinstance(aux_shots, int) or not 1 <= aux_shots < shots:
        raise ValueError(f"aux_shots must be an int in [1, shots={shots}), got {aux_shots!r}")
    if isinstance(n_noise, bool) or not isinstance(n_noise, int) or n_noise < 0:
        raise ValueError(f"n_noise must be an int >= 0, got {n_noise!r}")
    x, y = load_images()
    g = generator(seed, "data")
    pool: list[int] = []
    aux_idx: list[int] = []
    for c in range(N_CLASSES):
        members = torch.nonzero(y == c).flatten()
        chosen = members[torch.randperm(len(members), generator=g)[:shots]].sort().values
        _, aux_part = split_auxiliary(TensorDataset(chosen), aux_shots, seed=(derive_seed(seed, "split") + c) % 2**63)
        pool += chosen.tolist()
        aux_idx += chosen[torch.as_tensor(aux_part.indices, dtype=torch.long)].tolist()
    taken = set(pool)
    aux_set = set(aux_idx)
    train_idx = [i for i in pool if i not in aux_set]
    rest = torch.as_tensor([i for i in range(len(y)) if i not in taken], dtype=torch.long)
    rest = rest[torch.randperm(len(rest), generator=g)]
    if not 1 <= n_val < len(rest):
        raise ValueError(f"n_val must be in [1, {len(rest)}), got {n_val!r}")
    val_idx, test_idx = sorted(rest[:n_val].tolist()), sorted(rest[n_val:].tolist())

    attrs = pixel_attributes(x)
    ref = attrs[torch.as_tensor(pool)]
    attrs = (attrs - ref.mean(0)) / ref.std(0).clamp_min(1e-6)
    noise = torch.randn(len(y), n_noise, generator=g)
    targets = torch.cat([attrs, noise], dim=1).float()

    def part(idx: list[int]) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return x[i], y[i], targets[i]

    loaders = make_loaders(part(train_idx), part(aux_idx), part(val_idx), part(test_idx),
                           batch_size=batch_size, seed=seed)
    noise_names = [f"noise{k}" for k in range(1, n_noise + 1)]
    names = ["main", *ATTRIBUTES, *noise_names]
    return classification_task(
        "digits", lambda: DigitsNet(len(ATTRIBUTES) + n_noise), seed, loss_fn, loaders, names,
        defaults={"epochs": 60, "lr": 3e-3, "batch_size": batch_size},
        info={
            "attributes": list(ATTRIBUTES), "harmful": noise_names,
            # no auxiliary is known to help (see above): the oracle is the main task alone
            "oracle_weights": {n: float(n == "main") for n in names},
            "pure_noise": list(range(1 + len(ATTRIBUTES), len(names))),  # loss-column indices
            "n": {"train": len(train_idx), "aux": len(aux_idx), "val": len(val_idx), "test": len(test_idx)},
            "indices": {"train": train_idx, "aux": sorted(aux_idx), "val": val_idx, "test": test_idx},
        },
    )
