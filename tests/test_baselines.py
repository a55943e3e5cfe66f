"""Baselines against hand-computed values from each paper's update rule.

Most tests use a shared parameter ``theta`` (2 numbers) and losses linear in it,
``L_j = a_j . theta + c_j``, so the per-task gradient is simply ``a_j`` and every reference
value can be checked with pencil and paper.
"""
import math

import pytest
import torch

from auxilearn_hpo.baselines import (
    BASELINES,
    DynamicWeightAverage,
    EqualWeights,
    GradientCosineSimilarity,
    GradNorm,
    PCGrad,
    SingleTask,
    UncertaintyWeighting,
)
from auxilearn_hpo.weighting import Weighting

DT = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def t(*values):
    return torch.tensor(values, dtype=DT)


def linear_losses(theta, grads, offsets=None):
    """Loss matrix ``(1, T)`` with ``L_j = grads[j] . theta + offsets[j]``."""
    a = torch.tensor(grads, dtype=DT)
    c = torch.zeros(len(grads), dtype=DT) if offsets is None else torch.tensor(offsets, dtype=DT)
    return (a @ theta + c).unsqueeze(0)


@pytest.fixture
def regression():
    """theta=(1, 2); two samples x=e1, e2; targets y[b]=(main, aux); losses (x.theta - y)^2 / 2.

    Residuals: sample 0 (1-0, 1-1) = (1, 0); sample 1 (2-1, 2-0) = (1, 2).
    Gradients of the batch means: main ((1,0)*1 + (0,1)*1)/2 = (0.5, 0.5);
    aux ((1,0)*0 + (0,1)*2)/2 = (0, 1).  Loss means: main 0.5, aux 1.0.
    """
    theta = torch.tensor([1.0, 2.0], dtype=DT, requires_grad=True)
    x = torch.eye(2, dtype=DT)
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=DT)
    losses = ((x @ theta).unsqueeze(1) - y) ** 2 / 2
    return theta, losses


# ------------------------------------------------------------------ single task / equal weights


def test_single_task_gradient_is_main_gradient(regression):
    theta, losses = regression
    loss = SingleTask(2).backward(losses, [theta])
    # only the main loss counts: its batch mean is 0.5 and its gradient (0.5, 0.5)
    assert loss.item() == pytest.approx(0.5)
    torch.testing.assert_close(theta.grad, t(0.5, 0.5), **TOL)


def test_single_task_weights_are_one_hot():
    # main_task=1 puts the single 1 in column 1
    assert SingleTask(3, main_task=1).task_weights().tolist() == [0.0, 1.0, 0.0]


def test_equal_weights_gradient_is_sum_of_gradients(regression):
    theta, losses = regression
    loss = EqualWeights(2).backward(losses, [theta])
    # 0.5 + 1.0 and (0.5, 0.5) + (0, 1)
    assert loss.item() == pytest.approx(1.5)
    torch.testing.assert_close(theta.grad, t(0.5, 1.5), **TOL)


def test_backward_accumulates_into_existing_grad(regression):
    theta, losses = regression
    theta.grad = t(10.0, 10.0)
    EqualWeights(2).backward(losses, [theta])
    # p.grad += g, as loss.backward() would do
    torch.testing.assert_close(theta.grad, t(10.5, 11.5), **TOL)


# ------------------------------------------------------------------ uncertainty weighting


@pytest.fixture
def uncertainty():
    w = UncertaintyWeighting(2).double()
    with torch.no_grad():
        w.log_var.copy_(t(0.0, math.log(2.0)))
    return w


def test_uncertainty_loss_value(uncertainty, regression):
    _, losses = regression
    # e^0 * 0.5 + 0 + e^{-ln 2} * 1.0 + ln 2 = 1 + ln 2
    assert uncertainty(losses).item() == pytest.approx(1.0 + math.log(2.0), rel=1e-12)


