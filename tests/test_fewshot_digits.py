"""The ``fewshot_digits`` benchmark: determinism, shapes, the masked main loss, disjoint and
stratified splits, class-level attributes, random labels independent of the images."""
import math

import pytest
import torch

pytest.importorskip("sklearn")
from scipy.stats import chi2_contingency  # noqa: E402  (scikit-learn depends on scipy)
from sklearn.datasets import load_digits  # noqa: E402

from auxilearn_hpo.tasks import BENCHMARKS, make_task  # noqa: E402
from auxilearn_hpo.tasks.fewshot_digits import ATTRIBUTES, attribute_table, make  # noqa: E402

LOADERS = ("train_loader", "aux_loader", "val_loader", "test_loader")
PARTS = ("train", "aux", "val", "test")
_CACHE: dict = {}


def built(seed=0):
    if seed not in _CACHE:
        _CACHE[seed] = make_task("fewshot_digits", seed=seed)
    return _CACHE[seed]


def tensors(task, attr):
    return task.__getattribute__(attr).dataset.tensors


def test_registered_with_documented_sizes_and_info():
    assert BENCHMARKS["fewshot_digits"] is make
    task = built()
    assert task.name == "fewshot_digits" and task.mode == "max" and task.metric_name == "accuracy"
    assert task.task_names == ["main", "closed_loop", "ge5", *[f"random{k}" for k in range(1, 9)]]
    assert task.info["helpful"] == ["closed_loop", "ge5"]
    assert task.info["harmful"] == [f"random{k}" for k in range(1, 9)]
    assert task.info["oracle_weights"] == {"main": 1.0, "closed_loop": 1.0, "ge5": 1.0,
                                           **{f"random{k}": 0.0 for k in range(1, 9)}}
    assert set(task.info["oracle_weights"]) == set(task.task_names)
    assert task.info["n"] == {"train": 580, "labelled": 40, "aux": 20, "val": 300, "test": 897}
    assert (task.defaults.epochs, task.defaults.lr, task.defaults.batch_size) == (30, 1e-2, 32)
    assert [id(p) for p in task.shared_params(task.model)] == [id(p) for p in task.model.trunk.parameters()]


def test_same_seed_same_task_and_global_rng_untouched():
    rng = torch.get_rng_state()
    a = make_task("fewshot_digits", seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    b = make_task("fewshot_digits", seed=3)
    for attr in LOADERS:
        for x, y in zip(tensors(a, attr), tensors(b, attr)):
            assert torch.equal(x, y)
    assert a.info["indices"] == b.info["indices"]
    for va, vb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(va, vb)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a.train_loader, b.train_loader))
    c = built(0)
    assert a.info["indices"]["train"] != c.info["indices"]["train"]
    assert not torch.equal(tensors(a, "train_loader")[3], tensors(c, "train_loader")[3])
    assert not torch.equal(a.model.trunk[0].weight, c.model.trunk[0].weight)


def test_shapes_and_loss_matrix():
    task = built()
    x, label, attrs, rand = next(iter(task.train_loader))
    assert x.shape == (32, 64) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert label.shape == (32,) and label.dtype == torch.int64
    assert attrs.shape == (32, 2) and attrs.dtype == torch.float32 and set(attrs.unique().tolist()) <= {0.0, 1.0}
    assert rand.shape == (32, 8) and rand.dtype == torch.int64 and 0 <= rand.min() and rand.max() < 100
    losses = task.loss_fn(task.model, (x, label, attrs, rand))
    assert losses.shape == (32, 11) and torch.isfinite(losses).all() and (losses >= 0).all()
    # at initialisation the logits are small: losses near log(#classes)
    assert abs(float(losses[:, 3:].detach().mean()) - math.log(100)) < 0.2
    assert abs(float(losses[:, 1:3].detach().mean()) - math.log(2)) < 0.2
    losses.sum().backward()
    assert all(p.grad is not None for p in task.model.parameters())
    assert len(task.train_loader) == math.ceil(580 / 32)


def test_main_loss_is_masked_on_unlabelled_images():
    task = built()
    x, label, attrs, rand = tensors(task, "train_loader")
    known = label >= 0
    assert int(known.sum()) == 40
    assert torch.bincount(label[known], minlength=10).tolist() == [4] * 10
    losses = task.loss_fn(task.model, (x, label, attrs, rand))
    assert torch.all(losses[~known, 0] == 0)
    assert torch.all(losses[known, 0] > 0)
    # the auxiliary columns are there for every image
    assert torch.all(losses[~known, 1:] > 0)
    # a hidden label does not leak: the masked rows' gradient is zero for the classifier
    task.model.zero_grad()
    losses[~known, 0].sum().backward()
    assert float(task.model.classifier.weight.grad.abs().sum()) == 0.0
    # the labels that are known are the true ones
    y = torch.as_tensor(load_digits().target)
    assert torch.equal(label[known], y[torch.as_tensor(task.info["indices"]["labelled"])])


