"""The functional (compilable) hypergradient against the graph one and the closed form."""
import pytest
import torch
from torch import nn

from auxilearn_hpo.combiners import LinearCombiner, NonlinearCombiner
from auxilearn_hpo.functional import LossFunctions, functional_hypergradient
from auxilearn_hpo.hypergrad import CG, Neumann, hypergradient
from auxilearn_hpo.learner import LearnerConfig

from test_hypergrad import F64, closed_form, ridge_problem, train_loss_of
from test_learner import batch_norm_learner, loss_fn, make_learner


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def ridge_functions():
    xs, ys, xa, ya, phi, lam = ridge_problem()
    w_star, ref = closed_form(xs, ys, xa, ya, phi, lam)

    def train(p, a, batch):
        return train_loss_of(p["w"], a["phi"], *batch, lam)

    def val(p, batch):
        return ((batch[0] @ p["w"] - batch[1]) ** 2).mean()

    return train, val, {"w": w_star}, {"phi": phi}, (xs, ys), (xa, ya), ref, lam


def test_neumann_reaches_the_closed_form_at_the_optimum():
    train, val, params, aux, batch, val_batch, ref, lam = ridge_functions()
    hess = torch.func.hessian(lambda w: train({"w": w}, aux, batch))(params["w"])
    alpha = 1.0 / float(torch.linalg.eigvalsh(hess).max())
    (g,), info = functional_hypergradient(train, val, params, aux, batch, val_batch,
                                          solver=Neumann(steps=300, alpha=alpha))
    assert rel_err(g, ref) < 1e-8
    assert info.iterations == 300 and info.status == "max_steps" and info.alpha == alpha


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def network(seed=0):
    torch.manual_seed(seed)
    model, comb = Net().double(), LinearCombiner(3, positive="exp", normalize="main", init=0.7).double()
    g = torch.Generator().manual_seed(seed)
    batch = (torch.randn(12, 6, generator=g, dtype=F64), torch.randn(12, 3, generator=g, dtype=F64))
    val_batches = [(torch.randn(5, 6, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64))
                   for _ in range(2)]
    fns = LossFunctions(model, comb, lambda m, b: (m(b[0]) - b[1]) ** 2, list(model.parameters()),
                        list(comb.parameters()), 0)
    return model, comb, batch, val_batches, fns


def graph_losses(model, comb, batch, val_batches):
    val = torch.cat([((model(x) - y) ** 2)[:, 0] for x, y in val_batches]).mean()
    return val, comb((model(batch[0]) - batch[1]) ** 2)


@pytest.mark.parametrize("solver", [
    Neumann(steps=3, alpha="auto", power_every=2),
    Neumann(steps=5, alpha=0.05, scaled=False),
    Neumann(steps=0, alpha=0.3),
    Neumann(steps=4, alpha=0.02, damping=0.5),
    Neumann(steps=6, alpha=40.0),  # too large a step: the scaled series stops at its first growing term
], ids=["auto", "unscaled", "lookahead", "damped", "diverging"])
def test_equals_the_graph_hypergradient(solver):
    model, comb, batch, val_batches, fns = network()
    ref_state, state = {}, {}
    for _ in range(3):  # warm starts of alpha="auto" carry over the same way
        val, train = graph_losses(model, comb, batch, val_batches)
        ref = hypergradient(val, train, model.parameters(), comb.parameters(), solver=solver, state=ref_state)
        got = functional_hypergradient(fns.train_loss, fns.val_loss, fns.params(), fns.aux_params(), batch,
                                       val_batches, solver=solver, state=state)
        assert rel_err(got.grads[0], ref.grads[0]) < 1e-12
        assert (got.info.iterations, got.info.status, got.info.alpha) == (ref.info.iterations, ref.info.status,
                                                                          ref.info.alpha)
        assert got.info.lambda_max == pytest.approx(ref.info.lambda_max, nan_ok=True)
        with torch.no_grad():
            comb.weight.add_(0.1)
    if solver.alpha == 40.0:
        assert got.info.status == "diverging" and got.info.iterations < solver.steps


def test_a_compiled_program_gives_the_same_numbers():
    model, comb, batch, val_batches, fns = network(1)
    solver, state = Neumann(steps=3, alpha=0.05), {}
    eager = functional_hypergradient(fns.train_loss, fns.val_loss, fns.params(), fns.aux_params(), batch,
                                     val_batches, solver=solver)
    for _ in range(2):  # the second call reuses the compiled program kept in state
        got = functional_hypergradient(fns.train_loss, fns.val_loss, fns.params(), fns.aux_params(), batch,
                                       val_batches, solver=solver, state=state, compile="aot_eager")
        assert rel_err(got.grads[0], eager.grads[0]) < 1e-12
    assert sum(1 for k in state if k[0] == "kernel") == 1


def test_inductor_compiles_the_hyperstep():
    model, comb, batch, val_batches, fns = network(2)
    solver = Neumann(steps=2, alpha=0.05)
    val, train = graph_losses(model, comb, batch, val_batches)
    ref = hypergradient(val, train, model.parameters(), comb.parameters(), solver=solver)
    got = functional_hypergradient(fns.train_loss, fns.val_loss, fns.params(), fns.aux_params(), batch,
                                   val_batches, solver=solver, compile=True)
    assert rel_err(got.grads[0], ref.grads[0]) < 1e-10


