"""Peak memory of tensors allocated inside a block, on any device (CPU included)."""
from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PeakMemory"]


class PeakMemory(TorchDispatchMode):
    """Tracks bytes of tensor storage created inside the ``with`` block and their peak.

    Every op below autograd (forward, backward, optimizer) passes through the dispatcher;
    new storages are counted until they are freed. Tensors that existed before the block
    (parameters, optimizer state) are not counted, so ``peak`` is the memory a step needs on
    top of the model itself.

    Example:
        >>> with PeakMemory() as mem:
        ...     x = torch.ones(1000) * 2
        >>> mem.peak >= 4000
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _collect(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._collect()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    size = storage.nbytes()
                    self.live[key] = (StorageWeakRef(storage), size)
                    self.current += size
        self.peak = max(self.peak, self.current)
        return out
