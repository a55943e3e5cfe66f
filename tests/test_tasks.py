"""Shipped benchmark tasks: shapes, determinism by seed, disjoint splits, ground truth, trainability."""
import importlib.util
import math
import sys

import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from auxilearn_hpo.tasks import BENCHMARKS, make_task, names
from auxilearn_hpo.task import Task

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits tasks need scikit-learn")
NAMES = [pytest.param(n, marks=needs_sklearn) if "digits" in n else n for n in names()]
LOADERS = ("train_loader", "aux_loader", "val_loader", "test_loader")
_CACHE: dict = {}


def built(name, seed=0):
    """One shared instance per (name, seed) for read-only checks (tests that train build their own)."""
    if (name, seed) not in _CACHE:
        _CACHE[name, seed] = make_task(name, seed=seed)
    return _CACHE[name, seed]


def tensors(loader):
    return loader.dataset.tensors


def rows(loader):
    """Each sample's input as a hashable row (inputs are continuous or distinct images)."""
    return {tuple(r) for r in tensors(loader)[0].tolist()}


def test_registry():
    assert names() == list(BENCHMARKS) == ["toy", "graded_noise", "scaled_regression", "digits", "fewshot_digits",
                                                  "digits_aux_labels"]
    with pytest.raises(ValueError, match="unknown benchmark 'nope'.*toy.*graded_noise.*scaled_regression.*digits"):
        make_task("nope")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bogus'\]"):
        make_task("toy", bogus=1)


@pytest.mark.parametrize("name", NAMES)
def test_task_builds_with_finite_loss_matrix(name):
    task = built(name)
    assert isinstance(task, Task) and task.name == name
    assert task.task_names[0] == "main" and task.main_task == 0
    assert len(set(task.task_names)) == task.n_tasks >= 3
    # training settings only: AuxiLearn's own settings come from LearnerConfig's defaults, the same everywhere
    assert task.defaults.learner == {} and task.defaults.weight_decay == 0.0
    oracle = task.info["oracle_weights"]
    assert list(oracle) == list(task.task_names) and oracle["main"] == 1.0
    assert all(v >= 0 for v in oracle.values())
    assert task.train_loader.batch_size == task.defaults.batch_size
    batch = next(iter(task.train_loader))
    for t in batch:
        assert t.dtype in (torch.float32, torch.int64)
    assert batch[0].dtype == torch.float32
    losses = task.loss_fn(task.model, batch)
    assert losses.shape == (len(batch[0]), task.n_tasks)
    assert torch.isfinite(losses).all() and (losses >= 0).all()
    losses.sum().backward()  # every task reaches the model
    assert all(p.grad is not None for p in task.model.parameters())
    aux_losses = task.loss_fn(task.model, next(iter(task.aux_loader)))
    assert aux_losses.shape[1] == task.n_tasks
    # loaders: only training shuffles, with its own seeded generator
    assert isinstance(task.train_loader.sampler, RandomSampler)
    assert isinstance(task.train_loader.generator, torch.Generator)
    for attr in LOADERS[1:]:
        assert isinstance(getattr(task, attr).sampler, SequentialSampler)
    # the metric: a float over a whole loader, in eval mode, restoring the mode
    task.model.train()
    value = task.metric_fn(task.model, task.test_loader)
    assert isinstance(value, float) and math.isfinite(value)
    assert task.model.training
    assert task.mode == ("max" if "digits" in name else "min")
    if task.shared_params is not None:
        shared = task.shared_params(task.model)
        assert shared and {id(p) for p in shared} < {id(p) for p in task.model.parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_task_different_seed_different_data(name):
    rng = torch.get_rng_state()
    a, b = make_task(name, seed=0), built(name, 0)
    assert torch.equal(torch.get_rng_state(), rng), "building a task must not touch the global RNG"
    for attr in LOADERS:
        for x, y in zip(tensors(getattr(a, attr)), tensors(getattr(b, attr))):
            assert torch.equal(x, y)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    order_a = [batch[0] for batch in a.train_loader]
    order_b = [batch[0] for batch in make_task(name, seed=0).train_loader]
    assert all(torch.equal(x, y) for x, y in zip(order_a, order_b))
    c = built(name, 1)
    assert not torch.equal(tensors(a.train_loader)[0], tensors(c.train_loader)[0])
    assert not torch.equal(next(iter(a.model.parameters())), next(iter(c.model.parameters())))


@pytest.mark.parametrize("name", NAMES)
def test_aux_set_disjoint_from_train_val_test(name):
    task = built(name)
    parts = {attr: rows(getattr(task, attr)) for attr in LOADERS}
    for attr, r in parts.items():
        assert len(r) == len(getattr(task, attr).dataset), f"{attr} repeats a sample"
    for i, p in enumerate(LOADERS):
        for q in LOADERS[i + 1:]:
            assert not parts[p] & parts[q], f"{p} and {q} overlap"
    n = task.info["n"]
    assert [n[k] for k in ("train", "aux", "val", "test")] == [len(getattr(task, a).dataset) for a in LOADERS]
    indices = task.info.get("pool_indices") or task.info["indices"]
    assert not set(indices["train"]) & set(indices["aux"])


def _lstsq(x, y):
    return torch.linalg.lstsq(x.double(), y.double()[:, None]).solution.flatten()


def test_toy_ground_truth():
    task = built("toy")
    assert task.info["w_star"] == [1.0, 1.0] and task.info["w_harmful"] == [-1.0, -4.0]
    assert task.task_names == ["main", "helpful", "harmful"]
    x, y = tensors(task.train_loader)
    assert torch.allclose(_lstsq(x, y[:, 1]), torch.tensor([1.0, 1.0], dtype=torch.float64), atol=0.05)
    assert torch.allclose(_lstsq(x, y[:, 2]), torch.tensor([-1.0, -4.0], dtype=torch.float64), atol=0.05)
    assert (y[:, 0] - x.sum(1)).std() > 1.5  # the main labels are very noisy
    xt, yt = tensors(task.test_loader)
    assert torch.allclose(yt[:, 0], xt.sum(1))  # evaluation labels are noiseless
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0]]))
    assert task.metric_fn(model, task.test_loader) < 1e-10


