"""The bilevel loop: reports, exact resume, the auxiliary set's role, bad input."""
import io
import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auxilearn_hpo.combiners import LinearCombiner
from auxilearn_hpo.learner import AuxiliaryLearner, EpochReport, LearnerConfig
from auxilearn_hpo.registry import make_weighting


def regression_task(seed=0, n=64, aux_nan=False):
    """Shared linear model; task 0 main, task 1 helpful (same optimum), task 2 harmful."""
    g = torch.Generator().manual_seed(seed)
    w_star, w_bad = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, -4.0])
    x = torch.randn(n, 2, generator=g)
    y = torch.stack([x @ w_star + 2.0 * torch.randn(n, generator=g), x @ w_star + 0.1 * torch.randn(n, generator=g),
                     x @ w_bad], 1)
    xa = torch.randn(16, 2, generator=g)
    ya = torch.stack([xa @ w_star, xa @ w_star, xa @ w_bad], 1)
    if aux_nan:  # scramble the auxiliary columns of the auxiliary set, which must never be used
        ya[:, 1:] = 1e3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(99))
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    aux = DataLoader(TensorDataset(xa, ya), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed + 1))
    return train, aux


def loss_fn(model, batch):
    x, y = batch
    return (model(x) - y) ** 2  # (B, 1) broadcast against (B, 3) -> (B, 3)


