"""MetaOptimizer against a transcription of the original AuxiLearn update."""
import math
import warnings

import pytest
import torch
from torch import nn

from auxilearn_hpo import MetaOptimizer
from auxilearn_hpo.hypergrad import CG, Neumann
# auxilearn/optim.py + auxilearn/hypergrad.py (v1), transcribed with lists instead of generators;
# the hyperstep benchmark times the same transcription.
from auxilearn_hpo.bench.hypergrad import original_hyperstep


class Primary(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


class Auxiliary(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 0.7, 0.3]))

    def forward(self, losses):
        return (losses * self.w).sum(-1).mean()


def make(seed=0):
    torch.manual_seed(seed)
    return Primary(), Auxiliary()


def data(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)


def per_task(model, x, y):
    return (model(x) - y) ** 2


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("max_grad_norm", [10.0, 1e-3], ids=["noclip", "clip"])
def test_matches_the_original_update(opt, max_grad_norm):
    runs = []
    for impl in ("ours", "original"):
        primary, aux = make()
        popt = torch.optim.SGD(primary.parameters(), lr=0.05)
        base = (torch.optim.SGD if opt == "sgd" else torch.optim.Adam)(aux.parameters(), lr=0.01)
        meta = MetaOptimizer(base, hpo_lr=0.1, truncate_iter=3, max_grad_norm=max_grad_norm)
        for step in range(5):
            x, y, xa, ya = data(step)
            popt.zero_grad()
            aux(per_task(primary, x, y)).backward()
            popt.step()
            train_loss = aux(per_task(primary, x, y))
            val_loss = per_task(primary, xa, ya)[:, 0].mean()
            if impl == "ours":
                meta.step(train_loss=train_loss, val_loss=val_loss, parameters=primary.parameters(), aux_params=aux.parameters())
            else:
                original_hyperstep(base, train_loss, val_loss, list(primary.parameters()), list(aux.parameters()), 0.1, 3, max_grad_norm)
        runs.append(aux.w.detach().clone())
    start = Auxiliary().w.detach()
    # Compare the updates (from a shared start), so the tolerance measures the hypersteps themselves.
    torch.testing.assert_close(runs[0] - start, runs[1] - start, rtol=1e-5, atol=1e-7)
    assert not torch.equal(runs[0], start)


def test_readme_example_runs_as_written_and_moves_aux_params():
    # The original README's loop, word for word, with the names it assumes defined.
    import itertools
    torch.manual_seed(0)
    MyModel, MyAuxiliaryModel = Primary, Auxiliary
    epochs, aux_params_update_every = 2, 2
    train_loder = [data(i)[:2] for i in range(4)]
    aux_batches = itertools.cycle([data(i)[2:] for i in range(4)])
    state = {}

    def loss_func(train=True):
        if train:
            x, y = state["batch"]
            return auxiliary_model(per_task(primary_model, x, y))
        xa, ya = next(aux_batches)
        return per_task(primary_model, xa, ya)[:, 0].mean()

    from auxilearn_hpo.optim import MetaOptimizer as ReadmeMetaOptimizer

    primary_model = MyModel()
    auxiliary_model = MyAuxiliaryModel()
    before = auxiliary_model.w.detach().clone()
    primary_optimizer = torch.optim.Adam(primary_model.parameters())
    aux_lr = 1e-4
    aux_base_optimizer = torch.optim.Adam(auxiliary_model.parameters(), lr=aux_lr)
    aux_optimizer = ReadmeMetaOptimizer(aux_base_optimizer, hpo_lr=aux_lr)
    step = 0
    for epoch in range(epochs):
        for batch in train_loder:
            state["batch"] = batch
            step += 1
            primary_optimizer.zero_grad()
            loss = loss_func(train=True)
            loss.backward()
            primary_optimizer.step()
            if step % aux_params_update_every == 0:
                train_set_loss = loss_func(train=True)
                auxiliary_set_loss = loss_func(train=False)
                aux_optimizer.step(
                    val_loss=auxiliary_set_loss,
                    train_loss=train_set_loss,
                    aux_params=auxiliary_model.parameters(),
                    parameters=primary_model.parameters(),
                )
    # Four hypersteps of Adam at lr 1e-4 move every weight (the original code, given generators, moved none).
    assert aux_optimizer.steps_taken == 4
    assert (auxiliary_model.w.detach() - before).abs().min() > 1e-5