def test_uncertainty_log_var_gradient(uncertainty, regression):
    theta, losses = regression
    uncertainty.backward(losses, [theta, *uncertainty.parameters()])
    # d/ds_j (e^{-s_j} L_j + s_j) = 1 - e^{-s_j} L_j = (1 - 0.5, 1 - 0.5)
    torch.testing.assert_close(uncertainty.log_var.grad, t(0.5, 0.5), **TOL)


def test_uncertainty_model_gradient_uses_precisions(uncertainty, regression):
    theta, losses = regression
    uncertainty.backward(losses, [theta, *uncertainty.parameters()])
    # weights e^{-s} = (1, 0.5): (0.5, 0.5) + 0.5 * (0, 1)
    torch.testing.assert_close(theta.grad, t(0.5, 1.0), **TOL)
    # the effective weights are the precisions e^{-s}
    torch.testing.assert_close(uncertainty.task_weights(), t(1.0, 0.5), **TOL)


def test_uncertainty_starts_as_equal_weights():
    w = UncertaintyWeighting(3)
    # log_var = 0 -> every weight e^0 = 1, and log_var is a parameter the model optimizer sees
    assert w.task_weights().tolist() == [1.0, 1.0, 1.0]
    assert [n for n, _ in w.named_parameters()] == ["log_var"]


# ------------------------------------------------------------------ dynamic weight average


def test_dwa_weights_stay_one_before_two_epochs():
    w = DynamicWeightAverage(2)
    w.epoch_end(t(1.0, 2.0))
    # only one epoch loss known: no ratio yet
    assert w.task_weights().tolist() == [1.0, 1.0]


def test_dwa_weights_after_three_epochs():
    w = DynamicWeightAverage(2, temperature=2.0).double()
    for losses in (t(1.0, 2.0), t(0.5, 2.0), t(0.25, 2.0)):
        w.epoch_end(losses)
    # r = L(3)/L(2) = (0.5, 1.0); w = 2 softmax(r / 2) = 2 (1, e^{0.25}) / (1 + e^{0.25})
    expected = 2 * t(1.0, math.exp(0.25)) / (1 + math.exp(0.25))
    torch.testing.assert_close(w.task_weights(), expected, **TOL)


def test_dwa_forward_uses_current_weights():
    w = DynamicWeightAverage(2).double()
    w.weights.copy_(t(0.5, 1.5))
    # batch means (2, 3) weighted by (0.5, 1.5)
    assert w(t(1.0, 2.0, 3.0, 4.0).reshape(2, 2)).item() == pytest.approx(5.5)


def test_dwa_state_dict_round_trip():
    a = DynamicWeightAverage(2)
    for losses in (t(1.0, 2.0), t(0.5, 2.0)):
        a.epoch_end(losses)
    b = DynamicWeightAverage(2)
    b.load_state_dict(a.state_dict())
    a.epoch_end(t(0.25, 1.0))
    b.epoch_end(t(0.25, 1.0))
    # the restored history gives the same next weights and epoch count
    torch.testing.assert_close(b.task_weights(), a.task_weights())
    assert int(b.n_epochs) == int(a.n_epochs) == 3


def test_dwa_rejects_wrong_shape_and_negative_losses():
    w = DynamicWeightAverage(2)
    # a (T,) vector is required
    with pytest.raises(ValueError, match="task_losses"):
        w.epoch_end(t(1.0, 2.0, 3.0))
    # ratios of negative losses are meaningless
    with pytest.raises(ValueError, match="task_losses"):
        w.epoch_end(t(1.0, -2.0))


# ------------------------------------------------------------------ GradNorm
# g_1 = (3, 4) (norm 5), g_2 = (1, 0) (norm 1); L_1 = 3 th1 + 4 th2, L_2 = th1 + 1.


def gradnorm_losses(theta):
    return linear_losses(theta, [[3.0, 4.0], [1.0, 0.0]], [0.0, 1.0])