def test_a_nonlinear_combiner_and_a_subset_of_parameters():
    torch.manual_seed(3)
    model, comb = Net().double(), NonlinearCombiner(3, hidden=(4,)).double()
    _, _, batch, val_batches, _ = network(3)
    top = list(model.body[2].parameters())  # the last layer only; the rest held fixed
    fns = LossFunctions(model, comb, lambda m, b: (m(b[0]) - b[1]) ** 2, top, list(comb.parameters()), 0)
    val, train = graph_losses(model, comb, batch, val_batches)
    solver = Neumann(steps=3, alpha=0.05)
    ref = hypergradient(val, train, top, comb.parameters(), solver=solver)
    got = functional_hypergradient(fns.train_loss, fns.val_loss, fns.params(), fns.aux_params(), batch,
                                   val_batches, solver=solver)
    assert len(got.grads) == len(ref.grads) > 1
    for a, b in zip(got.grads, ref.grads):
        assert rel_err(a, b) < 1e-12


def test_the_learner_learns_the_same_weights_compiled():
    # the second learner reuses the program compiled for the first: its own data and loss scales count;
    # the reference is the unfused eager hyperstep (a compiled one follows its training step)
    for seed in (0, 1):
        runs = {c: make_learner(seed=seed, config=LearnerConfig(update_every=2, aux_lr=0.05, compile=c, fused=False))
                for c in (False, "aot_eager")}
        reports = {c: list(learner.fit(4))[-1] for c, learner in runs.items()}
        for name, value in reports[False].weights.items():
            assert reports["aot_eager"].weights[name] == pytest.approx(value, rel=1e-5), (seed, name)
        assert reports["aot_eager"].hypersteps == reports[False].hypersteps == 16
        eager, compiled = runs[False].meta.last_info, runs["aot_eager"].meta.last_info
        assert (compiled.iterations, compiled.status) == (eager.iterations, eager.status)


def test_a_compiled_hyperstep_leaves_batch_norm_statistics_alone():
    learner = batch_norm_learner(LearnerConfig(update_every=1, compile="aot_eager"), dropout=0.2)
    model, train = learner.model, learner.train_loader
    before = [b.clone() for b in model.buffers()]
    w0 = learner.weighting.weight.detach().clone()
    model.train()
    learner._hyperstep(next(iter(train)), learner.aux_batches())
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert not torch.equal(w0, learner.weighting.weight)  # the step itself was taken


def test_bad_arguments_are_named():
    train, val, params, aux, batch, val_batch, _, _ = ridge_functions()
    call = lambda **kw: functional_hypergradient(train, val, params, aux, batch, val_batch, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="solver must be a Neumann solver .* got 'cg'"):
        call(solver=CG())
    with pytest.raises(ValueError, match="residual=True is not supported"):
        call(solver=Neumann(residual=True))
    with pytest.raises(ValueError, match=r"compile must be a bool or a torch.compile backend name \(e.g. 'inductor', 'aot_eager'\), got 1"):
        call(compile=1)
    with pytest.raises(ValueError, match="params and aux_params must each hold"):
        functional_hypergradient(train, val, {}, aux, batch, val_batch)
    with pytest.raises(ValueError, match="a batch must hold at least one tensor"):
        LossFunctions.batch_size({"ids": [1, 2]})
    model = nn.Linear(2, 3)
    with pytest.raises(ValueError, match="aux_params must be parameters of the weighting"):
        LossFunctions(model, LinearCombiner(3), loss_fn, list(model.parameters()), [torch.zeros(3)], 0)


def test_learner_settings_that_compile_cannot_take_are_rejected():
    for bad in ("", "True", "nonsense"):
        with pytest.raises(ValueError, match=f"compile must be a bool or a torch.compile backend name .*, got '{bad}'"):
            LearnerConfig(compile=bad)
    with pytest.raises(ValueError, match="compile needs solver='neumann'.* got solver='cg', residual=True"):
        LearnerConfig(compile=True, solver="cg", residual=True)
    with pytest.raises(ValueError, match="compile=True needs a weighting learned by IFT hypergradients"):
        make_learner("equal", config=LearnerConfig(compile=True))
    with pytest.raises(ValueError, match="compile=True needs a weighting learned by IFT hypergradients"):
        make_learner("alignment", config=LearnerConfig(compile=True))


def test_power_kernel_finds_the_largest_eigenvalue_and_stops_on_a_zero_product():
    from auxilearn_hpo.functional import power_kernel
    from auxilearn_hpo.hypergrad import largest_eigenvalue

    train, _, params, aux, batch, _, _, _ = ridge_functions()
    hess = torch.func.hessian(lambda w: train({"w": w}, aux, batch))(params["w"])
    start = {"w": torch.ones_like(params["w"])}
    lam, vec = power_kernel(train, params, aux, batch, start, iters=200, damping=0.0)
    assert float(lam) == pytest.approx(float(torch.linalg.eigvalsh(hess).max()), rel=1e-8)
    lam, vec = power_kernel(train, params, aux, batch, start, iters=7, damping=0.5)
    ref_lam_damped, _ = largest_eigenvalue(lambda v: [hess @ v[0] + 0.5 * v[0]], [start["w"]], iters=7)
    assert float(lam) == pytest.approx(ref_lam_damped, rel=1e-10)
    # a loss linear in W has a zero Hessian: the iteration stops at once, keeping the start
    linear = lambda p, a, b: (a["phi"].sum() * p["w"]).sum()  # noqa: E731
    lam, vec = power_kernel(linear, params, aux, batch, start, iters=5, damping=0.0)
    assert float(lam) == 0.0 and torch.allclose(vec["w"], start["w"] / start["w"].norm())