def test_cg_and_exact_go_through_the_same_path():
    for solver in ("cg", "exact"):
        primary, aux = make()
        base = torch.optim.SGD(aux.parameters(), lr=0.1)
        meta = MetaOptimizer(base, hpo_lr=0.1, truncate_iter=20, max_grad_norm=None, solver=solver, damping=0.1)
        x, y, xa, ya = data(0)
        grads = meta.step(aux(per_task(primary, x, y)), per_task(primary, xa, ya)[:, 0].mean(),
                          primary.parameters(), aux.parameters(), return_grads=True)
        # SGD without clipping: the step is exactly -lr times the returned hypergradient.
        torch.testing.assert_close(aux.w.detach(),
                                   make()[1].w.detach() - 0.1 * grads[0])
        assert meta.last_info.solver == solver


def test_non_finite_hypergradient_skips_and_warns_once():
    primary, aux = make()
    base = torch.optim.SGD(aux.parameters(), lr=0.1)
    meta = MetaOptimizer(base, hpo_lr=0.1)
    x, y, xa, ya = data(0)
    before = aux.w.detach().clone()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            val = per_task(primary, xa, ya)[:, 0].mean() * float("nan")
            meta.step(aux(per_task(primary, x, y)), val, primary.parameters(), aux.parameters())
    # Both steps are skipped and counted, phi is untouched, and the warning is issued once.
    assert meta.steps_skipped == 2 and meta.steps_taken == 0
    assert torch.equal(aux.w.detach(), before)
    assert sum(issubclass(w.category, RuntimeWarning) for w in caught) == 1


def test_projection_runs_after_each_step():
    primary, aux = make()
    base = torch.optim.SGD(aux.parameters(), lr=1e3)
    meta = MetaOptimizer(base, hpo_lr=0.1, max_grad_norm=None, project=lambda: aux.w.data.clamp_(min=0))
    x, y, xa, ya = data(0)
    meta.step(aux(per_task(primary, x, y)), per_task(primary, xa, ya)[:, 0].mean(), primary.parameters(), aux.parameters())
    # A huge step would make some weight negative; the projection clamps it back to >= 0.
    assert (aux.w.detach() >= 0).all()


def test_state_dict_round_trip():
    primary, aux = make()
    meta = MetaOptimizer(torch.optim.Adam(aux.parameters(), lr=0.01), hpo_lr=0.1)
    x, y, xa, ya = data(0)
    meta.step(aux(per_task(primary, x, y)), per_task(primary, xa, ya)[:, 0].mean(), primary.parameters(), aux.parameters())
    state = meta.state_dict()
    other = MetaOptimizer(torch.optim.Adam(aux.parameters(), lr=0.01), hpo_lr=0.1)
    other.load_state_dict(state)
    # Counters and Adam's moments come back identical.
    assert other.steps_taken == 1
    torch.testing.assert_close(other.meta_optimizer.state_dict()["state"][0]["exp_avg"], state["meta_optimizer"]["state"][0]["exp_avg"])


def test_bad_construction_arguments_are_named():
    aux = Auxiliary()
    with pytest.raises(TypeError, match="meta_optimizer must be a torch.optim.Optimizer"):
        MetaOptimizer(aux.parameters(), hpo_lr=0.1)
    with pytest.raises(ValueError, match="hpo_lr must be a positive finite number"):
        MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1), hpo_lr=-1)
    with pytest.raises(ValueError, match="solver must be one of"):
        MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1), hpo_lr=0.1, solver="lbfgs")
    with pytest.raises(ValueError, match=r"\['truncate_iter'\] given with a solver value"):
        MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1), truncate_iter=5, solver=CG())
    with pytest.raises(ValueError, match="hpo_lr .* is required with solver='neumann'"):
        MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"solver 'neumann' takes no option\(s\) \['tol'\]"):
        MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1), hpo_lr=0.1, tol=1e-3)


