"""Splitting an auxiliary set off the training data."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset

__all__ = ["split_auxiliary"]


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