def test_graded_noise_levels_and_pure_noise():
    task = built("graded_noise")
    noise, pure = task.info["noise"], task.info["pure_noise"]
    assert len(noise) == 16 == task.n_tasks - 1
    assert all(a < b for a, b in zip([task.info["main_noise"]] + noise, noise))
    assert pure == [13, 14, 15, 16]
    x, y = tensors(task.train_loader)
    w_star = torch.tensor(task.info["w_star"], dtype=torch.float64)
    for k in range(1, task.n_tasks):
        err = (_lstsq(x, y[:, k]) - (0 * w_star if k in pure else w_star)).norm()
        assert err < 1.5 * noise[k - 1], (k, float(err))  # ~ noise * sqrt(d / n)
    assert task.info["optimal_weights"][0] == 1.0 and all(task.info["optimal_weights"][k] == 0 for k in pure)
    small = make_task("graded_noise", n_aux=4, n_pure=1)
    assert small.n_tasks == 5 and small.info["pure_noise"] == [4]


def test_scaled_regression_scales_and_harmful_tasks():
    task = built("scaled_regression")
    assert task.task_names == ["main", "s1", "s10", "s100", "h1", "h100"]
    assert task.info["sigmas"] == [1.0, 1.0, 10.0, 100.0, 1.0, 100.0]
    assert task.info["harmful"] == ["h1", "h100"] and task.info["harmful_columns"] == [4, 5]
    _, y = tensors(task.train_loader)
    assert y.shape[1:] == (6, 10)
    scale = y.abs().amax((0, 2))
    assert 50 < scale[3] / scale[0] < 200  # sigma 100 vs 1
    assert [id(p) for p in task.shared_params(task.model)] == [id(p) for p in task.model.trunk.parameters()]


