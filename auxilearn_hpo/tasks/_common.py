"""Pieces every benchmark shares: derived seeds, seeded models, loaders, whole-loader metrics.

Conventions (all tasks):

* data are float32 tensors in :class:`~torch.utils.data.TensorDataset` s; the auxiliary set is
  split off the training pool with :func:`auxilearn_hpo.data.split_auxiliary` and materialised
  as its own ``TensorDataset`` (the split's indices into the pool are kept in ``info``);
* validation and test sets are separate draws (or, for real data, disjoint slices);
* the training loader shuffles with a ``torch.Generator`` seeded from ``seed``; the auxiliary,
  validation and test loaders do not shuffle;
* models are built under a seed derived from ``seed`` inside :func:`torch.random.fork_rng`, so
  building a task never disturbs the global random state.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import split_auxiliary
from ..task import Task

__all__ = ["derive_seed", "generator", "seeded", "split_pool", "make_loaders", "evaluate", "TrunkHeads", "trunk_params"]

#: Batch size of the validation and test loaders (the metric is over the whole loader anyway).
EVAL_BATCH = 1024

_STREAMS = {"data": 0, "split": 1, "model": 2, "loader": 3}


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream (``"data"``, ``"model"``, ...) of ``seed``.

    Separate streams keep, e.g., the model's initial weights uncorrelated with the data draws.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    state = np.random.SeedSequence([int(seed), _STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block (e.g. a model's construction) under the ``"model"`` stream of ``seed``,
    restoring the global CPU random state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model"))
        yield


def split_pool(tensors: Sequence[Tensor], aux_size: float | int, seed: int) -> tuple[tuple, tuple, list, list]:
    """Split a training pool into ``(train_tensors, aux_tensors, train_idx, aux_idx)``.

    Uses :func:`~auxilearn_hpo.data.split_auxiliary`; the index lists point into the pool.
    """
    train, aux = split_auxiliary(TensorDataset(*tensors), aux_size, seed=derive_seed(seed, "split"))
    train_idx, aux_idx = list(train.indices), list(aux.indices)
    take = lambda idx: tuple(t[torch.as_tensor(idx, dtype=torch.long)] for t in tensors)  # noqa: E731
    return take(train_idx), take(aux_idx), train_idx, aux_idx


def make_loaders(
    train: Sequence[Tensor], aux: Sequence[Tensor], val: Sequence[Tensor], test: Sequence[Tensor],
    *, batch_size: int, seed: int,
) -> tuple[DataLoader, DataLoader, DataLoader, DataLoader]:
    """The four loaders of a task: ``(train, aux, val, test)``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    train_loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                              generator=generator(seed, "loader"))
    aux_loader = DataLoader(TensorDataset(*aux), batch_size=batch_size, shuffle=False)
    val_loader = DataLoader(TensorDataset(*val), batch_size=EVAL_BATCH, shuffle=False)
    test_loader = DataLoader(TensorDataset(*test), batch_size=EVAL_BATCH, shuffle=False)
    return train_loader, aux_loader, val_loader, test_loader


def evaluate(model: nn.Module, loader: DataLoader, batch_stat: Callable[[nn.Module, Any], tuple[float, int]]) -> float:
    """``sum(stat) / sum(count)`` of ``batch_stat(model, batch) -> (stat, count)`` over ``loader``,
    under ``torch.no_grad()`` with the model in eval mode (its mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                stat, n = batch_stat(model, batch)
                total += float(stat)
                count += int(n)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("metric_fn got an empty loader")
    return total / count


class TrunkHeads(nn.Module):
    """A shared trunk followed by one head per task; ``forward`` returns the heads' outputs
    stacked on dim 1: ``(B, T, *head_shape)``."""

    def __init__(self, trunk: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)

    def forward(self, x: Tensor) -> Tensor:
        z = self.trunk(x)
        return torch.stack([head(z) for head in self.heads], dim=1)


def trunk_params(model: nn.Module) -> list:
    """``Task.shared_params`` for models with a ``trunk``: its parameters."""
    return list(model.trunk.parameters())  # type: ignore[union-attr]


def shared_prediction_loss(model: nn.Module, batch) -> torch.Tensor:
    """Squared error of one shared prediction ``(B, 1)`` against every label column, ``(B, T)``."""
    x, y = batch
    return (model(x) - y) ** 2


def _main_sq_err(model: nn.Module, batch) -> tuple[float, int]:
    x, y = batch
    return float(((model(x)[:, 0] - y[:, 0]) ** 2).sum()), len(x)


def main_mse(model: nn.Module, loader) -> float:
    """Main-task (column 0) MSE over ``loader`` (noiseless labels on validation/test: ``~ |w - w*|^2``)."""
    return evaluate(model, loader, _main_sq_err)


def _first_output_correct(model: nn.Module, batch) -> tuple[float, int]:
    x, label = batch[0], batch[1]
    return float((model(x)[0].argmax(1) == label).sum()), len(x)


def main_accuracy(model: nn.Module, loader) -> float:
    """Main-task accuracy over ``loader``: batches ``(x, label, ...)``, the model's first output the logits."""
    return evaluate(model, loader, _first_output_correct)


def check_int(name: str, value: Any, minimum: int) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def classification_task(name: str, make_model: Callable[[], nn.Module], seed: int,
                        loss_fn: Callable[[nn.Module, Any], Tensor], loaders: Sequence, task_names: Sequence[str],
                        defaults: dict, info: dict, **extra: Any) -> Task:
    """A digits-style :class:`~auxilearn_hpo.task.Task`: the model ``make_model()`` built under
    ``seed``, column 0 the main task, scored by :func:`main_accuracy`, the model's ``trunk``
    shared; ``loaders`` = (train, aux, val, test)."""
    with seeded(seed):
        model = make_model()
    train, aux, val, test = loaders
    return Task(name=name, model=model, loss_fn=loss_fn, train_loader=train, aux_loader=aux, val_loader=val,
                test_loader=test, metric_fn=main_accuracy, metric_name="accuracy", mode="max", task_names=task_names,
                main_task=0, shared_params=trunk_params, defaults=defaults, info=info, **extra)
