"""Batch helpers: concatenating loader batches for a hyperstep (``train_batches``)."""
from collections import namedtuple

import pytest
import torch

from auxilearn_hpo.data import concat_batches


def test_concat_batches_keeps_the_loaders_structure():
    a = {"x": torch.zeros(2, 3), "y": (torch.tensor([0, 1]), [torch.ones(2), torch.zeros(2)])}
    b = {"x": torch.ones(1, 3), "y": (torch.tensor([2]), [torch.full((1,), 5.0), torch.ones(1)])}
    out = concat_batches([a, b])
    assert torch.equal(out["x"], torch.cat([torch.zeros(2, 3), torch.ones(1, 3)]))
    assert isinstance(out["y"], tuple) and out["y"][0].tolist() == [0, 1, 2]
    assert isinstance(out["y"][1], list) and out["y"][1][0].tolist() == [1.0, 1.0, 5.0]
    Pair = namedtuple("Pair", "x y")
    got = concat_batches([Pair(torch.zeros(2), torch.ones(2)), Pair(torch.ones(3), torch.zeros(3))])
    assert isinstance(got, Pair) and got.x.tolist() == [0, 0, 1, 1, 1] and got.y.shape == (5,)
    only = torch.arange(4)
    assert torch.equal(concat_batches([only]), only)


def test_concat_batches_names_what_it_cannot_join():
    with pytest.raises(TypeError, match="train_batches > 1 .* got a batch of type str"):
        concat_batches(["a", "b"])
    with pytest.raises(ValueError, match="same keys"):
        concat_batches([{"x": torch.zeros(1)}, {"z": torch.zeros(1)}])
    with pytest.raises(ValueError, match="tuple or list of 2 fields"):
        concat_batches([(torch.zeros(1), torch.zeros(1)), (torch.zeros(1),)])
    with pytest.raises(ValueError, match="at least one batch"):
        concat_batches([])