def test_scaled_regression_oracle_is_the_searched_grid_point():
    from auxilearn_hpo.tasks import scaled_regression as sr

    task = built("scaled_regression")
    # the shipped oracle is the grid point s1 at ORACLE_WEIGHT alone (f = 0), on sigma^2-normalised losses
    assert sr.ORACLE_WEIGHT in sr.ORACLE_GRID["c"] and 0.0 in sr.ORACLE_GRID["f"]
    assert task.info["oracle_weights"] == sr.grid_weights(task, sr.ORACLE_WEIGHT, 0.0) == {
        "main": 1.0, "s1": 400.0, "s10": 0.0, "s100": 0.0, "h1": 0.0, "h100": 0.0}
    assert task.info["inverse_variance_weights"] == pytest.approx(sr.grid_weights(task, 25.0, 1.0))
    assert sr.grid_weights(task, 25.0, 1.0) == pytest.approx(
        {"main": 1.0, "s1": 25.0, "s10": 0.25, "s100": 0.0025, "h1": 0.0, "h100": 0.0})
    other = make_task("scaled_regression", sigmas=(10.0,), harmful_sigmas=(1.0,))
    assert other.info["oracle_weights"] == {"main": 1.0, "s10": 4.0, "h1": 0.0}
    assert make_task("scaled_regression", sigmas=(), harmful_sigmas=(1.0,)).info["oracle_weights"] == {
        "main": 1.0, "h1": 0.0}


def test_scaled_regression_oracle_search_ranks_by_validation(monkeypatch):
    from auxilearn_hpo.tasks import scaled_regression as sr

    seen = []

    def fake_run(args):  # stands in for training: a known validation MSE per grid point and seed
        c, f, seed = args
        seen.append(args)
        return {"c": c, "f": f, "seed": seed, "val_mse": 1.0 / c + f + 0.01 * seed}

    monkeypatch.setattr(sr, "_grid_run", fake_run)
    table = sr.search_oracle(seeds=[3, 5], grid={"c": (10.0, 100.0), "f": (0.0, 1.0)}, processes=1)
    assert sorted(seen) == sorted((c, f, s) for c in (10.0, 100.0) for f in (0.0, 1.0) for s in (3, 5))
    assert list(table.columns) == ["c", "f", "val_mse"]
    assert table[["c", "f"]].values.tolist() == [[100.0, 0.0], [10.0, 0.0], [100.0, 1.0], [10.0, 1.0]]
    assert table["val_mse"].iloc[0] == pytest.approx(0.01 + 0.04)  # mean over seeds 3 and 5
    for bad, match in [({"seeds": []}, "seeds must be"), ({"grid": {"c": (1.0,)}}, "grid must be"),
                       ({"grid": {"c": (0.0,), "f": (0.0,)}}, "grid must be"), ({"processes": 0}, "processes must be")]:
        with pytest.raises(ValueError, match=match):
            sr.search_oracle(**bad)


def test_scaled_regression_grid_run_trains_the_fixed_weights():
    from auxilearn_hpo.tasks import scaled_regression as sr

    from auxilearn_hpo.learner import AuxiliaryLearner

    row = sr._grid_run((400.0, 0.0, 0))
    torch.manual_seed(0)
    task = make_task("scaled_regression", seed=0)
    learner = AuxiliaryLearner.from_task(task, "fixed", weighting_options={"weights": task.info["oracle_weights"]})
    for _ in learner.fit(task.defaults.epochs):
        pass
    assert row["val_mse"] == pytest.approx(sr.metric_fn(learner.model, task.val_loader), rel=1e-6)