def make_learner(weighting="linear", seed=0, config=None, aux_nan=False, **kw):
    torch.manual_seed(seed)
    model = nn.Linear(2, 1, bias=False)
    train, aux = regression_task(seed, aux_nan=aux_nan)
    weighting = make_weighting(weighting, 3, task_names=["main", "helpful", "harmful"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cfg = config or LearnerConfig(update_every=2, aux_lr=0.05, solver="neumann", steps=3, alpha=0.1)
    return AuxiliaryLearner(model, loss_fn, weighting, train, aux, opt, cfg, **kw)


def strip(report):
    """The report without wall time, NaN replaced by None so that equal reports compare equal."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.flat().items() if k != "seconds"}


def test_reports_have_the_documented_keys_and_counts():
    learner = make_learner()
    reports = list(learner.fit(3, eval_fn=lambda m: float(m.weight.sum())))
    # One report per epoch, every documented key present, 8 batches per epoch, a hyperstep every 2.
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert isinstance(reports[-1], EpochReport)
    assert reports[-1].step == 24 and reports[-1].hypersteps == 12
    assert set(reports[-1].weights) == {"main", "helpful", "harmful"}
    assert math.isfinite(reports[-1].hypergrad_norm) and reports[-1].val_metric == pytest.approx(
        float(learner.model.weight.detach().sum()))


def test_learned_weights_favour_the_helpful_task():
    learner = make_learner(config=LearnerConfig(update_every=1, aux_lr=0.05, steps=5, alpha=0.1))
    report = list(learner.fit(15))[-1]
    w = report.weights
    # The harmful task pulls W away from the main optimum, so its weight is driven down.
    assert w["harmful"] < 0.5 * w["helpful"]


def test_resume_from_state_dict_is_bit_for_bit():
    straight = make_learner("nonlinear")
    full = [strip(r) for r in straight.fit(4)]

    first = make_learner("nonlinear")
    head = [strip(r) for r in first.fit(2)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    torch.manual_seed(1234)  # disturb the global RNG: the checkpoint must restore it
    second = make_learner("nonlinear", seed=0)
    second.load_state_dict(state)
    tail = [strip(r) for r in second.fit(4)]
    # Interrupted + resumed equals uninterrupted: same reports, same model, same combiner.
    assert head + tail == full
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.weighting.parameters(), second.weighting.parameters()):
        assert torch.equal(a, b)


def test_a_warm_started_solver_resumes_from_its_last_solution_bit_for_bit():
    cfg = LearnerConfig(update_every=2, aux_lr=0.05, solver="cg", steps=1, damping=0.1,
                        solver_options={"warm_start": True})
    straight = make_learner("nonlinear", config=cfg)  # no ramp: the first half of fit(4) is fit(2)
    full = [strip(r) for r in straight.fit(4)]
    first = make_learner("nonlinear", config=cfg)
    head = [strip(r) for r in first.fit(2)]
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = make_learner("nonlinear", config=cfg)
    second.load_state_dict(torch.load(buf, weights_only=True))
    tail = [strip(r) for r in second.fit(4)]
    assert head + tail == full  # the restored solution warm-starts the next solve as if never stopped
    assert torch.equal(straight.meta.state["x"][0], second.meta.state["x"][0])


def test_auxiliary_set_contributes_only_the_main_loss():
    clean = [strip(r) for r in make_learner().fit(2)]
    scrambled = [strip(r) for r in make_learner(aux_nan=True).fit(2)]
    # Garbage labels in the auxiliary columns of the auxiliary set change nothing at all.
    assert scrambled == clean and clean[-1]["hypersteps"] == 8


def test_baselines_train_their_own_parameters_with_the_model():
    learner = make_learner("uncertainty")
    before = learner.weighting.log_var.detach().clone()
    report = list(learner.fit(2))[-1]
    # Uncertainty weighting's log-variances join the model optimizer; no hypersteps for baselines.
    assert not torch.equal(learner.weighting.log_var.detach(), before)
    assert report.hypersteps == 0 and math.isnan(report.hypergrad_norm)


@pytest.mark.parametrize("weighting", ["single_task", "equal", "dwa", "gradnorm", "cosine", "pcgrad"])
def test_every_baseline_runs_in_the_same_loop(weighting):
    learner = make_learner(weighting)
    start = learner.model.weight.detach().clone()
    reports = list(learner.fit(3))
    # Same loop and report schema for every weighting (their update rules are tested in test_baselines).
    assert isinstance(reports[-1], EpochReport) and list(reports[-1].weights) == ["main", "helpful", "harmful"]
    assert not torch.equal(learner.model.weight.detach(), start)


def test_changed_settings_take_effect_after_restore():
    learner = make_learner()
    list(learner.fit(1))
    state = learner.state_dict()
    other = make_learner(config=LearnerConfig(update_every=2, aux_lr=0.5))
    other.load_state_dict(state)
    # The checkpoint restores Adam's moments but the new auxiliary learning rate wins (PBT explore).
    assert other.meta.param_groups[0]["lr"] == 0.5 and other.epoch == 1


def test_wrong_loss_matrix_shape_is_named():
    learner = make_learner()
    learner.loss_fn = lambda m, b: loss_fn(m, b)[:, :2]
    with pytest.raises(ValueError, match=r"shape \(batch, n_tasks\) with n_tasks=3"):
        list(learner.fit(1))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="main_task must be an int in"):
        make_weighting("linear", 3, main_task=3)
    model = nn.Linear(2, 1)
    train, _ = regression_task()
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0, 3)), batch_size=4)
    with pytest.raises(ValueError, match="aux_loader is empty"):
        AuxiliaryLearner(model, loss_fn, LinearCombiner(3), train, empty, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="update_every must be an int >= 1"):
        LearnerConfig(update_every=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        LearnerConfig(solver="newton")
    with pytest.raises(TypeError, match="weighting must be an auxilearn_hpo Weighting"):
        AuxiliaryLearner(model, loss_fn, nn.Linear(3, 1), train, None, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="unknown weighting 'magic'"):
        make_weighting("magic", 3)


def test_warmup_delays_hypersteps():
    learner = make_learner(config=LearnerConfig(update_every=2, warmup_steps=8))
    report = list(learner.fit(2))[-1]
    # 16 steps, none of the first 8 hypersteps: steps 10, 12, 14, 16.
    assert report.hypersteps == 4


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": math.inf}, "alpha"),
    ({"aux_lr": math.inf}, "aux_lr"),
    ({"aux_lr": -0.1}, "aux_lr"),
    ({"damping": -1.0}, "damping must be a finite number >= 0"),
    ({"tol": -1e-3}, "tol must be a finite number > 0"),
    ({"max_grad_norm": math.nan}, "max_grad_norm"),
    ({"aux_samples": -1}, "aux_samples must be an int >= 0"),
    ({"train_batches": 0}, "train_batches must be an int >= 1"),
    ({"train_batches": True}, "train_batches must be an int >= 1"),
    ({"train_batches": 2, "fused": True}, "fused=True .* needs train_batches=1, got train_batches=2"),
])
def test_non_finite_and_negative_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LearnerConfig(**kwargs)


def test_unknown_config_keys_are_named_not_dropped():
    with pytest.raises(ValueError, match=r"unknown LearnerConfig setting\(s\) \['aux_rate'\]"):
        LearnerConfig.from_dict({"aux_rate": 0.1})
    with pytest.raises(ValueError, match="aux_rate"):
        make_learner(config={"aux_rate": 0.1})
    assert LearnerConfig.from_dict({"aux_lr": 0.2, "epochs": 3}, ignore={"epochs"}).aux_lr == 0.2


def test_settings_of_lost_experiments_are_unknown():
    # adaptive hypersteps, aux_lr="auto", top-layer implicit differentiation and the learner's
    # difference hyperstep left the product (their numbers are in docs/experiments.md)
    for key, value in (("max_update_every", 16), ("aux_travel", 10.0), ("implicit_params", "top"),
                       ("mixed", "difference")):
        with pytest.raises(ValueError, match=f"unknown LearnerConfig setting.*{key}"):
            LearnerConfig.from_dict({key: value})
    with pytest.raises(ValueError, match="aux_lr must be a finite number > 0, got 'auto'"):
        LearnerConfig(aux_lr="auto")


def test_detached_losses_are_an_error_not_a_silent_no_op():
    learner = make_learner()
    learner.loss_fn = lambda m, b: loss_fn(m, b).detach()
    with pytest.raises(ValueError, match="without a graph to the model"):
        list(learner.fit(1))





def test_task_weight_decay_default_is_applied():
    from auxilearn_hpo.tasks import make_task

    task = make_task("toy", seed=0)
    task.defaults.weight_decay = 0.25
    learner = AuxiliaryLearner.from_task(task, "linear")
    assert learner.optimizer.param_groups[0]["weight_decay"] == 0.25
    assert AuxiliaryLearner.from_task(task, "linear", weight_decay=0.0).optimizer.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("fused", [False, True])
def test_whole_small_auxiliary_set_enters_each_hyperstep(fused):
    learner = make_learner(config=LearnerConfig(update_every=2, aux_samples=256, fused=fused))
    seen = []
    original = learner._losses

    def spy(batch):
        seen.append(len(batch[0]))
        return original(batch)

    learner._losses = spy
    list(learner.fit(1))
    # 8 training batches; each of the 4 hypersteps adds both auxiliary batches (8 + 8 = the whole
    # set) and, unless fused (which reuses its training batch's forward pass), the training batch again
    assert seen.count(8) == 8 + 4 * (2 if fused else 3)


def test_learned_weights_stay_finite_and_divergence_stops_training():
    learner = make_learner(config=LearnerConfig(update_every=1, aux_lr=1e6))
    with pytest.raises(FloatingPointError, match="training diverged at epoch 1"):
        list(learner.fit(3))
    assert all(math.isfinite(v) for v in learner.weighting.effective_weights().values())
    assert learner.epoch == 0 and learner.history == []  # no report of a diverged epoch


def test_pcgrad_coefficients_are_reported_apart_from_the_loss_weights():
    learner = make_learner("pcgrad")
    report = list(learner.fit(2))[-1]
    assert report.weights == {"main": 1.0, "helpful": 1.0, "harmful": 1.0}  # PCGrad sums the losses
    assert report.coefficients == learner.weighting.effective_coefficients()
    assert list(report.coefficients) == ["main", "helpful", "harmful"]
    assert list(make_learner("linear").fit(1))[-1].coefficients == {}


def test_every_solver_option_is_reachable_from_the_config():
    from auxilearn_hpo.hypergrad import CG, Exact, Neumann

    cfg = LearnerConfig(solver="neumann", steps=4, alpha=0.2, solver_options={"stop_on_growth": False})
    # Flat fields the solver takes plus solver_options build one value; the other fields are not its options.
    assert cfg.make_solver() == Neumann(steps=4, alpha=0.2, stop_on_growth=False, power_every=10)
    assert LearnerConfig(solver="cg", steps=7, tol=1e-3, damping=0.1).make_solver() == CG(steps=7, tol=1e-3, damping=0.1)
    assert LearnerConfig(solver="exact", solver_options={"max_params": 100}).make_solver() == Exact(max_params=100)
    # The learner's MetaOptimizer holds that value.
    learner = make_learner(config=LearnerConfig(solver="cg", steps=2, damping=0.5))
    assert learner.meta.solver == CG(steps=2, damping=0.5)
    with pytest.raises(ValueError, match=r"solver 'cg' takes no option\(s\) \['stop_on_growth'\]"):
        LearnerConfig(solver="cg", solver_options={"stop_on_growth": True})
    with pytest.raises(ValueError, match=r"solver_options \['steps'\] are LearnerConfig fields"):
        LearnerConfig(solver_options={"steps": 3})
    with pytest.raises(ValueError, match="unknown LearnerConfig setting"):
        LearnerConfig.from_dict({"stop_on_growth": True})


def test_a_hyperstep_reuses_the_training_step_at_the_same_weights():
    from auxilearn_hpo.hypergrad import hypergradient

    learner = make_learner(config=LearnerConfig(update_every=1, aux_lr=0.05, steps=3, alpha=0.1, aux_samples=16))
    model, w = learner.model, learner.weighting
    w0, phi0 = model.weight.detach().clone(), w.weight.detach().clone()
    batch = next(iter(learner.train_loader))
    aux_batches = learner.aux_batches()
    # Reference: the hypergradient and the training gradient at the same weights, computed apart.
    train = w(loss_fn(model, batch))
    g_train = torch.autograd.grad(train, [model.weight], retain_graph=True)[0]
    (hg,), _ = hypergradient(learner.aux_loss(aux_batches), train, [model.weight], learner.aux_params,
                             solver=learner.meta.solver, state={})
    learner.step = 0
    learner.optimizer.zero_grad()
    learner._fused_step(loss_fn(model, batch), learner.aux_batches())
    # One forward pass served both: the model's gradient and the auxiliary step match the reference.
    torch.testing.assert_close(model.weight.grad, g_train)
    torch.testing.assert_close(w.weight.grad, hg)
    assert torch.equal(model.weight.detach(), w0) and not torch.equal(w.weight.detach(), phi0)


def test_fused_auto_fuses_when_the_settings_allow_and_runs_unfused_otherwise():
    def weights(**kw):
        cfg = LearnerConfig(update_every=2, aux_lr=0.05, steps=3, alpha=0.1, **kw)
        return list(make_learner(config=cfg).fit(3))[-1].weights

    # "auto" (the default) is fused=True where that is allowed, to the last bit ...
    assert LearnerConfig().fused == "auto" and LearnerConfig().fuses
    assert weights() == weights(fused=True) != weights(fused=False)
    # ... and unfused where a setting rules fusing out, with no error
    for kw in ({"train_batches": 2},):
        assert not LearnerConfig(**kw).fuses
        assert weights(**kw) == weights(fused=False, **kw)
    assert not LearnerConfig(compile="aot_eager").fuses and not LearnerConfig(fused=False).fuses
    with pytest.raises(ValueError, match="fused must be True, False or 'auto', got 'yes'"):
        LearnerConfig(fused="yes")
    with pytest.raises(ValueError, match="fused=False or 'auto', got fused=True"):
        LearnerConfig(fused=True, compile="aot_eager")


class _GraphEveryStep(LinearCombiner):
    """The same combiner, its weights recomputed with a graph at every training step."""

    def backward(self, losses, params, shared_params=None):
        return super(LinearCombiner, self).backward(losses, params, shared_params)


def test_linear_weights_reused_between_hypersteps_give_the_same_run_bit_for_bit():
    """The training step reuses the combiner's weights until a hyperstep changes them; a run
    that recomputes them with a graph at every step ends at the same model and weights exactly."""
    finals = []
    for cls in (LinearCombiner, _GraphEveryStep):
        torch.manual_seed(0)
        train, aux = regression_task()
        model = nn.Linear(2, 1, bias=False)
        combiner = cls(3, positive="exp", normalize="main", scale_losses=True, init_total=0.3)
        loss_fn = lambda m, batch: (m(batch[0]) - batch[1]) ** 2  # noqa: E731
        learner = AuxiliaryLearner(model, loss_fn, combiner, train, aux, torch.optim.Adam(model.parameters(), lr=0.05),
                                   LearnerConfig(update_every=3))
        reports = list(learner.fit(4))
        assert reports[-1].hypersteps >= 8
        finals.append((model.weight.detach().clone(), combiner.weight.detach().clone(), reports[-1].train_loss))
    assert torch.equal(finals[0][0], finals[1][0])
    assert torch.equal(finals[0][1], finals[1][1])
    assert finals[0][2] == finals[1][2]


def test_reused_linear_weights_follow_an_in_place_change():
    combiner = LinearCombiner(3, positive="exp", normalize="main")
    model = nn.Linear(2, 1)
    x = torch.randn(5, 2)
    for log_w in (0.0, 1.0):
        with torch.no_grad():
            combiner.weight.fill_(log_w)
        model.zero_grad()
        losses = model(x).expand(5, 3) ** 2
        combiner.backward(losses, list(model.parameters()))
        got = model.weight.grad.clone()
        model.zero_grad()
        reference = model(x).expand(5, 3) ** 2
        (reference @ torch.tensor([1.0, math.exp(log_w), math.exp(log_w)])).mean().backward()
        assert torch.allclose(got, model.weight.grad)


def batch_norm_learner(config, dropout=0.5):
    """A learner on ``regression_task(0)`` whose model has batch norm and dropout."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))
    train, aux = regression_task(0)
    return AuxiliaryLearner(model, loss_fn, make_weighting("linear", 3), train, aux,
                            torch.optim.SGD(model.parameters(), lr=0.05), config)


def test_the_steps_gradients_are_freed_before_a_hyperstep():
    # (so that they do not add a copy of the parameters to the hyperstep's peak memory)
    learner = make_learner(config=LearnerConfig(update_every=2, aux_lr=0.05, steps=3, alpha=0.1, fused=False))
    real, seen = learner._hyperstep, []

    def spy(batch, aux_batches):
        seen.append([p.grad for p in learner.model_params])
        real(batch, aux_batches)

    learner._hyperstep = spy
    reports = list(learner.fit(1))
    assert len(seen) == reports[-1].hypersteps == 4
    assert all(g is None for grads in seen for g in grads)


class _Recording:
    """A DataLoader stand-in that records the batches it yields."""

    def __init__(self, loader):
        self.loader, self.seen = loader, []

    def __iter__(self):
        for batch in self.loader:
            self.seen.append(batch)
            yield batch

    def __len__(self):
        return len(self.loader)


def test_train_batches_hypersteps_see_the_current_and_the_previous_training_batches():
    learner = make_learner(config=LearnerConfig(update_every=3, aux_lr=0.05, steps=3, alpha=0.1, train_batches=2))
    learner.train_loader = _Recording(learner.train_loader)
    real, got = learner._hyperstep, []
    learner._hyperstep = lambda batch, aux: (got.append((learner.step, batch)), real(batch, aux))[1]
    report = list(learner.fit(2))[-1]
    seen = learner.train_loader.seen
    # 16 steps of batch 8, a hyperstep every 3 (steps 3, 6, ..., 15; step 9 is the first of the
    # second epoch and takes the first epoch's last batch too)
    assert [step for step, _ in got] == [3, 6, 9, 12, 15] and report.hypersteps == 5
    for step, (x, y) in got:
        assert torch.equal(x, torch.cat([seen[step - 2][0], seen[step - 1][0]]))
        assert torch.equal(y, torch.cat([seen[step - 2][1], seen[step - 1][1]]))
    # train_batches=1 (the default) hands the current batch itself over (to an unfused hyperstep;
    # a fused one reuses the training step's forward pass of that batch instead)
    single = make_learner(config=LearnerConfig(update_every=3, aux_lr=0.05, steps=3, alpha=0.1, fused=False))
    single.train_loader = _Recording(single.train_loader)
    real1, got1 = single._hyperstep, []
    single._hyperstep = lambda batch, aux: (got1.append(batch), real1(batch, aux))[1]
    list(single.fit(1))
    assert got1[0] is single.train_loader.seen[2]


def test_train_batches_resume_bit_for_bit_across_an_epoch_boundary():
    cfg = LearnerConfig(update_every=3, aux_lr=0.05, steps=3, alpha=0.1, train_batches=3)
    straight = make_learner(config=cfg)
    full = [strip(r) for r in straight.fit(3)]
    first = make_learner(config=cfg)
    head = [strip(r) for r in itertools.islice(first.fit(3), 1)]  # a 3-epoch run, stopped after 1
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = make_learner(config=cfg)
    second.load_state_dict(torch.load(buf, weights_only=True))
    assert len(second._recent) == 2  # the first epoch's last two batches, for the hyperstep at step 9
    tail = [strip(r) for r in second.fit(3)]
    assert head + tail == full
    for a, b in zip(straight.weighting.parameters(), second.weighting.parameters()):
        assert torch.equal(a, b)


def test_the_learner_reports_the_runs_progress_before_each_step_and_after_a_resume():
    def recording(learner):
        seen = []
        real = learner.weighting.progress
        learner.weighting.progress = lambda f: (seen.append(f), real(f))[1]
        return seen

    straight = make_learner()
    seen = recording(straight)
    list(straight.fit(3))
    n = 3 * len(straight.train_loader)
    assert seen == [k / n for k in range(n)]
    # the default linear weights ramp in over the first quarter of the run
    assert straight.weighting.ramp == 0.25 and float(straight.weighting.aux_ramp) == 1.0
    # a 3-epoch run stopped after one epoch and resumed reports the same fractions
    first = make_learner()
    head = recording(first)
    list(itertools.islice(first.fit(3), 1))
    second = make_learner()
    second.load_state_dict(first.state_dict())
    tail = recording(second)
    list(second.fit(3))
    assert head + tail == seen
    for a, b in zip(straight.weighting.parameters(), second.weighting.parameters()):
        assert torch.equal(a, b)