def test_parts_are_disjoint_and_cover_the_dataset():
    task = built()
    idx = task.info["indices"]
    sets = {p: set(idx[p]) for p in PARTS}
    for i, p in enumerate(PARTS):
        assert len(sets[p]) == len(idx[p]) == len(tensors(task, LOADERS[i])[0])
        for q in PARTS[i + 1:]:
            assert not sets[p] & sets[q], (p, q)
    assert set().union(*sets.values()) == set(range(1797))
    assert set(idx["labelled"]) < sets["train"]
    # the images themselves (load_digits has no duplicate images)
    rows = {p: {tuple(r) for r in tensors(task, a)[0].tolist()} for p, a in zip(PARTS, LOADERS)}
    for i, p in enumerate(PARTS):
        for q in PARTS[i + 1:]:
            assert not rows[p] & rows[q]
    data = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    for p, a in zip(PARTS, LOADERS):
        assert torch.equal(tensors(task, a)[0], data[torch.as_tensor(idx[p])])


def test_aux_set_is_labelled_and_stratified():
    for seed in (0, 1):
        task = built(seed)
        _, label, _, _ = tensors(task, "aux_loader")
        assert (label >= 0).all()
        assert torch.bincount(label, minlength=10).tolist() == [2] * 10
        y = torch.as_tensor(load_digits().target)
        assert torch.equal(label, y[torch.as_tensor(task.info["indices"]["aux"])])
        # the evaluation sets carry true labels too; the pool is stratified (58 per class)
        for attr in ("val_loader", "test_loader"):
            assert (tensors(task, attr)[1] >= 0).all()
        pool = y[torch.as_tensor(task.info["indices"]["train"])]
        assert torch.bincount(pool, minlength=10).tolist() == [58] * 10


def test_attributes_are_class_level():
    table = attribute_table()
    assert table.shape == (10, len(ATTRIBUTES))
    assert table[:, 0].nonzero().flatten().tolist() == [0, 6, 8, 9]  # closed_loop
    assert table[:, 1].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]  # ge5
    task = built()
    y = torch.as_tensor(load_digits().target)
    for p, a in zip(PARTS, LOADERS):
        attrs = tensors(task, a)[2]
        assert torch.equal(attrs, table[y[torch.as_tensor(task.info["indices"][p])]])


def test_random_labels_are_independent_of_the_images():
    task = built()
    y = torch.as_tensor(load_digits().target)
    labels, rand = [], []
    for p, a in zip(PARTS, LOADERS):
        labels.append(y[torch.as_tensor(task.info["indices"][p])])
        rand.append(tensors(task, a)[3])
    labels, rand = torch.cat(labels), torch.cat(rand)
    assert rand.shape == (1797, 8)
    # per class, the random labels (binned by tens) are spread as uniformly as chance allows
    for k in range(8):
        table = torch.zeros(10, 10)
        table.index_put_((labels, rand[:, k] // 10), torch.ones(len(labels)), accumulate=True)
        assert chi2_contingency(table.numpy()).pvalue > 1e-4, k
    # and they are not a function of the class
    for c in range(10):
        assert len(rand[labels == c, 0].unique()) > 50
    # no two random tasks agree beyond chance (1 in 100)
    agree = (rand[:, :, None] == rand[:, None, :]).float().mean(0)
    assert float(agree[~torch.eye(8, dtype=torch.bool)].max()) < 0.03


#: Seed 0's validation accuracy after the default epochs of Adam (measured on CPU, torch 2.x;
#: the same numbers as ``AuxiliaryLearner.from_task(task, method)``): main only, every task at
#: weight 1, and the oracle weights.
REFERENCE_VAL = {"single_task": 0.8533, "equal": 0.8000, "oracle": 0.8900}


@pytest.mark.parametrize("method", list(REFERENCE_VAL))
def test_fixed_weightings_reach_reference_accuracy(method):
    task = make_task("fewshot_digits", seed=0)
    if method == "single_task":
        weights = torch.zeros(task.n_tasks)
        weights[0] = 1.0
    elif method == "equal":
        weights = torch.ones(task.n_tasks)
    else:
        weights = torch.tensor([task.info["oracle_weights"][n] for n in task.task_names])
    before = task.metric_fn(task.model, task.val_loader)
    opt = torch.optim.Adam(task.model.parameters(), lr=task.defaults.lr)
    for _ in range(task.defaults.epochs):
        for batch in task.train_loader:
            opt.zero_grad()
            (task.loss_fn(task.model, batch) * weights).sum(1).mean().backward()
            opt.step()
    after = task.metric_fn(task.model, task.val_loader)
    assert before < 0.3
    assert after == pytest.approx(REFERENCE_VAL[method], abs=0.03), after


@pytest.mark.parametrize("options, match", [
    ({"shots": 1}, "shots must be an int >= 2"),
    ({"aux_shots": 6}, r"aux_shots must be an int in \[1, shots=6\)"),
    ({"pool": 500}, "pool must be < "),
    ({"n_random": -1}, "n_random must be an int >= 0"),
    ({"random_classes": 1}, "random_classes must be an int >= 2"),
    ({"n_val": 5000}, "n_val must be in"),
])
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        make_task("fewshot_digits", **options)


def test_options_change_sizes():
    task = make_task("fewshot_digits", pool=30, shots=8, aux_shots=3, n_random=2, random_classes=10, n_val=100)
    assert task.info["n"] == {"train": 270, "labelled": 50, "aux": 30, "val": 100, "test": 1797 - 300 - 100}
    assert task.n_tasks == 5
    assert task.loss_fn(task.model, next(iter(task.train_loader))).shape == (32, 5)
