"""Learned auxiliary labels: the generator weightings, their hypergradient, resume, the benchmark."""
import importlib.util
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo.combiners import AuxiliaryLabelGenerator, soft_label_loss
from auxilearn_hpo.hypergrad import CG, Exact, hypergradient
from auxilearn_hpo.label_generation import (
    GENERATOR_WEIGHTINGS,
    FrozenGeneratedLabels,
    GeneratedLabels,
    MaxlGeneratedLabels,
)
from auxilearn_hpo.learner import AuxiliaryLearner, LearnerConfig
from auxilearn_hpo.registry import make_weighting

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                                   reason="the digits tasks need scikit-learn")


def strip(report):
    """The report without wall time, NaN replaced by None so that equal reports compare equal."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.flat().items() if k != "seconds"}


# ---------------------------------------------------------------------------- the weighting
def test_combined_loss_is_main_plus_weighted_generated_column_only():
    w = GeneratedLabels(4, 0, ["main", "generated", "a", "b"], generator=AuxiliaryLabelGenerator(3, 2, 2),
                        aux_weight=0.25)
    losses = torch.tensor([[1.0, 2.0, 100.0, 100.0], [3.0, 6.0, 100.0, 100.0]])
    # mean main 2 + 0.25 * mean generated 4 = 3; the hand-designed columns get weight 0
    assert float(w(losses)) == pytest.approx(3.0)
    assert w.effective_weights() == {"main": 1.0, "generated": 0.25, "a": 0.0, "b": 0.0}
    # the only non-main column is the generated one when there are two
    assert GeneratedLabels(2, 1, generator=AuxiliaryLabelGenerator(3, 2, 2)).generated_task == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"aux_weight": -1.0}, "aux_weight"), ({"aux_weight": math.inf}, "aux_weight"),
    ({"generated_task": 0}, "generated_task"), ({"generated_task": 5}, "generated_task"),
    ({"generator": "net"}, "generator"),
])
def test_bad_options_are_named(kwargs, match):
    options = {"generator": AuxiliaryLabelGenerator(3, 2, 2), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        GeneratedLabels(2, 0, **options)


def test_several_auxiliary_columns_need_the_generated_one_named():
    with pytest.raises(ValueError, match="generated_task"):
        GeneratedLabels(3, 0, ["main", "x", "y"], generator=AuxiliaryLabelGenerator(3, 2, 2))


def test_registered_by_name_and_frozen_generator_has_no_trainable_parameter():
    gen = AuxiliaryLabelGenerator(3, 2, 2)
    frozen = make_weighting("generator_frozen", 2, generator=gen)
    # the factory knows all three; the frozen one is not learned and freezes its generator
    assert set(GENERATOR_WEIGHTINGS) == {"generator_ift", "generator_maxl", "generator_frozen"}
    assert isinstance(frozen, FrozenGeneratedLabels) and not frozen.learnable
    assert not any(p.requires_grad for p in gen.parameters())
    assert make_weighting("generator_ift", 2, generator=AuxiliaryLabelGenerator(3, 2, 2)).learnable


# ------------------------------------------------------------------- a tiny problem in float64
class SharedLinear(nn.Module):
    """Main logits ``x A``; auxiliary logits ``x A`` (each class repeated ``psi`` times) ``+ x B``.

    Linear in ``W = (A, B)``, so with the ridge term the training loss is strongly convex and
    ``W*(phi)`` unique; ``A`` is shared, so the generated labels move the main head.
    """

    def __init__(self, d=3, classes=2, psi=2):
        super().__init__()
        self.psi = psi
        self.A = nn.Parameter(0.5 * torch.randn(d, classes, dtype=torch.float64))
        self.B = nn.Parameter(0.5 * torch.randn(d, classes * psi, dtype=torch.float64))

    def forward(self, x):
        """``(main logits, auxiliary logits, ridge term 0.5 * RIDGE * |W|^2)``."""
        main = x @ self.A
        ridge = 0.5 * RIDGE * ((self.A ** 2).sum() + (self.B ** 2).sum())
        return main, main.repeat_interleave(self.psi, dim=1) + x @ self.B, ridge


RIDGE = 0.01


def tiny_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SharedLinear()
    gen = AuxiliaryLabelGenerator(3, 2, 2, hidden=()).double()
    x, xa = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    y, ya = (x[:, 0] + 0.5 * x[:, 1] > 0).long(), (xa[:, 0] + 0.5 * xa[:, 1] > 0).long()

    def loss_fn(m, batch):  # (B, 2); the ridge makes the inner problem strongly convex near its minimum
        xb, yb = batch
        logits, aux_logits, ridge = m(xb)
        main = F.cross_entropy(logits, yb, reduction="none") + ridge
        return torch.stack([main, soft_label_loss(aux_logits, gen(xb, yb))], dim=1)

    return model, gen, loss_fn, (x, y), (xa, ya)


def _inner_minimum(model, weighting, loss_fn, batch, start=None):
    """``W*(phi)``: L-BFGS (unless started at ``start``), then Newton steps on the exact Hessian
    to machine precision; written into ``model`` and returned flat."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def unflat(theta):
        return dict(zip(names, [t.reshape(s) for t, s in zip(theta.split(sizes), shapes)]))

    def objective(theta):
        return weighting(loss_fn(lambda xb: functional_call(model, unflat(theta), (xb,)), batch))

    theta = (start if start is not None else torch.cat([p.detach().reshape(-1) for p in model.parameters()])).clone()
    if start is None:
        theta.requires_grad_(True)
        opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")
        opt.step(lambda: (opt.zero_grad(), objective(theta).backward(), objective(theta))[-1])
        theta = theta.detach()
    for _ in range(8 if start is None else 3):  # quadratic convergence from a nearby start
        grad = torch.autograd.functional.jacobian(objective, theta)
        hess = torch.autograd.functional.hessian(objective, theta, vectorize=True)
        theta = theta - torch.linalg.solve(hess, grad)
    assert torch.linalg.vector_norm(torch.autograd.functional.jacobian(objective, theta)) < 1e-9
    assert torch.linalg.eigvalsh(torch.autograd.functional.hessian(objective, theta, vectorize=True)).min() >= RIDGE * (1 - 1e-9)
    with torch.no_grad():
        for p, t in zip(model.parameters(), theta.split(sizes)):
            p.copy_(t.reshape(p.shape))
    return theta