def test_a_solver_value_and_its_name_with_keywords_take_the_same_step():
    steps = []
    for solver in (dict(solver="cg", truncate_iter=7, damping=0.1, tol=0.0), dict(solver=CG(steps=7, damping=0.1, tol=0.0))):
        primary, aux = make()
        meta = MetaOptimizer(torch.optim.SGD(aux.parameters(), lr=0.1), max_grad_norm=None, **solver)
        x, y, xa, ya = data(0)
        meta.step(aux(per_task(primary, x, y)), per_task(primary, xa, ya)[:, 0].mean(), primary.parameters(), aux.parameters())
        steps.append(aux.w.detach().clone())
    # The string-plus-keywords path builds exactly the value passed directly.
    assert torch.equal(steps[0], steps[1])
    # The seed signature builds the original's unscaled Neumann series.
    assert MetaOptimizer(torch.optim.SGD(make()[1].parameters(), lr=0.1), 0.1, 3).solver == Neumann(steps=3, alpha=0.1, scaled=False)


def test_meta_optimizer_must_hold_the_aux_params():
    aux, other = Auxiliary(), Auxiliary()
    meta = MetaOptimizer(torch.optim.SGD(other.parameters(), lr=0.1), hpo_lr=0.1)
    w = torch.nn.Parameter(torch.ones(3))
    before = aux.w.detach().clone()
    with pytest.raises(ValueError, match=r"aux_params\[0\] are not optimised by meta_optimizer"):
        meta.step(train_loss=aux((w ** 2).unsqueeze(0)), val_loss=w.sum(), parameters=[w], aux_params=aux.parameters())
    assert meta.steps_taken == 0 and torch.equal(aux.w, before)


@pytest.mark.parametrize("kwargs, match", [
    ({"hpo_lr": float("inf")}, "hpo_lr must be a positive finite number"),
    ({"hpo_lr": 0.1, "damping": -1.0}, "damping must be a finite number >= 0"),
    ({"solver": "cg", "tol": -1.0}, "tol must be a finite number >= 0"),
])
def test_meta_optimizer_rejects_non_finite_or_negative_options(kwargs, match):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=match):
        MetaOptimizer(torch.optim.SGD([p], lr=0.1), **kwargs)


def test_auto_step_size_is_re_estimated_every_power_every_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    aux = Auxiliary()
    x, y = torch.randn(16, 3), torch.randn(16, 3)
    meta = MetaOptimizer(torch.optim.Adam(aux.parameters(), lr=1e-2), hpo_lr="auto", power_every=3)
    estimated = []
    for _ in range(7):
        losses = (model(x) - y) ** 2
        meta.step(train_loss=aux(losses), val_loss=losses[:, 0].mean(), parameters=model.parameters(),
                  aux_params=aux.parameters())
        estimated.append(math.isfinite(meta.last_info.lambda_max))
        # between estimates the last automatic step is reused
        assert meta.last_info.alpha == pytest.approx(meta.state["alpha"])
    assert estimated == [True, False, False, True, False, False, True]
    with pytest.raises(ValueError, match="power_every must be an int >= 1"):
        MetaOptimizer(torch.optim.Adam(aux.parameters()), hpo_lr="auto", power_every=0)


@pytest.mark.parametrize("scale", [0.5, 0.999, 1.0, 50.0])
def test_apply_skips_clipping_only_where_it_would_scale_by_one(scale):
    # Reference: clip_grad_norm_ always applied. A caller-given norm below max_grad_norm skips it
    # to the same bits; near or above the threshold it clips as before.
    g = torch.tensor([3.0, 4.0]) * (2.0 * scale / 5.0)  # total norm 2 * scale
    runs = []
    for norm in (None, float(g.norm())):
        w = nn.Parameter(torch.zeros(2))
        meta = MetaOptimizer(torch.optim.SGD([w], lr=1.0), hpo_lr=0.1, max_grad_norm=2.0)
        meta.apply([g.clone()], [w], norm=norm)
        runs.append(w.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert float(runs[0].norm()) == pytest.approx(min(2.0 * scale, 2.0), rel=1e-6)