@needs_sklearn
def test_digits_split_and_targets():
    task = built("digits")
    idx = task.info["indices"]
    assert task.info["n"] == {"train": 80, "aux": 20, "val": 300, "test": 1397}
    assert sum(len(v) for v in idx.values()) == 1797 == len(set().union(*map(set, idx.values())))
    for attr in ("train_loader", "aux_loader"):
        labels = tensors(getattr(task, attr))[1]
        assert torch.bincount(labels, minlength=10).tolist() == [8 if attr == "train_loader" else 2] * 10
    assert task.info["pure_noise"] == [9, 10, 11]
    x, _, targets = tensors(task.train_loader)
    assert targets.shape == (80, 11) and 0 <= x.min() and x.max() <= 1
    assert make_task("digits", shots=5, aux_shots=1, n_noise=0).n_tasks == 9


def test_digits_names_the_extra_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install auxilearn-hpo\[digits\]"):
        make_task("digits")


@pytest.mark.parametrize("name, epochs", [("toy", 5), ("graded_noise", 5), ("scaled_regression", 10),
                                         pytest.param("digits", 5, marks=needs_sklearn)])
def test_main_task_alone_improves_metric(name, epochs):
    task = make_task(name, seed=0)
    before = task.metric_fn(task.model, task.val_loader)
    opt = torch.optim.Adam(task.model.parameters(), lr=task.defaults.lr)
    for _ in range(epochs):
        for batch in task.train_loader:
            opt.zero_grad()
            task.loss_fn(task.model, batch)[:, task.main_task].mean().backward()
            opt.step()
    after = task.metric_fn(task.model, task.val_loader)
    better = after > before + 0.2 if task.mode == "max" else after < 0.8 * before
    assert better, (before, after)


def test_task_defaults_are_typed_and_unknown_keys_are_named():
    from auxilearn_hpo.task import TaskDefaults

    task = make_task("toy", seed=0)
    assert isinstance(task.defaults, TaskDefaults) and task.defaults.epochs == 60 and task.defaults.lr == 0.05
    with pytest.raises(ValueError, match=r"unknown Task.defaults key\(s\) \['aux_lr'\]; known: \['epochs', 'lr', "
                                         r"'weight_decay', 'batch_size', 'learner'\]"):
        TaskDefaults.from_dict({"epochs": 3, "aux_lr": 0.1})
    with pytest.raises(ValueError, match="defaults epochs must be an int >= 1"):
        TaskDefaults(epochs=0)
    with pytest.raises(ValueError, match="defaults lr must be a finite number > 0"):
        TaskDefaults(lr=float("nan"))


def test_toy_harmful_pull_is_the_slope_of_the_bilevel_objective():
    from auxilearn_hpo.tasks.toy import harmful_pull

    def aux_mse(seed, h, r):  # weighted least squares on stacked rows, independent of the closed form
        task = make_task("toy", seed=seed)
        x, y = (t.double() for t in task.train_loader.dataset.tensors)
        xa, ya = (t.double() for t in task.aux_loader.dataset.tensors)
        rows = torch.cat([x * c ** 0.5 for c in (1.0, h, r)])
        target = torch.cat([y[:, j] * c ** 0.5 for j, c in enumerate((1.0, h, r))])
        w = torch.linalg.lstsq(rows, target[:, None]).solution[:, 0]
        return float(((ya[:, 0] - xa @ w) ** 2).mean())

    eps = 1e-5
    for seed, h in [(0, 5.0), (6, 1.0), (13, 25.0)]:
        slope = (aux_mse(seed, h, eps) - aux_mse(seed, h, 0.0)) / eps
        assert harmful_pull(seed, h) == pytest.approx(slope, rel=1e-3, abs=1e-6)
    pulls = {s: harmful_pull(s) for s in range(20)}
    assert sorted(s for s, p in pulls.items() if p < -0.4) == [6, 7, 12, 13]
    assert all(harmful_pull(s, h) < 0 for s in (6, 7, 12, 13) for h in (1.0, 25.0))
    for bad in (-1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="helpful must be a finite number >= 0"):
            harmful_pull(0, bad)