def test_generator_hypergradient_matches_finite_differences_of_the_inner_solution():
    model, gen, loss_fn, train, aux = tiny_problem()
    weighting = GeneratedLabels(2, generator=gen, aux_weight=0.7)
    theta0 = _inner_minimum(model, weighting, loss_fn, train)

    # IFT hypergradient at W*(phi) through the weighting, exact and CG solvers
    def hyper(solver):
        train_loss = weighting(loss_fn(model, train))
        val_loss = loss_fn(model, aux)[:, 0].mean()
        return hypergradient(val_loss, train_loss, model.parameters(), gen.parameters(), solver=solver).grads

    exact, cg = hyper(Exact()), hyper(CG(steps=50, tol=1e-14))

    # central differences of L_A(W*(phi)) along random directions of the generator's parameters
    phi = list(gen.parameters())
    eps = 1e-4  # round-off in W* (~1e-11) / eps stays far below the tolerance, eps^2 too
    g = torch.Generator().manual_seed(7)
    for _ in range(4):
        u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in phi]
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(phi, u):
                    p.add_(sign * eps * d)
            _inner_minimum(model, weighting, loss_fn, train, start=theta0)
            with torch.no_grad():
                values.append(float(loss_fn(model, aux)[:, 0].mean()))
                for p, d in zip(phi, u):
                    p.sub_(sign * eps * d)
        fd = (values[0] - values[1]) / (2 * eps)
        # the hypergradient is the derivative of the auxiliary-set loss at the inner optimum
        assert sum(float((a * d).sum()) for a, d in zip(exact, u)) == pytest.approx(fd, rel=1e-5, abs=1e-8)
        assert abs(fd) > 1e-6  # a real signal, not two zeros (FD noise is ~1e-7 / eps)
    for a, b in zip(exact, cg):
        assert torch.allclose(b, a, rtol=1e-8, atol=1e-12)


