"""Data helpers: splitting an auxiliary set off the training data, joining batches."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["split_auxiliary", "concat_batches"]


def split_auxiliary(dataset: Dataset, size: float | int, *, seed: int = 0) -> tuple[Subset, Subset]:
    """Split ``dataset`` into ``(train, auxiliary)`` disjoint subsets.

    The auxiliary set only ever provides the main-task loss for hypergradients; the paper
    uses a few percent of the training data.

    Args:
        size: a fraction in ``(0, 1)`` of ``len(dataset)`` or a count ``>= 1``.
        seed: seeds the random permutation, so the split is reproducible.

    Example:
        >>> train, aux = split_auxiliary(torch.utils.data.TensorDataset(torch.arange(100)), 0.05)
        >>> len(train), len(aux)
        (95, 5)
    """
    n = len(dataset)  # type: ignore[arg-type]
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise TypeError(f"size must be a fraction in (0, 1) or a count, got {type(size).__name__}")
    if isinstance(size, float) and not size.is_integer():
        if not 0.0 < size < 1.0:
            raise ValueError(f"size as a fraction must lie in (0, 1), got {size}")
        k = max(1, int(round(size * n)))
    else:
        k = int(size)
    if not 1 <= k < n:
        raise ValueError(
            f"size must leave a non-empty auxiliary set and a non-empty training set "
            f"(1 <= count < {n}), got {size!r} of a dataset of {n}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(perm[k:])), Subset(dataset, sorted(perm[:k]))


def concat_batches(batches: Sequence[Any]) -> Any:
    """One batch holding ``batches`` one after another: tensors concatenated along dimension 0,
    tuples, lists and dicts of them concatenated field by field (the structure a ``DataLoader``
    collates). Shapes: ``(B_1, ...), ..., (B_n, ...) -> (B_1 + ... + B_n, ...)``.

    Example:
        >>> x, y = concat_batches([(torch.zeros(2, 3), torch.tensor([0, 1])), (torch.ones(1, 3), torch.tensor([2]))])
        >>> tuple(x.shape), y.tolist()
        ((3, 3), [0, 1, 2])
    """
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(batches))
    if isinstance(first, dict):
        if any(not isinstance(b, dict) or b.keys() != first.keys() for b in batches):
            raise ValueError("concat_batches: every batch must be a dict with the same keys")
        return {k: concat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, (tuple, list)):
        if any(not isinstance(b, (tuple, list)) or len(b) != len(first) for b in batches):
            raise ValueError(f"concat_batches: every batch must be a tuple or list of {len(first)} fields")
        fields = [concat_batches([b[i] for b in batches]) for i in range(len(first))]
        return type(first)(*fields) if hasattr(first, "_fields") else type(first)(fields)  # a namedtuple by field
    raise TypeError(f"train_batches > 1 concatenates training batches, which must be tensors or tuples, lists "
                    f"or dicts of tensors; got a batch of type {type(first).__name__}")
