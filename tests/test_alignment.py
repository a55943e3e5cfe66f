"""Gradient-alignment weighting against hand-computed cosines and its closed-form optimum."""
import math

import pytest
import torch
from torch import nn

from auxilearn_hpo.alignment import GradientAlignment
from auxilearn_hpo.tasks import make_task
from auxilearn_hpo.learner import AuxiliaryLearner


def two_task_problem():
    """W in R^2; task losses l_0 = a0 . W, l_1 = a1 . W (gradients a0, a1); aux loss d . W."""
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    a0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    a1 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    d = torch.tensor([0.0, 2.0], dtype=torch.float64)
    losses = torch.stack([a0 @ w, a1 @ w]).unsqueeze(0)  # (B=1, T=2)
    return w, losses, d @ w


def test_cosines_and_meta_gradient_match_hand_computation():
    w, losses, aux = two_task_problem()
    weighting = GradientAlignment(2, momentum=0.9).double()
    (grad,) = weighting.meta_gradient(losses, aux, [w])
    c01 = 1 / math.sqrt(2)  # cos(a0, a1)
    assert torch.allclose(weighting.cos_tasks, torch.tensor([[1.0, c01], [c01, 1.0]], dtype=torch.float64))
    assert torch.allclose(weighting.cos_target, torch.tensor([0.0, c01], dtype=torch.float64))
    assert torch.allclose(weighting.grad_norm, torch.tensor([1.0, math.sqrt(2)], dtype=torch.float64))
    # b^T a with a = u / sqrt(u^T C u), u = exp(phi) = (1, 1): d/dphi by hand
    u = torch.ones(2, dtype=torch.float64)
    c = weighting.cos_tasks
    b = weighting.cos_target
    q = u @ c @ u
    da_du = torch.eye(2, dtype=torch.float64) / q.sqrt() - torch.outer(u, c @ u) / q ** 1.5
    expected = -(da_du.T @ b) * u  # chain rule through u = exp(phi)
    assert torch.allclose(grad, expected)
    # the task aligned with the auxiliary gradient gains weight, the orthogonal one loses it
    assert grad[1] < 0 < grad[0]


def test_running_mean_then_ema_of_the_cosines():
    w, losses, aux = two_task_problem()
    weighting = GradientAlignment(2, momentum=0.5).double()
    weighting.meta_gradient(losses, aux, [w])
    first = weighting.cos_target.clone()
    w2, losses2, _ = two_task_problem()
    aux2 = torch.tensor([2.0, 0.0], dtype=torch.float64) @ w2  # now aligned with task 0
    weighting.meta_gradient(losses2, aux2, [w2])
    second = torch.tensor([1.0, 1 / math.sqrt(2)], dtype=torch.float64)
    assert torch.allclose(weighting.cos_target, 0.5 * first + 0.5 * second)
    assert int(weighting.updates) == 2


def test_weights_on_raw_losses_keep_the_main_at_one():
    weighting = GradientAlignment(3)
    with torch.no_grad():
        weighting.weight.copy_(torch.tensor([0.0, math.log(2.0), -1.0]))
        weighting.grad_norm.copy_(torch.tensor([1.0, 4.0, 0.5]))
    w = weighting.task_weights()
    assert w[0] == pytest.approx(1.0)
    assert w[1] == pytest.approx(2.0 / 4.0)
    assert w[2] == pytest.approx(math.exp(-1.0) / 0.5)
    losses = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert float(weighting(losses)) == pytest.approx(float((losses.mean(0) * w).sum()))


def test_learner_drives_the_harmful_toy_task_down():
    task = make_task("toy", seed=0)
    learner = AuxiliaryLearner.from_task(task, "alignment")
    report = list(learner.fit(60))[-1]
    assert report.hypersteps > 0 and report.hypersteps_skipped == 0
    assert report.weights["harmful"] < 0.1 * report.weights["helpful"]


def test_bad_momentum_is_named():
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        GradientAlignment(3, momentum=1.0)
