"""PooledAdam against a hand-written reference, Adam where they must agree, and bad options."""
import copy
import math

import pytest
import torch

from auxilearn_hpo.learner import AuxiliaryLearner, LearnerConfig
from auxilearn_hpo.pooled_adam import PooledAdam
from auxilearn_hpo.tasks import make_task


def reference(grads, lr=0.1, betas=(0.9, 0.999), eps=1e-8):
    """The update rule written out element by element in float64 Python."""
    b1, b2 = betas
    n = len(grads[0])
    p, m, v = [0.0] * n, [0.0] * n, [0.0] * n
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        v_hat = [vi / (1 - b2 ** t) for vi in v]
        floor = sum(v_hat) / n
        p = [pi - lr * (mi / (1 - b1 ** t)) / (math.sqrt(max(vh, floor)) + eps) for pi, mi, vh in zip(p, m, v_hat)]
    return p


def run(grads, dtype=torch.float64, **kw):
    w = torch.zeros(len(grads[0]), dtype=dtype, requires_grad=True)
    opt = PooledAdam([w], **kw)
    for g in grads:
        w.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    return w.detach()


def test_matches_the_written_out_rule_over_several_steps():
    grads = [[1.0, -0.5, 0.01, 0.0], [0.8, -0.4, 0.02, 0.3], [1.2, 0.1, -0.01, 0.2]]
    assert torch.allclose(run(grads, lr=0.1), torch.tensor(reference(grads), dtype=torch.float64), atol=1e-14)


def test_small_coordinates_move_in_proportion_and_large_ones_by_about_lr():
    w = run([[1.0, 1.0, 0.01]], lr=0.1)
    # first step: m_hat = g, v_hat = g^2, floor = mean(g^2) = (2 + 1e-4) / 3
    floor = math.sqrt((2 + 1e-4) / 3)
    assert torch.allclose(w, torch.tensor([-0.1, -0.1, -0.1 * 0.01 / floor], dtype=torch.float64), atol=1e-9)


def test_equals_adam_when_every_coordinate_has_the_same_second_moment():
    torch.manual_seed(0)
    signs = torch.randint(0, 2, (5, 4)).double() * 2 - 1
    grads = (signs * 0.7).tolist()  # |g| equal everywhere: v equal, the floor never binds
    w_adam = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([w_adam], lr=0.05)
    for g in grads:
        w_adam.grad = torch.tensor(g, dtype=torch.float64)
        adam.step()
    assert torch.allclose(run(grads, lr=0.05), w_adam.detach(), atol=1e-12)


def test_invariant_to_the_scale_of_the_gradient():
    grads = [[0.3, -2.0, 0.05], [0.2, -1.5, 0.0]]
    scaled = [[1e3 * g for g in row] for row in grads]
    assert torch.allclose(run(grads, lr=0.1, eps=0.0), run(scaled, lr=0.1, eps=0.0), atol=1e-12)


def test_state_dict_round_trip_continues_the_same_run():
    grads = [[1.0, 0.1], [0.5, -0.2], [0.3, 0.4]]
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = PooledAdam([w], lr=0.1)
    w.grad = torch.tensor(grads[0], dtype=torch.float64)
    opt.step()
    w2 = w.detach().clone().requires_grad_(True)
    opt2 = PooledAdam([w2], lr=0.1)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as a checkpoint on disk would
    for g in grads[1:]:
        for p, o in ((w, opt), (w2, opt2)):
            p.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
    assert torch.equal(w.detach(), w2.detach())
    assert torch.allclose(w.detach(), torch.tensor(reference(grads), dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("kw, match", [
    ({"lr": -0.1}, "lr must be a finite number > 0"),
    ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ({"betas": (0.9, 1.0)}, r"betas must be two numbers in \[0, 1\)"),
    ({"betas": 0.9}, r"betas must be two numbers in \[0, 1\)"),
    ({"eps": float("inf")}, "eps must be a finite number >= 0"),
])
def test_bad_options_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        PooledAdam([torch.zeros(1, requires_grad=True)], **kw)


def test_learner_builds_it_by_default_and_validates_the_name():
    learner = AuxiliaryLearner.from_task(make_task("toy", seed=0), "linear")
    assert isinstance(learner.meta.meta_optimizer, PooledAdam)
    assert isinstance(AuxiliaryLearner.from_task(make_task("toy", seed=0), "linear", config={"aux_optimizer": "adam"})
                      .meta.meta_optimizer, torch.optim.Adam)
    with pytest.raises(ValueError, match="aux_optimizer must be one of"):
        LearnerConfig(aux_optimizer="adamw")


def test_continues_an_adam_state_as_adam_would_on_a_one_element_tensor():
    """A checkpoint written with ``aux_optimizer="adam"`` (tensor step counts) resumes."""
    grads = [[0.4], [-0.1], [0.3], [0.2]]
    w_adam = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([w_adam], lr=0.1)
    for g in grads[:2]:
        w_adam.grad = torch.tensor(g, dtype=torch.float64)
        adam.step()
    w = w_adam.detach().clone().requires_grad_(True)
    pooled = PooledAdam([w], lr=0.1)
    pooled.load_state_dict(copy.deepcopy(adam.state_dict()))
    for g in grads[2:]:
        for p, o in ((w_adam, adam), (w, pooled)):
            p.grad = torch.tensor(g, dtype=torch.float64)
            o.step()
    assert torch.allclose(w.detach(), w_adam.detach(), atol=1e-12)