def test_gradnorm_first_step_matches_hand_computation():
    w = GradNorm(2, alpha=1.5, lr=0.1).double()
    theta = t(1.0, 1.0).requires_grad_()
    loss = w.backward(gradnorm_losses(theta), [theta])
    # model gradient with the old weights (1, 1): (3, 4) + (1, 0); loss 7 + 2
    torch.testing.assert_close(theta.grad, t(4.0, 4.0), **TOL)
    assert loss.item() == pytest.approx(9.0)
    # first call: r = (1, 1); G = (5, 1), target = mean(G) = 3; sign(G - 3) = (+1, -1)
    # w = (1 - 0.1*5, 1 + 0.1*1) = (0.5, 1.1), renormalised to sum 2: (0.625, 1.375)
    torch.testing.assert_close(w.task_weights(), t(0.625, 1.375), **TOL)


def test_gradnorm_second_step_uses_training_rates():
    w = GradNorm(2, alpha=1.5, lr=0.1).double()
    theta = t(1.0, 1.0).requires_grad_()
    w.backward(gradnorm_losses(theta), [theta])  # records L(0) = (7, 2); w -> (0.625, 1.375)
    theta = t(0.0, 1.0).requires_grad_()
    w.backward(gradnorm_losses(theta), [theta])  # L = (4, 1)
    # model gradient with (0.625, 1.375): 0.625 (3, 4) + 1.375 (1, 0)
    torch.testing.assert_close(theta.grad, t(3.25, 2.5), **TOL)
    # L/L(0) = (4/7, 1/2) -> r = (16/15, 14/15); G = (3.125, 1.375), mean 2.25
    G, target = t(3.125, 1.375), 2.25 * t(16 / 15, 14 / 15) ** 1.5
    # target ~ (2.48, 2.03): signs (+1, -1), so w = (0.625 - 0.5, 1.375 + 0.1) = (0.125, 1.475)
    assert torch.sign(G - target).tolist() == [1.0, -1.0]
    torch.testing.assert_close(w.task_weights(), 2 * t(0.125, 1.475) / 1.6, **TOL)


def test_gradnorm_weights_sum_to_n_tasks_and_are_buffers():
    torch.manual_seed(0)
    w = GradNorm(3, lr=0.5).double()
    theta = torch.randn(4, dtype=DT, requires_grad=True)
    for _ in range(5):
        losses = (torch.randn(6, 3, 4, dtype=DT) @ theta) ** 2
        w.backward(losses, [theta])
    # renormalisation keeps sum w = T, and every weight stays positive
    assert w.task_weights().sum().item() == pytest.approx(3.0)
    assert (w.task_weights() > 0).all()
    # weights are not parameters, so the model optimizer never updates them
    assert list(w.parameters()) == []