def test_maxl_is_the_zero_term_neumann_hypergradient_and_overrides_the_solver():
    model, gen, loss_fn, train, aux = tiny_problem(1)
    weighting = MaxlGeneratedLabels(2, generator=gen)
    cfg = LearnerConfig(solver="cg", steps=10, alpha=0.1, update_every=1)
    loader = DataLoader(TensorDataset(*train), batch_size=8)
    learner = AuxiliaryLearner(model, loss_fn, weighting, loader, DataLoader(TensorDataset(*aux), batch_size=6), torch.optim.SGD(model.parameters(), lr=0.1),
                               cfg, aux_optimizer=torch.optim.SGD(gen.parameters(), lr=1.0))
    # the learner runs MAXL's lookahead whatever the configured solver
    assert learner.config.solver == "neumann" and learner.config.steps == 0
    # reference: -alpha * d/dphi (g_T . g_A), with g_T and g_A at the same W
    train_loss = weighting(loss_fn(model, train))
    g_t = torch.autograd.grad(train_loss, list(model.parameters()), create_graph=True)
    g_a = torch.autograd.grad(loss_fn(model, aux)[:, 0].mean(), list(model.parameters()))
    ref = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_t, g_a)), list(gen.parameters()))
    got = learner.meta.step(weighting(loss_fn(model, train)), loss_fn(model, aux)[:, 0].mean(),
                            list(model.parameters()), list(gen.parameters()), return_grads=True)
    for a, r in zip(got, ref):
        assert torch.allclose(a, -0.1 * r, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------- the benchmark and the loop
@needs_sklearn
@pytest.mark.parametrize("psi", [1, 3])
def test_benchmark_generator_labels_are_zero_outside_the_true_class_group(psi):
    from auxilearn_hpo.tasks import make_task

    task = make_task("digits_aux_labels", seed=0, psi=psi, generator_depth=2, generator_width=8)
    x, y, _ = next(iter(task.train_loader))
    q = task.label_generator.double()(x.double(), y)
    group = torch.arange(10 * psi).div(psi, rounding_mode="floor")
    outside = group[None, :] != y[:, None]
    # exactly zero outside the true class's psi sub-classes, rows sum to 1
    assert torch.equal(q[outside], torch.zeros_like(q[outside]))
    assert torch.allclose(q.sum(1), torch.ones(len(y), dtype=torch.float64), rtol=0, atol=1e-15)
    assert task.model.aux.out_features == 10 * psi and len(task.label_generator.hidden) == 2


@needs_sklearn
def test_benchmark_split_sizes_and_psi_leaves_the_trunk_alone():
    from auxilearn_hpo.tasks import make_task

    a, b = make_task("digits_aux_labels", seed=3), make_task("digits_aux_labels", seed=3, psi=2)
    assert a.info["n"] == {"train": 60, "aux": 20, "val": 300, "test": 1417}
    labels = a.train_loader.dataset.tensors[1]
    assert torch.bincount(labels, minlength=10).tolist() == [6] * 10
    assert torch.equal(a.model.trunk[0].weight, b.model.trunk[0].weight)
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert a.task_names == ["main", "generated", "closed_loop", "ge5"]


@needs_sklearn
@pytest.mark.parametrize("weighting", ["generator_ift", "generator_maxl", "generator_frozen"])
def test_resume_from_state_dict_is_bit_for_bit(weighting):
    from auxilearn_hpo.tasks import make_task

    def make():
        torch.manual_seed(0)
        task = make_task("digits_aux_labels", seed=0)
        return AuxiliaryLearner.from_task(task, weighting, {"update_every": 1})

    straight = make()
    full = [strip(r) for r in straight.fit(4)]
    first = make()
    head = [strip(r) for r in first.fit(2)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must restore it
    second = make()
    second.load_state_dict(state)
    tail = [strip(r) for r in second.fit(4)]
    # Interrupted + resumed equals uninterrupted: same reports, same model, same generator.
    assert head + tail == full
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.weighting.generator.parameters(), second.weighting.generator.parameters()):
        assert torch.equal(a, b)
    # the learned generators moved; the frozen one did not
    start = make().weighting.generator
    moved = any(not torch.equal(a, b) for a, b in zip(start.parameters(), second.weighting.generator.parameters()))
    assert moved == (weighting != "generator_frozen")
    assert full[-1]["hypersteps"] == (0 if weighting == "generator_frozen" else 12)


@needs_sklearn
def test_trial_passes_the_learned_label_settings():
    from auxilearn_hpo.integrations.trial import Trial

    trial = Trial("digits_aux_labels", {"weighting": "generator_ift", "psi": 3, "generator_width": 16,
                                        "generator_depth": 2, "aux_weight": 0.5, "aux_lr": 0.02, "epochs": 1,
                                        "update_every": 3})
    w = trial.learner.weighting
    # psi / width / depth shape the task, aux_weight the weighting, aux_lr the generator's optimizer
    assert w.generator is trial.task.label_generator and w.generator.psi == 3 and w.generator.hidden == (16, 16)
    assert trial.task.model.aux.out_features == 30 and w.aux_weight == 0.5
    assert trial.learner.meta.param_groups[0]["lr"] == 0.02
    (report,) = list(trial.reports())
    assert report.weights["generated"] == 0.5 and report.hypersteps == 1
    with pytest.raises(TypeError, match="psi"):
        Trial("toy", {"psi": 3})


def test_generator_weighting_on_a_task_without_generator_is_named():
    from auxilearn_hpo.tasks import make_task

    with pytest.raises(ValueError, match="generator_ift.*label_generator"):
        AuxiliaryLearner.from_task(make_task("toy"), "generator_ift")


def test_label_space_has_the_generator_settings_and_is_a_valid_trial_space():
    from auxilearn_hpo.integrations.space import label_generator_space
    from auxilearn_hpo.integrations.trial import check_config

    space = label_generator_space()
    # every searched name is a trial setting; the defaults of the benchmark lie inside it
    check_config(dict.fromkeys(space))
    assert 5 in space["psi"].choices and 64 in space["generator_width"].choices and 1 in space["generator_depth"].choices
    assert space["aux_weight"].low <= 1.0 <= space["aux_weight"].high
    assert set(space["weighting"].choices) == {"generator_ift", "generator_maxl"}
