"""Learned combiners and the auxiliary-label generator against hand-computed and independent references."""
import math
import re

import pytest
import torch

from auxilearn_hpo.combiners import (
    AuxiliaryLabelGenerator,
    ConvCombiner,
    LinearCombiner,
    NonlinearCombiner,
    soft_label_loss,
)

F64 = dict(rtol=1e-7, atol=1e-9)  # float64 analytic vs analytic
FD = dict(rtol=1e-6, atol=1e-8)  # float64 autograd vs central differences with eps=1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(module):
    """Non-negative weights and non-zero biases, so the tests do not lean on the zero-bias init."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.rand_like(p) if name.endswith("weight") else torch.randn_like(p))
    return module


def _constrained(module):
    """The tensors each combiner keeps non-negative."""
    if isinstance(module, LinearCombiner):
        return [module.weight]
    if isinstance(module, NonlinearCombiner):
        return [layer.weight for layer in module.layers]
    return [module.conv1.weight, module.conv2.weight]


# ---- independent references (no F.linear / F.conv2d / F.pad) ----------------------------------


def mlp_reference(combiner, losses):
    """Batch-mean combined loss of a NonlinearCombiner, written with plain matrix products."""
    h = losses
    for k, layer in enumerate(combiner.layers):
        if k:
            h = torch.log1p(torch.exp(h))
        h = h @ layer.weight.detach().T
        if layer.bias is not None:
            h = h + layer.bias.detach()
    out = h[:, 0].mean()
    return out + losses[:, combiner.main_task].mean() if combiner.skip_main else out


def conv_reference(combiner, maps):
    """Batch-mean combined loss of a ConvCombiner: replicate padding by index clamping, shifted sums."""
    w1, b1 = combiner.conv1.weight.detach(), combiner.conv1.bias.detach()
    w2 = combiner.conv2.weight.detach()[0, :, 0, 0]
    _, _, H, W = maps.shape
    k = combiner.kernel_size
    p = k // 2
    z = b1.view(1, -1, 1, 1).expand(maps.shape[0], -1, H, W).clone()
    for dy in range(k):
        rows = (torch.arange(H) + dy - p).clamp(0, H - 1)
        for dx in range(k):
            cols = (torch.arange(W) + dx - p).clamp(0, W - 1)
            shifted = maps[:, :, rows][:, :, :, cols]
            z = z + torch.einsum("ct,bthw->bchw", w1[:, :, dy, dx], shifted)
    out = torch.einsum("c,bchw->bhw", w2, torch.log1p(torch.exp(z))).mean(dim=(1, 2)).mean()
    return out + maps[:, combiner.main_task].mean() if combiner.skip_main else out


def uniform_increase_fd(fn, losses, eps=1e-5):
    """Central differences of fn when column / map j of every sample rises by eps: ``(T,)``."""
    out = []
    for j in range(losses.shape[1]):
        e = torch.zeros_like(losses)
        e[:, j] = eps
        out.append((fn(losses + e) - fn(losses - e)) / (2 * eps))
    return torch.stack(out)


# ---- LinearCombiner -----------------------------------------------------------------------------


def test_linear_combiner_equals_hand_computed_weighted_sum():
    combiner = LinearCombiner(3).double()
    with torch.no_grad():
        combiner.weight.copy_(torch.tensor([0.5, 2.0, 1.0]))
    losses = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    # rows give 0.5+4+3 = 7.5 and 1.5+0+1 = 2.5, mean 5; the skip adds the mean main loss (1+3)/2 = 2
    assert combiner(losses).item() == pytest.approx(7.0, abs=1e-12)


def test_linear_combiner_without_skip_is_plain_weighted_mean():
    combiner = LinearCombiner(2, skip_main=False, init=0.25).double()
    losses = torch.tensor([[4.0, 8.0], [0.0, 4.0]], dtype=torch.float64)
    # 0.25 * (12 + 4) / 2 = 2, and no main-loss term is added
    assert combiner(losses).item() == pytest.approx(2.0, abs=1e-12)


@pytest.mark.parametrize("skip_main, expected", [(True, [0.5, 3.0, 1.0]), (False, [0.5, 2.0, 1.0])], ids=["skip", "no-skip"])
def test_linear_effective_weights_are_weights_plus_one_on_main(skip_main, expected):
    combiner = LinearCombiner(3, main_task=1, skip_main=skip_main)
    with torch.no_grad():
        combiner.weight.copy_(torch.tensor([0.5, 2.0, 1.0]))
    # d/dl_j of mean(l @ w) + mean(l_main) is w_j, plus 1 for the main column when skipping
    assert torch.allclose(combiner.task_weights(), torch.tensor(expected))
    # the base class labels the same numbers with the default task names
    assert combiner.effective_weights() == pytest.approx({"aux1": 0.5, "main": expected[1], "aux2": 1.0})


# ---- NonlinearCombiner --------------------------------------------------------------------------


def test_nonlinear_forward_matches_matrix_reference():
    combiner = _randomise(NonlinearCombiner(3, hidden=(5, 4))).double()
    losses = torch.rand(6, 3, dtype=torch.float64)
    # the same MLP written as matrix products (softplus = log1p(exp)) gives the same combined loss
    assert torch.allclose(combiner(losses), mlp_reference(combiner, losses), **F64)


@pytest.mark.parametrize("at", ["batch", "default"])
def test_nonlinear_effective_weights_match_finite_differences(at):
    combiner = _randomise(NonlinearCombiner(3, main_task=2, hidden=(5, 4))).double()
    losses = torch.rand(6, 3, dtype=torch.float64) * 3 if at == "batch" else torch.ones(1, 3, dtype=torch.float64)
    expected = uniform_increase_fd(lambda l: mlp_reference(combiner, l), losses)
    # raising column j of every sample by eps moves the batch mean by eps * mean_i d f_i / d l_ij
    assert torch.allclose(combiner.task_weights(losses if at == "batch" else None), expected, **FD)


def test_nonlinear_combiner_is_monotone_in_every_loss():
    combiner = NonlinearCombiner(4, hidden=(8, 8))
    with torch.no_grad():
        for p in combiner.parameters():
            p.normal_()  # signed weights, then the projection AuxiLearn applies after each step
    combiner.project()
    losses = torch.rand(64, 4) * 5
    increase = torch.rand(64, 4) * (torch.rand(64, 4) < 0.5)
    # non-negative weights and non-decreasing softplus make f non-decreasing in every coordinate
    assert (combiner.per_sample(losses + increase) >= combiner.per_sample(losses) - 1e-6).all()


def test_nonlinear_initial_effective_weights_are_order_one():
    combiner = NonlinearCombiner(5, hidden=(32, 32), skip_main=False)
    w = combiner.task_weights()
    # fan-in scaled U(0, .) init: each path has mean gain 1, damped by softplus' in (0.5, 1) per layer
    assert ((w > 0.1) & (w < 3.0)).all(), w


# ---- ConvCombiner -------------------------------------------------------------------------------


def test_conv_combiner_on_loss_maps_matches_shifted_sum_reference():
    combiner = _randomise(ConvCombiner(3, hidden=4, kernel_size=3)).double()
    maps = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    out = combiner(maps)
    # a (B, T, H, W) input gives one scalar, equal to the conv written as clamped-index shifts
    assert out.shape == () and torch.allclose(out, conv_reference(combiner, maps), **F64)


@pytest.mark.parametrize("at", ["batch", "default"])
def test_conv_effective_weights_match_finite_differences(at):
    combiner = _randomise(ConvCombiner(2, main_task=1, hidden=3, kernel_size=3)).double()
    maps = torch.rand(2, 2, 4, 5, dtype=torch.float64) * 2 if at == "batch" else torch.ones(1, 2, 3, 3, dtype=torch.float64)
    expected = uniform_increase_fd(lambda m: conv_reference(combiner, m), maps)
    # raising map j uniformly by eps moves the loss by eps * batch mean of sum_pixels d f_i / d L_ij
    assert torch.allclose(combiner.task_weights(maps if at == "batch" else None), expected, **FD)


def test_conv_effective_weights_of_uniform_maps_do_not_depend_on_size():
    combiner = _randomise(ConvCombiner(2, hidden=3, kernel_size=5))
    small, large = torch.full((1, 2, 1, 1), 1.5), torch.full((1, 2, 9, 7), 1.5)
    # replicate padding makes every pixel of a uniform map see the whole kernel
    assert torch.allclose(combiner.task_weights(small), combiner.task_weights(large), atol=1e-6)


# ---- shared behaviour ---------------------------------------------------------------------------

COMBINERS = [
    pytest.param(lambda: LinearCombiner(3), (4, 3), id="linear"),
    pytest.param(lambda: NonlinearCombiner(3, hidden=(6, 5)), (4, 3), id="nonlinear"),
    pytest.param(lambda: ConvCombiner(3, hidden=4), (2, 3, 5, 5), id="conv"),
]


@pytest.mark.parametrize("make, shape", COMBINERS)
def test_project_restores_non_negativity_after_a_step(make, shape):
    combiner = make()
    combiner(torch.rand(shape) + 1).backward()
    with torch.no_grad():  # an SGD step with a huge rate down the (positive) gradient drives weights negative
        for p in combiner.parameters():
            p -= 100.0 * p.grad
    before = [w.detach().clone() for w in _constrained(combiner)]
    assert any((w < 0).any() for w in before)
    combiner.project()
    # project clamps at 0 in place: negatives become 0, the rest is untouched
    assert all(torch.equal(w, b.clamp(min=0)) for w, b in zip(_constrained(combiner), before))


@pytest.mark.parametrize("make, shape", COMBINERS)
def test_every_combiner_parameter_gets_a_gradient(make, shape):
    combiner = make()
    grads = torch.autograd.grad(combiner(torch.rand(shape)), list(combiner.parameters()))
    # hypergradients need d L_T / d phi for every auxiliary parameter
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("make, shape", COMBINERS)
def test_task_weights_leave_the_model_graph_alone(make, shape):
    combiner = make()
    theta = torch.rand(shape, requires_grad=True)
    losses = theta * 2  # stands in for the model's loss matrix
    combiner.task_weights(losses)
    # no gradient reached the model, and its graph is still there for the real backward
    assert theta.grad is None
    combiner(losses).backward()
    assert theta.grad is not None


@pytest.mark.parametrize("make, shape", COMBINERS)
def test_float64_module_and_losses_give_float64(make, shape):
    combiner = make().double()
    out = combiner(torch.rand(shape, dtype=torch.float64))
    # a .double()'d combiner computes and reports in float64
    assert out.dtype == torch.float64 and combiner.task_weights().dtype == torch.float64


@pytest.mark.parametrize("make, shape", COMBINERS)
def test_combiner_follows_input_dtype(make, shape):
    combiner = make()
    losses = torch.rand(shape, dtype=torch.float64)
    out = combiner(losses)
    # float32 parameters are cast to the losses' dtype, and agree with the float32 computation
    assert out.dtype == torch.float64 and torch.allclose(out.float(), combiner(losses.float()), rtol=1e-5)


@pytest.mark.parametrize(
    "make, bad, want",
    [
        pytest.param(lambda: LinearCombiner(3), (4, 2), "(batch, n_tasks)", id="linear-wrong-T"),
        pytest.param(lambda: NonlinearCombiner(3), (4, 3, 1), "(batch, n_tasks)", id="nonlinear-3d"),
        pytest.param(lambda: ConvCombiner(3), (4, 3), "(batch, n_tasks, H, W)", id="conv-2d"),
        pytest.param(lambda: ConvCombiner(3), (1, 2, 4, 4), "(batch, n_tasks, H, W)", id="conv-wrong-T"),
    ],
)
def test_wrong_shape_raises_naming_expected_shape(make, bad, want):
    # the message names the expected layout, so a caller sees what to pass
    with pytest.raises(ValueError, match=re.escape(want)):
        make()(torch.rand(bad))


@pytest.mark.parametrize(
    "make, argument",
    [
        pytest.param(lambda: LinearCombiner(3, init=-1.0), "init", id="negative-init"),
        pytest.param(lambda: NonlinearCombiner(3, hidden=(4, 0)), "hidden", id="zero-width"),
        pytest.param(lambda: ConvCombiner(3, kernel_size=4), "kernel_size", id="even-kernel"),
        pytest.param(lambda: AuxiliaryLabelGenerator(4, 3, psi=0), "psi", id="zero-psi"),
    ],
)
def test_bad_constructor_argument_raises_naming_it(make, argument):
    # construction validates each argument and names it in the error
    with pytest.raises(ValueError, match=argument):
        make()


def test_repr_shows_configuration():
    text = repr(ConvCombiner(3, main_task=1, hidden=4, kernel_size=5))
    # extra_repr carries the settings, so print(module) is informative
    assert "n_tasks=3, main_task=1, hidden=4, kernel_size=5, skip_main=True" in text


# ---- AuxiliaryLabelGenerator --------------------------------------------------------------------


def _generator_batch():
    gen = AuxiliaryLabelGenerator(4, n_classes=3, psi=2, hidden=(8,))
    return gen, torch.randn(6, 4), torch.tensor([0, 1, 2, 2, 1, 0])


def test_label_generator_rows_sum_to_one():
    gen, x, y = _generator_batch()
    soft = gen(x, y)
    # a softmax over the allowed sub-classes is a distribution over n_classes * psi columns
    assert soft.shape == (6, 6) and torch.allclose(soft.sum(1), torch.ones(6))


def test_label_generator_is_zero_outside_true_class_group():
    gen, x, y = _generator_batch()
    soft = gen(x, y).view(6, 3, 2)
    outside = torch.ones(6, 3, dtype=torch.bool)
    outside[torch.arange(6), y] = False
    # masked logits are -inf, so sub-classes of other classes get exactly zero mass
    assert (soft[outside] == 0).all() and (soft[~outside] > 0).all()


def test_label_generator_passes_gradient_to_its_parameters():
    gen, x, y = _generator_batch()
    soft_label_loss(torch.randn(6, 6), gen(x, y)).sum().backward()
    # soft labels are differentiable in phi, which the hypergradient needs
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


@pytest.mark.parametrize(
    "x, y, match",
    [
        pytest.param(torch.randn(3, 5), torch.tensor([0, 1, 2]), r"\(batch, n_features\)", id="x-features"),
        pytest.param(torch.randn(3, 4), torch.tensor([0, 1]), r"\(batch,\)", id="y-length"),
        pytest.param(torch.randn(3, 4), torch.tensor([0, 3, 1]), r"\[0, 3\)", id="y-too-large"),
        pytest.param(torch.randn(3, 4), torch.tensor([0, -1, 1]), r"\[0, 3\)", id="y-negative"),
    ],
)
def test_label_generator_rejects_bad_inputs(x, y, match):
    gen = AuxiliaryLabelGenerator(4, n_classes=3, psi=2)
    # the message names the expected shape or label range
    with pytest.raises(ValueError, match=match):
        gen(x, y)


def test_label_generator_rejects_float_labels():
    gen = AuxiliaryLabelGenerator(4, n_classes=3, psi=2)
    # class indices must be integers; floats would index silently wrong
    with pytest.raises(TypeError, match="integer"):
        gen(torch.randn(2, 4), torch.tensor([0.0, 1.0]))


def test_soft_label_loss_is_cross_entropy_with_soft_targets():
    logits = torch.randn(5, 6, dtype=torch.float64)
    q = torch.softmax(torch.randn(5, 6, dtype=torch.float64), dim=1)
    expected = -(q * (logits - logits.logsumexp(1, keepdim=True))).sum(1)
    # -sum_k q_k log softmax(z)_k per sample
    assert torch.allclose(soft_label_loss(logits, q), expected, **F64)


def test_label_generator_in_float64():
    gen = AuxiliaryLabelGenerator(4, n_classes=3, psi=2).double()
    soft = gen(torch.randn(2, 4, dtype=torch.float64), torch.tensor([1, 2]))
    # a .double()'d generator produces float64 labels that still sum to 1
    assert soft.dtype == torch.float64 and torch.allclose(soft.sum(1), torch.ones(2, dtype=torch.float64))


def test_linear_combiner_exp_parametrisation_is_positive_and_multiplicative():
    combiner = LinearCombiner(3, init=2.0, positive="exp")
    losses = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    # log-weights start at log 2: the combined loss is 2 * (sum of mean losses) + mean main loss.
    assert float(combiner(losses).detach()) == pytest.approx(2.0 * (2.0 + 2.0 + 2.0) + 2.0)
    with torch.no_grad():
        combiner.weight -= 100.0  # a huge step down still leaves positive weights
    combiner.project()
    weights = combiner.task_weights()
    assert (weights[1:] > 0).all() and float(weights[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive must be 'clamp' or 'exp'"):
        LinearCombiner(3, positive="softplus")


def test_linear_main_normalisation_fixes_the_main_weight_at_one():
    combiner = LinearCombiner(3, positive="exp", normalize="main").double()
    with torch.no_grad():
        combiner.weight.copy_(torch.tensor([5.0, math.log(2.0), math.log(0.5)]))
    losses = torch.tensor([[1.0, 2.0, 4.0], [3.0, 0.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(combiner.task_weights(), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    assert float(combiner(losses).detach()) == pytest.approx(float((losses @ torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)).mean()))
    (g,) = torch.autograd.grad(combiner(losses), combiner.weight)
    assert g[0] == 0  # the main entry is unused


def test_linear_sum_normalisation_keeps_the_total():
    combiner = LinearCombiner(4, positive="exp", normalize="sum", skip_main=False)
    with torch.no_grad():
        combiner.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    w = combiner.task_weights()
    assert float(w.sum()) == pytest.approx(4.0)
    assert torch.allclose(w, 4 * torch.softmax(combiner.weight.detach(), 0))
    with pytest.raises(ValueError, match="normalize='sum' needs positive='exp'"):
        LinearCombiner(3, normalize="sum")


def test_loss_scales_are_calibrated_once_and_restored_from_state():
    combiner = LinearCombiner(3, positive="exp", normalize="main", scale_losses=True)
    first = torch.tensor([[2.0, 10.0, 0.5], [4.0, 30.0, 1.5]])  # means 3, 20, 1
    combiner.calibrate(first)
    combiner.calibrate(first * 100)  # ignored: already calibrated
    assert torch.allclose(combiner.loss_scale, torch.tensor([3.0, 20.0, 1.0]))
    # weights on the raw losses: exp(phi) * s_main / s_j
    assert torch.allclose(combiner.task_weights(), torch.tensor([1.0, 3 / 20, 3.0]))
    losses = torch.rand(5, 3)
    assert float(combiner(losses).detach()) == pytest.approx(float((losses @ combiner.task_weights()).mean()), rel=1e-6)
    other = LinearCombiner(3, positive="exp", normalize="main", scale_losses=True)
    other.load_state_dict(combiner.state_dict())
    assert torch.allclose(other.task_weights(), combiner.task_weights()) and bool(other.calibrated)


def test_epoch_loss_scales_follow_the_epoch_means():
    combiner = LinearCombiner(2, positive="exp", normalize="main", scale_losses="epoch")
    combiner.epoch_end(torch.tensor([0.5, 2.0]))
    assert torch.allclose(combiner.task_weights(), torch.tensor([1.0, 0.25]))


def test_log_weights_are_kept_finite_by_projection():
    combiner = LinearCombiner(2, positive="exp")
    with torch.no_grad():
        combiner.weight.fill_(1e6)
    combiner.project()
    assert torch.isfinite(combiner.task_weights()).all()
    assert float(combiner.weight.detach().max()) == LinearCombiner.LOG_LIMIT


@pytest.mark.parametrize("kwargs, match", [
    ({"normalize": "total"}, "normalize must be None, 'main' or 'sum'"),
    ({"scale_losses": "always"}, "scale_losses must be False, True"),
])
def test_bad_linear_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearCombiner(3, positive="exp", **kwargs)


def test_linear_combiner_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        LinearCombiner(3)(torch.zeros(0, 3))


def test_init_total_spreads_a_fixed_share_over_the_auxiliaries():
    combiner = LinearCombiner(4, positive="exp", normalize="main", init_total=0.3)
    assert torch.allclose(combiner.task_weights(), torch.tensor([1.0, 0.1, 0.1, 0.1]))
    assert torch.allclose(LinearCombiner(3, init_total=0.3, skip_main=False).task_weights(), torch.tensor([1.0, 0.15, 0.15]))
    with pytest.raises(ValueError, match="init_total must be a finite number > 0"):
        LinearCombiner(3, init_total=0.0)


def test_nonlinear_main_normalisation_keeps_the_main_weight_at_one_and_starts_small():
    combiner = NonlinearCombiner(4, hidden=(6,), normalize="main", init_total=0.3).double()
    w = combiner.task_weights()
    assert float(w[0]) == pytest.approx(1.0) and float(w[1:].sum()) == pytest.approx(0.3)
    losses = torch.rand(5, 4, dtype=torch.float64)
    # the network never sees the main loss: changing it moves the combined loss one for one
    bumped = losses.clone()
    bumped[:, 0] += 1.0
    assert float(combiner(bumped).detach() - combiner(losses).detach()) == pytest.approx(1.0)
    assert torch.allclose(combiner.task_weights(losses)[0], torch.tensor(1.0, dtype=torch.float64))


def test_nonlinear_scaled_losses_follow_the_calibration():
    combiner = NonlinearCombiner(3, hidden=(), normalize="main", scale_losses=True, skip_main=True)
    before = combiner.task_weights()
    combiner.calibrate(torch.tensor([[2.0, 4.0, 0.5]]))
    # a linear network (hidden=()) on calibrated losses: raw weights times s_main / s_j
    assert torch.allclose(combiner.task_weights(), before * torch.tensor([1.0, 0.5, 4.0]))
    with pytest.raises(ValueError, match="normalize must be None or 'main'"):
        NonlinearCombiner(3, normalize="sum")


def test_linear_ramp_scales_the_auxiliaries_by_the_reported_progress():
    torch.manual_seed(0)
    losses = torch.rand(8, 3, dtype=torch.float64)
    plain = LinearCombiner(3, init=2.0).double()
    ramped = LinearCombiner(3, init=2.0, ramp=0.25).double()
    l0, aux = losses[:, 0], losses[:, 1] + losses[:, 2]
    # no progress reported (no learner): the weights apply in full
    assert torch.equal(ramped(losses), plain(losses))
    ramped.progress(0.0)  # the start of a run: the main task alone (weight 2, plus the skip term)
    assert torch.allclose(ramped(losses), (2 * l0).mean() + l0.mean(), rtol=0, atol=1e-15)
    ramped.progress(0.125)  # half-way through the ramp: the auxiliaries at half their weights
    assert torch.allclose(ramped(losses), (2 * l0 + 0.5 * 2 * aux).mean() + l0.mean(), rtol=0, atol=1e-15)
    (grad,) = torch.autograd.grad(ramped(losses), [ramped.weight])
    assert torch.allclose(grad, torch.stack([l0.mean(), 0.5 * losses[:, 1].mean(), 0.5 * losses[:, 2].mean()]))
    # the reported weights are the learned ones, the ramp aside
    assert torch.equal(ramped.task_weights(), plain.task_weights())
    ramped.progress(0.6)  # past the ramp: the same numbers as without one
    assert torch.equal(ramped(losses), plain(losses))
    unramped = LinearCombiner(3, init=2.0).double()
    unramped.progress(0.0)
    assert torch.equal(unramped(losses), plain(losses))


def test_linear_ramp_reaches_the_cached_training_step():
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    comb = LinearCombiner(3, ramp=0.5).double()
    for fraction, aux_share in [(0.0, 0.0), (0.25, 0.5), (0.25, 0.5), (1.0, 1.0)]:
        comb.progress(fraction)
        x.grad = None
        comb.backward(x * scale, [x])  # the weights are constants of this step, computed once per value
        assert torch.equal(x.grad, torch.tensor([2.0, 2.0 * aux_share, 3.0 * aux_share], dtype=torch.float64))


@pytest.mark.parametrize("ramp", [-0.1, 1.5, float("nan"), True, "0.25"])
def test_bad_ramp_is_an_error(ramp):
    with pytest.raises(ValueError, match="ramp must be a number in \\[0, 1\\]"):
        LinearCombiner(3, ramp=ramp)