def test_gradnorm_step_equals_autograd_on_gradnorm_loss():
    torch.manual_seed(0)
    shared = torch.randn(3, 4, dtype=DT, requires_grad=True)
    heads = torch.randn(2, 3, dtype=DT, requires_grad=True)
    x = torch.randn(5, 4, dtype=DT)

    def losses():
        return (torch.tanh(x @ shared.T) @ heads.T) ** 2  # (5, 2)

    w = GradNorm(2, alpha=1.5, lr=0.05).double()
    w.backward(losses(), [shared, heads], [shared])  # record L(0)
    with torch.no_grad():
        shared.add_(0.3)
    # reference: autograd through G_j = ||d (w_j L_j) / d shared|| with a constant target
    weights = w.task_weights().requires_grad_()
    task = losses().mean(0)
    norms = torch.stack([torch.autograd.grad(task[j], shared, retain_graph=True)[0].norm() for j in range(2)])
    G = weights * norms
    rel = task.detach() / w.initial_losses
    target = (G.mean() * (rel / rel.mean()) ** 1.5).detach()
    (dw,) = torch.autograd.grad((G - target).abs().sum(), weights)
    expected = (weights - 0.05 * dw).detach()
    expected = 2 * expected / expected.sum()
    w.backward(losses(), [shared, heads], [shared])
    # the closed-form step d G_j / d w_j = ||g_j|| is the autograd step
    torch.testing.assert_close(w.task_weights(), expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ gradient cosine similarity
# main g = (1, 0); an auxiliary head h receives d L_aux / dh = 3 whatever the gate.


def cosine_case(aux_grad):
    theta = t(0.5, -0.5).requires_grad_()
    head = t(2.0).requires_grad_()
    losses = linear_losses(theta, [[1.0, 0.0], aux_grad]) + torch.stack([0 * head, 3 * head]).T
    return theta, head, losses


def test_cosine_drops_conflicting_auxiliary_gradient():
    theta, head, losses = cosine_case([-1.0, 1.0])
    w = GradientCosineSimilarity(2).double()
    w.backward(losses, [theta, head], [theta])
    # cos((1,0), (-1,1)) = -1/sqrt(2) < 0: shared gradient is the main one alone
    torch.testing.assert_close(theta.grad, t(1.0, 0.0), **TOL)
    # the auxiliary head is not shared and still gets its own gradient
    torch.testing.assert_close(head.grad, t(3.0), **TOL)
    # the gate is reported as the auxiliary task's effective weight
    assert w.task_weights().tolist() == [1.0, 0.0]


def test_cosine_keeps_aligned_auxiliary_gradient():
    theta, head, losses = cosine_case([1.0, 1.0])
    GradientCosineSimilarity(2).double().backward(losses, [theta, head], [theta])
    # cos = 1/sqrt(2) > 0: (1, 0) + (1, 1)
    torch.testing.assert_close(theta.grad, t(2.0, 1.0), **TOL)


def test_cosine_weighted_scales_by_cosine():
    theta, head, losses = cosine_case([1.0, 1.0])
    w = GradientCosineSimilarity(2, weighted=True).double()
    w.backward(losses, [theta, head], [theta])
    # (1, 0) + cos (1, 1) with cos = 1/sqrt(2)
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(theta.grad, t(1.0 + c, c), **TOL)
    # the weighted gate is the cosine itself
    torch.testing.assert_close(w.task_weights(), t(1.0, c), **TOL)


def test_cosine_respects_main_task_column():
    theta, head, losses = cosine_case([-1.0, 1.0])
    w = GradientCosineSimilarity(2, main_task=1).double()
    w.backward(losses, [theta, head], [theta])
    # column 1 is now the main task, so column 0 is the gated auxiliary: (-1, 1) alone
    torch.testing.assert_close(theta.grad, t(-1.0, 1.0), **TOL)


# ------------------------------------------------------------------ PCGrad


def test_pcgrad_projects_conflicting_gradients():
    theta = t(0.0, 0.0).requires_grad_()
    w = PCGrad(2).double()
    w.backward(linear_losses(theta, [[1.0, 0.0], [-1.0, 1.0]]), [theta])
    # g1.g2 = -1: g1 -> (1,0) + 1/2 (-1,1) = (0.5, 0.5); g2 -> (-1,1) + 1 (1,0) = (0, 1)
    torch.testing.assert_close(theta.grad, t(0.5, 1.5), **TOL)
    # in the original basis: 2 g1 + 1.5 g2 = (0.5, 1.5); these are gradient coefficients, not loss weights
    torch.testing.assert_close(w.surgery_coefficients(), t(2.0, 1.5), **TOL)
    assert w.task_weights().tolist() == [1.0, 1.0]


def test_pcgrad_plain_sum_without_conflict():
    theta = t(0.0, 0.0).requires_grad_()
    w = PCGrad(2).double()
    w.backward(linear_losses(theta, [[1.0, 0.0], [1.0, 1.0]]), [theta])
    # g1.g2 = 1 >= 0: no projection
    torch.testing.assert_close(theta.grad, t(2.0, 1.0), **TOL)


def test_pcgrad_leaves_non_shared_params_alone():
    theta = t(0.0, 0.0).requires_grad_()
    head = t(1.0).requires_grad_()
    losses = linear_losses(theta, [[1.0, 0.0], [-1.0, 1.0]]) + torch.stack([2 * head, 5 * head]).T
    PCGrad(2).double().backward(losses, [theta, head], [theta])
    # the head gets the plain sum 2 + 5
    torch.testing.assert_close(head.grad, t(7.0), **TOL)


def reference_pcgrad(grads, generator):
    """Algorithm 1 of Yu et al. on flattened vectors, drawing orders from ``generator``."""
    n = len(grads)
    out = []
    for i in range(n):
        gi = grads[i].clone()
        others = [j for j in range(n) if j != i]
        for k in torch.randperm(n - 1, generator=generator).tolist():
            gj = grads[others[k]]
            if gi @ gj < 0:
                gi = gi - (gi @ gj) / (gj @ gj) * gj
        out.append(gi)
    return sum(out)


def test_pcgrad_matches_vector_reference_with_three_tasks():
    torch.manual_seed(1)
    grads = torch.randn(3, 5, dtype=DT)
    theta = torch.zeros(5, dtype=DT, requires_grad=True)
    w, generator = PCGrad(3, seed=7).double(), torch.Generator().manual_seed(7)
    for _ in range(3):  # three calls, so later calls use later random orders
        theta.grad = None
        w.backward(linear_losses(theta, grads.tolist()), [theta])
        expected = reference_pcgrad(list(grads), generator)
        # same seed, same orders: the Gram-matrix surgery equals projecting the vectors
        torch.testing.assert_close(theta.grad, expected, rtol=1e-10, atol=1e-12)


def test_pcgrad_state_dict_restores_random_order():
    torch.manual_seed(2)
    grads = torch.randn(4, 3, dtype=DT).tolist()
    a = PCGrad(4, seed=3).double()
    theta = torch.zeros(3, dtype=DT, requires_grad=True)
    a.backward(linear_losses(theta, grads), [theta])
    b = PCGrad(4, seed=99).double()
    b.load_state_dict(a.state_dict())
    results = []
    for m in (a, b):
        theta.grad = None
        m.backward(linear_losses(theta, grads), [theta])
        results.append(theta.grad.clone())
    # the generator state (and seed) travel in the state dict, so both draw the same orders
    assert b.seed == 3
    torch.testing.assert_close(results[0], results[1])


# ------------------------------------------------------------------ options and interface


@pytest.mark.parametrize(
    "cls, kwargs, name",
    [
        (DynamicWeightAverage, {"temperature": 0.0}, "temperature"),
        (DynamicWeightAverage, {"temperature": float("nan")}, "temperature"),
        (GradNorm, {"alpha": -1.0}, "alpha"),
        (GradNorm, {"lr": 0.0}, "lr"),
        (GradientCosineSimilarity, {"weighted": 1}, "weighted"),
        (PCGrad, {"seed": -1}, "seed"),
        (PCGrad, {"seed": 1.5}, "seed"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_bad_option_raises_value_error_naming_it(cls, kwargs, name):
    # the message names the argument and quotes the value received
    with pytest.raises(ValueError, match=rf"{name}.*{kwargs[name]!r}"):
        cls(2, **kwargs)


def test_registry_holds_every_baseline():
    # the names a tuning study uses
    assert list(BASELINES) == ["single_task", "equal", "uncertainty", "dwa", "gradnorm", "cosine", "pcgrad", "fixed"]
    # none of them is updated by hypergradients
    assert all(issubclass(c, Weighting) and c.learnable is False for c in BASELINES.values())


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_checks_loss_shape(name):
    w = BASELINES[name](3, 1, ["a", "b", "c"])
    theta = torch.zeros(2, requires_grad=True)
    bad = torch.ones(4, 2) * theta.sum()
    # a (B, 2) matrix for 3 tasks is rejected by forward and by backward
    with pytest.raises(ValueError, match="n_tasks=3"):
        w(bad)
    with pytest.raises(ValueError, match="n_tasks=3"):
        w.backward(bad, [theta])


# ------------------------------------------------------------------ FixedWeights (black-box search)


def test_fixed_weights_combine_with_the_given_weights():
    from auxilearn_hpo.baselines import FixedWeights

    w = FixedWeights(3, weights=[1.0, 0.5, 2.0])
    losses = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]], dtype=DT)
    # batch means (2, 3, 4) weighted (1, 0.5, 2): 2 + 1.5 + 8
    torch.testing.assert_close(w(losses), torch.tensor(11.5, dtype=DT), **TOL)
    torch.testing.assert_close(w.task_weights(), torch.tensor([1.0, 0.5, 2.0]))
    assert w.effective_weights() == {"main": 1.0, "aux1": 0.5, "aux2": 2.0}


def test_fixed_weights_backward_gives_the_weighted_gradient():
    from auxilearn_hpo.baselines import FixedWeights

    theta = torch.zeros(2, dtype=DT, requires_grad=True)
    grads = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    w = FixedWeights(3, weights=[1.0, 3.0, 0.0])
    w.backward(linear_losses(theta, grads), [theta])
    # 1 * (1, 0) + 3 * (0, 1) + 0 * (1, 1)
    torch.testing.assert_close(theta.grad, t(1.0, 3.0), **TOL)


def test_fixed_weights_dict_names_tasks_and_the_rest_keep_weight_one():
    from auxilearn_hpo.baselines import FixedWeights

    w = FixedWeights(3, 1, ["a", "main", "b"], weights={"b": 0.25})
    assert w.task_weights().tolist() == [1.0, 1.0, 0.25]
    # None is equal weighting
    losses = torch.rand(5, 3)
    torch.testing.assert_close(FixedWeights(3)(losses), EqualWeights(3)(losses))


def test_fixed_weights_are_not_learned_and_not_checkpointed():
    from auxilearn_hpo.baselines import FixedWeights

    a = FixedWeights(2, weights=[1.0, 0.1])
    assert a.learnable is False and list(a.parameters()) == []
    assert "weights" not in a.state_dict()
    # a checkpoint of other weights loads strictly and the new weights stay in effect (PBT)
    b = FixedWeights(2, weights=[1.0, 5.0])
    b.load_state_dict(a.state_dict())
    assert b.task_weights().tolist() == [1.0, 5.0]


def test_fixed_weights_survive_a_learner_restore_with_other_weights():
    from auxilearn_hpo.baselines import FixedWeights
    from auxilearn_hpo.tasks import make_task
    from auxilearn_hpo.learner import AuxiliaryLearner

    task = make_task("toy", seed=0)
    first = AuxiliaryLearner.from_task(task, FixedWeights(3, 0, task.task_names, weights=[1.0, 1.0, 1.0]))
    list(first.fit(1))
    state = first.state_dict()
    task2 = make_task("toy", seed=0)
    second = AuxiliaryLearner.from_task(task2, FixedWeights(3, 0, task2.task_names, weights=[1.0, 0.5, 0.0]))
    second.load_state_dict(state)
    report = list(second.fit(2))[-1]
    assert report.epoch == 2
    assert report.weights == {"main": 1.0, "helpful": 0.5, "harmful": 0.0}


def test_fixed_weights_by_name_through_make_weighting():
    from auxilearn_hpo.registry import make_weighting

    w = make_weighting("fixed", 2, weights={"aux1": 0.5})
    assert w.task_weights().tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    "weights, error, match",
    [
        ([1.0, 2.0], ValueError, "n_tasks=3"),
        ([1.0, -1.0, 0.0], ValueError, r"weights\['aux1'\].*-1.0"),
        ([1.0, float("nan"), 0.0], ValueError, r"weights\['aux1'\]"),
        ({"nope": 1.0}, ValueError, r"unknown task.*nope"),
        ("abc", TypeError, "weights must be"),
        (3.0, TypeError, "weights must be"),
    ],
    ids=["length", "negative", "nan", "unknown-name", "string", "scalar"],
)
def test_fixed_weights_bad_weights_raise_naming_them(weights, error, match):
    from auxilearn_hpo.baselines import FixedWeights

    with pytest.raises(error, match=match):
        FixedWeights(3, weights=weights)
