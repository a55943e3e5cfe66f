"""Hypergradients against a closed-form reference (ridge regression with per-task weights)."""

import pytest
import torch
from torch import nn

from auxilearn_hpo.learner_config import LearnerConfig

from auxilearn_hpo.hypergrad import (CG, Exact, Neumann, conjugate_gradient, difference_hypergradient, difference_step, exact,
                                     hypergradient, make_solver, neumann)

torch.set_default_dtype(torch.float32)
F64 = torch.float64


def ridge_problem(seed=0, d=5, tasks=3, n=20, lam=0.1):
    """Tasks j with data (X_j, y_j); L_T = sum_j phi_j mean((X_j W - y_j)^2) + lam ||W||^2."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, d, generator=g, dtype=F64) for _ in range(tasks)]
    ys = [torch.randn(n, generator=g, dtype=F64) for _ in range(tasks)]
    xa = torch.randn(n, d, generator=g, dtype=F64)
    ya = torch.randn(n, generator=g, dtype=F64)
    phi = torch.rand(tasks, generator=g, dtype=F64) + 0.5
    return xs, ys, xa, ya, phi, lam


def train_loss_of(w, phi, xs, ys, lam):
    return sum(phi[j] * ((xs[j] @ w - ys[j]) ** 2).mean() for j in range(len(xs))) + lam * (w ** 2).sum()


def closed_form(xs, ys, xa, ya, phi, lam):
    """W*(phi) by a linear solve and dL_A(W*(phi))/dphi by autograd through that solve."""
    phi = phi.clone().requires_grad_(True)
    d = xs[0].shape[1]
    a = sum(phi[j] * xs[j].T @ xs[j] / len(ys[j]) for j in range(len(xs))) + lam * torch.eye(d, dtype=F64)
    b = sum(phi[j] * xs[j].T @ ys[j] / len(ys[j]) for j in range(len(xs)))
    w_star = torch.linalg.solve(a, b)
    val = ((xa @ w_star - ya) ** 2).mean()
    (grad,) = torch.autograd.grad(val, phi)
    return w_star.detach(), grad


def losses_at_optimum(seed=0, **kw):
    xs, ys, xa, ya, phi0, lam = ridge_problem(seed, **kw)
    w_star, ref = closed_form(xs, ys, xa, ya, phi0, lam)
    w = w_star.clone().requires_grad_(True)
    phi = phi0.clone().requires_grad_(True)
    return w, phi, ((xa @ w - ya) ** 2).mean(), train_loss_of(w, phi, xs, ys, lam), ref


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("solver", [Exact(), CG(steps=50, tol=1e-12)], ids=["exact", "cg"])
def test_exact_and_cg_match_closed_form(solver):
    w, phi, val, train, ref = losses_at_optimum()
    (g,), _ = hypergradient(val, train, [w], [phi], solver=solver)
    # At W*(phi) the IFT hypergradient is the true derivative of the validation loss.
    assert rel_err(g, ref) < 1e-5


def test_neumann_converges_to_closed_form_as_steps_grow():
    w, phi, val, train, ref = losses_at_optimum()
    hess = torch.autograd.functional.hessian(lambda x: train_loss_of(x, phi.detach(), *ridge_problem()[:2], 0.1), w.detach())
    alpha = 1.0 / float(torch.linalg.eigvalsh(hess).max())  # inside (0, 2 / lambda_max)
    errs = []
    for steps in (1, 5, 20, 200):
        w, phi, val, train, ref = losses_at_optimum()
        (g,), _ = hypergradient(val, train, [w], [phi], solver=Neumann(steps=steps, alpha=alpha))
        errs.append(rel_err(g, ref))
    # The truncation error of a convergent series shrinks monotonically, to ~0 after 200 terms.
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-5


def test_unscaled_neumann_is_one_over_alpha_times_scaled():
    w, phi, val, train, _ = losses_at_optimum()
    (scaled,), _ = hypergradient(val, train, [w], [phi], solver=Neumann(steps=4, alpha=0.05), retain_graph=True)
    (unscaled,), _ = hypergradient(val, train, [w], [phi], solver=Neumann(steps=4, alpha=0.05, scaled=False))
    # The original code's p is the scaled approximation divided by alpha.
    torch.testing.assert_close(unscaled * 0.05, scaled)


def test_diagnostics_report_residual_and_norm():
    w, phi, val, train, ref = losses_at_optimum()
    g, info = hypergradient(val, train, [w], [phi], solver=CG(steps=50, tol=1e-12))
    # CG on a 5-dim SPD system converges within 5 iterations (exact arithmetic) to a tiny residual.
    assert info.status == "converged" and info.iterations <= 6 and info.residual < 1e-10
    assert info.norm == pytest.approx(float(ref.norm()), rel=1e-6) and info.finite
    w, phi, val, train, ref = losses_at_optimum()
    _, info = hypergradient(val, train, [w], [phi], solver=Neumann(steps=1, alpha=0.01, residual=True))
    # One Neumann term with a small alpha is a poor solve: the residual says so.
    assert 0.1 < info.residual <= 1.0


def test_residual_of_neumann_matches_direct_computation():
    w, phi, val, train, _ = losses_at_optimum()
    hess = torch.autograd.functional.hessian(lambda x: train_loss_of(x, phi.detach(), *ridge_problem()[:2], 0.1), w.detach())
    g_a = torch.autograd.grad(val, w, retain_graph=True)[0]
    v, _ = neumann(lambda u: [hess @ u[0]], [g_a], steps=3, alpha=0.1)
    expected = float((hess @ v[0] - g_a).norm() / g_a.norm())
    _, info = hypergradient(val, train, [w], [phi], solver=Neumann(steps=3, alpha=0.1, residual=True))
    # The residual comes from the same backward pass as the mixed term, no extra HVP.
    assert info.residual == pytest.approx(expected, rel=1e-9)


def test_damping_solves_the_damped_system():
    w, phi, val, train, _ = losses_at_optimum()
    hess = torch.autograd.functional.hessian(lambda x: train_loss_of(x, phi.detach(), *ridge_problem()[:2], 0.1), w.detach())
    g_a = torch.autograd.grad(val, w, retain_graph=True)[0]
    gt = torch.autograd.grad(train, w, create_graph=True)[0]
    v = torch.linalg.solve(hess + 2.0 * torch.eye(5, dtype=F64), g_a)
    (expected,) = torch.autograd.grad(gt, phi, grad_outputs=v, retain_graph=True)
    (g,), _ = hypergradient(val, train, [w], [phi], solver=Exact(damping=2.0))
    # (H + 2 I)^{-1} replaces H^{-1}.
    torch.testing.assert_close(g, -expected)


def test_cg_stops_at_negative_curvature_with_its_best_iterate():
    a = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    x, info = conjugate_gradient(lambda v: [a @ v[0]], [torch.tensor([1.0, 1.0], dtype=F64)], steps=10)
    # d = b has curvature 1 - 1 = 0: no step is safe, so the zero iterate comes back, flagged.
    assert info.status == "negative_curvature" and info.iterations == 0
    assert torch.equal(x[0], torch.zeros(2, dtype=F64))
    a = torch.diag(torch.tensor([2.0, 1.0, -5.0], dtype=F64))
    x, info = conjugate_gradient(lambda v: [a @ v[0]], [torch.tensor([1.0, 1.0, 0.1], dtype=F64)], steps=10)
    # The first direction has positive curvature, so one finite step is kept before stopping.
    assert info.status == "negative_curvature" and info.iterations >= 1 and torch.isfinite(x[0]).all()


def _spd_system(n=6, shift=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=F64)
    return q @ q.T / n + shift * torch.eye(n, dtype=F64), torch.randn(n, generator=g, dtype=F64)


def test_warm_started_cg_restarts_from_the_previous_solution():
    a, b = _spd_system()
    hvp = lambda v: [a @ v[0]]
    solver, state = CG(steps=2, tol=0.0, warm_start=True), {}
    x, info = solver.solve(hvp, [b], state)
    assert info.iterations == 2 and torch.equal(state["x"][0], x[0])  # cold first call: no residual product
    residuals = [float((a @ x[0] - b).norm() / b.norm())]
    for _ in range(25):
        x0 = state["x"][0].clone()
        x, info = solver.solve(hvp, [b], state)
        # x0 + CG-2 on the residual system A d = b - A x0, one more product for that residual.
        (d,), _ = conjugate_gradient(hvp, [b - a @ x0], steps=2, tol=0.0)
        torch.testing.assert_close(x[0], x0 + d)
        assert info.iterations == 3
        residuals.append(float((a @ x[0] - b).norm() / b.norm()))
        assert info.residual == pytest.approx(residuals[-1], rel=1e-6, abs=1e-14)
    # Restarted CG decreases the residual monotonically until it reaches the reference solve.
    assert all(r1 <= r0 + 1e-15 for r0, r1 in zip(residuals, residuals[1:]))
    torch.testing.assert_close(x[0], torch.linalg.solve(a, b))
    # Solved: the next call spends only the residual's product and keeps x.
    x2, info = CG(steps=2, tol=1e-8, warm_start=True).solve(hvp, [b], state)
    assert info.status == "converged" and info.iterations == 1 and torch.equal(x2[0], x[0])


def test_warm_started_cg_starts_cold_on_new_shapes_and_needs_the_option():
    a, b = _spd_system()
    state = {"x": [torch.ones(3, dtype=F64)]}  # another problem's solution
    x, info = CG(steps=6, tol=0.0, warm_start=True).solve(lambda v: [a @ v[0]], [b], state)
    assert info.iterations == 6 and state["x"][0].shape == (6,)
    torch.testing.assert_close(x[0], torch.linalg.solve(a, b))
    state = {"x": [torch.ones(6, dtype=F64)]}
    _, info = CG(steps=2, tol=0.0).solve(lambda v: [a @ v[0]], [b], state)  # warm_start=False ignores it
    assert info.iterations == 2 and torch.equal(state["x"][0], torch.ones(6, dtype=F64))
    config = LearnerConfig(solver="cg", steps=4, damping=1e-2, solver_options={"warm_start": True})
    assert config.make_solver() == CG(steps=4, damping=1e-2, warm_start=True)


def test_warm_started_cg_hypergradient_approaches_the_exact_one():
    w, phi, val, train, _ = losses_at_optimum()
    (ref,), _ = hypergradient(val, train, [w], [phi], solver=Exact(damping=1e-2), retain_graph=True)
    state, solver = {}, CG(steps=1, tol=0.0, damping=1e-2, warm_start=True)
    errors = []
    for _ in range(40):  # the same system each call: restarted CG-1 converges to the damped solve
        (g,), info = hypergradient(val, train, [w], [phi], solver=solver, state=state, retain_graph=True)
        errors.append(rel_err(g, ref))
    assert errors[-1] < 1e-6 < errors[0] and info.iterations == 2


def test_exact_refuses_large_problems():
    b = [torch.zeros(10, 10)]
    with pytest.raises(ValueError, match="max_params=50"):
        exact(lambda v: v, b, max_params=50)


def test_generators_and_several_tensors_are_accepted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    weights = nn.Parameter(torch.tensor([1.0, 0.5], dtype=F64))
    x, y1, y2 = torch.randn(8, 3, dtype=F64), torch.randn(8, 1, dtype=F64), torch.randn(8, 1, dtype=F64)

    def losses():
        out = model(x)
        return ((out - y1) ** 2).mean(), weights[0] * ((out - y1) ** 2).mean() + weights[1] * ((out - y2) ** 2).mean()

    val, train = losses()
    from_lists, _ = hypergradient(val, train, list(model.parameters()), [weights], solver="exact")
    val, train = losses()
    from_generators, _ = hypergradient(val, train, model.parameters(), (w for w in [weights]), solver="exact")
    # A generator is materialised once, so both calls see the same tensors.
    torch.testing.assert_close(from_generators, from_lists)


def test_unused_parameters_get_zero_contributions():
    w, phi, val, train, ref = losses_at_optimum()
    unused_inner = torch.zeros(3, dtype=F64, requires_grad=True)
    unused_aux = torch.ones(2, dtype=F64, requires_grad=True)
    g, _ = hypergradient(val, train, [w, unused_inner], [phi, unused_aux], solver="exact")
    # An auxiliary parameter outside the training loss has a zero hypergradient; the rest is unchanged.
    assert torch.equal(g[1], torch.zeros(2, dtype=F64))
    assert rel_err(g[0], ref) < 1e-5


def test_no_path_from_aux_params_raises():
    w, phi, val, train, _ = losses_at_optimum()
    stray = torch.ones(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="no tensor in aux_params influences train_loss"):
        hypergradient(val, train, [w], [stray])


def test_no_path_from_params_raises():
    w, phi, val, train, _ = losses_at_optimum()
    stray = torch.ones(3, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="no tensor in params influences train_loss"):
        hypergradient(val, train, [stray], [phi])


def test_aux_param_outside_the_gradient_but_in_the_loss_gets_zero():
    w, phi, val, train, ref = losses_at_optimum()
    offset = torch.tensor(1.0, dtype=F64, requires_grad=True)
    g, _ = hypergradient(val, train + offset, [w], [phi, offset], solver="exact")
    # offset shifts L_T but not dL_T/dW, so the IFT hypergradient for it is exactly zero (no error).
    assert float(g[1]) == 0.0 and rel_err(g[0], ref) < 1e-5


def test_eval_mode_model_with_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 2)).double()
    model.train()
    model(torch.randn(16, 3, dtype=F64))  # populate running statistics (buffers)
    model.eval()
    weights = torch.ones(2, dtype=F64, requires_grad=True)
    x, y = torch.randn(8, 3, dtype=F64), torch.randn(8, 2, dtype=F64)
    per_task = lambda: ((model(x) - y) ** 2).mean(0)
    params = [p for p in model.parameters()]
    g, _ = hypergradient(per_task()[0], (weights * per_task()).sum(), params, [weights], solver=Exact(damping=1e-3))
    # Reference: dense Hessian of the same eval-mode loss through torch.func.
    from torch.func import functional_call, hessian
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def unflat(v):
        out, i = {}, 0
        for n, p in zip(names, params):
            out[n] = v[i:i + p.numel()].view_as(p)
            i += p.numel()
        return out

    def lt(v, wts):
        return (wts * ((functional_call(model, unflat(v), (x,)) - y) ** 2).mean(0)).sum()

    h = hessian(lt)(flat, weights.detach()) + 1e-3 * torch.eye(flat.numel(), dtype=F64)
    ga = torch.autograd.functional.jacobian(lambda v: ((functional_call(model, unflat(v), (x,)) - y) ** 2).mean(0)[0], flat)
    v = torch.linalg.solve(0.5 * (h + h.T), ga)
    mixed = torch.autograd.functional.jacobian(lambda wts: torch.autograd.functional.jacobian(lambda u: lt(u, wts), flat, create_graph=True) @ v, weights.detach())
    # The buffers and eval mode change nothing about the math: same value as the functional reference.
    torch.testing.assert_close(g[0], -mixed, rtol=1e-6, atol=1e-9)


def test_bad_arguments_are_named():
    w, phi, val, train, _ = losses_at_optimum()
    with pytest.raises(ValueError, match="solver must be one of"):
        hypergradient(val, train, [w], [phi], solver="newton")
    with pytest.raises(TypeError, match="steps"):
        hypergradient(val, train, [w], [phi], steps=3)  # options live on the solver value
    with pytest.raises(ValueError, match="aux_params is empty"):
        hypergradient(val, train, [w], iter([]))
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        hypergradient(val, train, [1.0], [phi])
    with pytest.raises(ValueError, match="val_loss must be a scalar"):
        hypergradient(torch.ones(3, requires_grad=True), train, [w], [phi])


def test_neumann_stops_when_its_terms_grow():
    a = torch.diag(torch.tensor([1.0, 30.0], dtype=F64))
    b = [torch.tensor([1.0, 1.0], dtype=F64)]
    # alpha * lambda_max = 3 > 2: the second eigen-direction's terms grow by |1 - 3| = 2 each step.
    x, info = neumann(lambda v: [a @ v[0]], b, steps=10, alpha=0.1)
    assert info.status == "diverging" and info.iterations == 1
    # Only the first term survives: alpha * b, the identity approximation.
    torch.testing.assert_close(x[0], 0.1 * b[0])
    # The seed-compatible unscaled series runs every term, as the original does (and blows up).
    x, info = neumann(lambda v: [a @ v[0]], b, steps=10, alpha=0.1, scaled=False)
    assert info.status == "max_steps" and float(x[0].abs().max()) > 100


def _dense_hessian(train, w):
    (g,) = torch.autograd.grad(train, w, create_graph=True)
    return torch.stack([torch.autograd.grad(g[i], w, retain_graph=True)[0] for i in range(len(g))])


def test_power_iteration_finds_the_largest_hessian_eigenvalue():
    from auxilearn_hpo.hypergrad import largest_eigenvalue

    w, phi, val, train, _ = losses_at_optimum(d=6)
    h = _dense_hessian(train, w).detach()
    ref = float(torch.linalg.eigvalsh(h).abs().max())
    lam, v = largest_eigenvalue(lambda u: [h @ u[0]], [torch.ones(6, dtype=F64)], iters=200)
    assert lam == pytest.approx(ref, rel=1e-6)
    assert float(v[0].norm()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="iters must be an int >= 1"):
        largest_eigenvalue(lambda u: u, [torch.ones(2)], iters=0)
    with pytest.raises(ValueError, match="nonzero start vector"):
        largest_eigenvalue(lambda u: u, [torch.zeros(2)])


def test_auto_alpha_is_one_over_the_largest_eigenvalue_and_warm_starts():
    w, phi, val, train, ref = losses_at_optimum(d=6)
    lam_ref = float(torch.linalg.eigvalsh(_dense_hessian(train, w).detach()).abs().max())
    state: dict = {}
    (g,), info = hypergradient(val, train, [w], [phi], solver=Neumann(steps=2000, alpha="auto", power_iters=100),
                               state=state, retain_graph=True)
    assert info.lambda_max == pytest.approx(lam_ref, rel=1e-4)
    assert info.alpha == pytest.approx(1 / info.lambda_max)
    assert rel_err(g, ref) < 1e-4  # alpha = 1 / lambda_max converges on this convex problem
    assert len(state["eigvec"]) == 1 and float(state["eigvec"][0].norm()) == pytest.approx(1.0)
    # the next call starts from the stored eigenvector: one product keeps the estimate
    _, info2 = hypergradient(val, train, [w], [phi], solver=Neumann(steps=3, alpha="auto", power_iters=10), state=state)
    assert info2.lambda_max == pytest.approx(lam_ref, rel=1e-4)


@pytest.mark.parametrize("make, match", [
    (lambda: Neumann(alpha=float("inf")), "alpha must be a positive finite number or 'auto'"),
    (lambda: Neumann(alpha="big"), "alpha must be a positive finite number or 'auto'"),
    (lambda: Neumann(steps=-1), "steps must be an int >= 0"),
    (lambda: Neumann(stop_on_growth="yes"), "stop_on_growth must be a bool or None"),
    (lambda: CG(damping=-1.0), "damping must be a finite number >= 0"),
    (lambda: CG(tol=-1e-3), "tol must be a finite number >= 0"),
    (lambda: CG(steps=0), "steps must be an int >= 1"),
    (lambda: Exact(max_params=0), "max_params must be an int >= 1"),
    (lambda: CG(warm_start=1), "warm_start must be a bool, got 1"),
    (lambda: make_solver("cg", alpha=0.1), r"solver 'cg' takes no option\(s\) \['alpha'\]"),
    (lambda: make_solver(CG(), steps=3), "given with a solver value"),
], ids=["alpha-inf", "alpha-str", "steps", "stop_on_growth", "damping", "tol", "cg-steps", "max_params", "warm_start", "foreign", "value"])
def test_bad_solver_options_are_rejected_when_the_solver_is_built(make, match):
    # A solver value validates its options at construction, before any Hessian-vector product.
    with pytest.raises(ValueError, match=match):
        make()


def test_solver_names_build_the_default_values():
    # A name is the class with its defaults; options bind like TorchOpt's solve_cg(**options).
    assert make_solver("neumann") == Neumann() and make_solver("cg", steps=4) == CG(steps=4)
    assert Neumann(steps=5, alpha="auto").options()["alpha"] == "auto"
    w, phi, val, train, _ = losses_at_optimum()
    by_name, _ = hypergradient(val, train, [w], [phi], solver="exact", retain_graph=True)
    by_value, info = hypergradient(val, train, [w], [phi], solver=Exact())
    torch.testing.assert_close(by_name, by_value)
    assert info.solver == "exact"


def test_stop_on_growth_and_exact_hessian_are_reachable():
    w, phi, val, train, ref = losses_at_optimum()
    hess = _dense_hessian(train, w).detach()
    # Exact with the Hessian handed over skips building it and gives the same closed form.
    (g,), info = hypergradient(val, train, [w], [phi], solver=Exact(hessian=hess), retain_graph=True)
    assert rel_err(g, ref) < 1e-5 and info.iterations == 5
    # A step far too large for the curvature: the guarded series stops, the unguarded one runs on.
    big = 10.0 / float(torch.linalg.eigvalsh(hess).max())
    _, guarded = hypergradient(val, train, [w], [phi], solver=Neumann(steps=5, alpha=big), retain_graph=True)
    _, unguarded = hypergradient(val, train, [w], [phi], solver=Neumann(steps=5, alpha=big, stop_on_growth=False))
    assert guarded.status == "diverging" and unguarded.status == "max_steps" and unguarded.iterations == 5


def test_train_grads_from_the_training_step_give_the_same_hypergradient():
    w, phi, val, train, ref = losses_at_optimum()
    g_t = torch.autograd.grad(train, [w], create_graph=True)
    # The gradient graph built by a training step is reused instead of built again.
    (g,), _ = hypergradient(val, train, [w], [phi], solver=Exact(), train_grads=g_t)
    assert rel_err(g, ref) < 1e-5
    w, phi, val, train, _ = losses_at_optimum()
    with pytest.raises(ValueError, match="train_grads must hold one entry per tensor of params"):
        hypergradient(val, train, [w], [phi], train_grads=[])


# ---------------------------------------------------------------- the mixed term by a central difference
@pytest.mark.parametrize("solver", [Exact(), CG(steps=50, tol=1e-12), Neumann(steps=0, alpha=0.05),
                                    Neumann(steps=3, alpha="auto")], ids=["exact", "cg", "lookahead", "neumann"])
def test_difference_hypergradient_matches_the_autograd_one(solver):
    w, phi, val, train, ref = losses_at_optimum()
    xs, ys, xa, ya, _, lam = ridge_problem()
    expected = hypergradient(val, train, [w], [phi], solver=solver).grads[0]
    calls = []

    def train_loss():
        calls.append(1)
        return train_loss_of(w, phi, xs, ys, lam)

    got, info = difference_hypergradient(((xa @ w - ya) ** 2).mean(), train_loss, [w], [phi], solver=solver)
    # The training loss is quadratic in W: the central difference is exact up to rounding.
    assert rel_err(got[0], expected) < 1e-7
    if isinstance(solver, Exact):  # and both equal the closed form at the optimum
        assert rel_err(got[0], ref) < 1e-6
    # two evaluations for the difference, plus one with a graph when the solver takes Hessian-vector products
    assert len(calls) == (2 if solver == Neumann(steps=0, alpha=0.05) else 3)
    assert info.solver == solver.name and info.finite and info.norm == pytest.approx(float(got[0].norm()))


def test_difference_hypergradient_of_a_network_in_float32_and_float64():
    for dtype, tol in ((F64, 1e-6), (torch.float32, 1e-2)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 3)).to(dtype)
        x, y, xa, ya = (torch.randn(n, k, dtype=dtype) for n, k in ((64, 5), (64, 3), (32, 5), (32, 3)))
        phi = torch.tensor([1.0, 0.5, 2.0], dtype=dtype, requires_grad=True)

        def train_loss():
            return (((net(x) - y) ** 2).mean(0) * phi).sum()

        val = ((net(xa) - ya)[:, 0] ** 2).mean()
        solver = Neumann(steps=2, alpha=0.1)
        expected = hypergradient(val, train_loss(), net.parameters(), [phi], solver=solver, retain_graph=True).grads[0]
        got = difference_hypergradient(val, train_loss, list(net.parameters()), [phi], solver=solver).grads[0]
        assert rel_err(got, expected) < tol, dtype
    assert difference_step(torch.float32) == pytest.approx(torch.finfo(torch.float32).eps ** 0.5)


def test_difference_hypergradient_restores_the_parameters_exactly():
    w, phi, val, _, _ = losses_at_optimum()
    xs, ys, _, _, _, lam = ridge_problem()
    before = w.detach().clone()
    difference_hypergradient(val, lambda: train_loss_of(w, phi, xs, ys, lam), [w], [phi],
                             solver=Neumann(steps=0, alpha=0.1))
    assert torch.equal(w.detach(), before) and w.requires_grad

    w2, phi2, val2, _, _ = losses_at_optimum()
    before = w2.detach().clone()

    def failing():
        assert not w2.requires_grad and not torch.equal(w2.detach(), before)  # moved, without a graph
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        difference_hypergradient(val2, failing, [w2], [phi2], solver=Neumann(steps=0, alpha=0.1))
    assert torch.equal(w2.detach(), before) and w2.requires_grad


def test_difference_hypergradient_bad_arguments_are_named():
    w, phi, val, _, _ = losses_at_optimum()
    xs, ys, _, _, _, lam = ridge_problem()
    with pytest.raises(ValueError, match="step must be a positive finite number"):
        difference_hypergradient(val, lambda: train_loss_of(w, phi, xs, ys, lam), [w], [phi], step=-1.0)
    with pytest.raises(ValueError, match="no tensor in aux_params influences train_loss"):
        difference_hypergradient(val, lambda: train_loss_of(w, phi.detach(), xs, ys, lam), [w], [phi],
                                 solver=Neumann(steps=0, alpha=0.1))


def test_difference_hypergradient_reports_the_same_residual():
    xs, ys, xa, ya, _, lam = ridge_problem()
    for solver in (Neumann(steps=3, alpha=0.1, residual=True), Neumann(steps=3, alpha=0.1, scaled=False, residual=True),
                   CG(steps=2, damping=0.1)):
        w, phi, val, train, _ = losses_at_optimum()
        expected = hypergradient(val, train, [w], [phi], solver=solver).info.residual
        got = difference_hypergradient(((xa @ w - ya) ** 2).mean(), lambda: train_loss_of(w, phi, xs, ys, lam), [w],
                                       [phi], solver=solver).info.residual
        assert 0 < got == pytest.approx(expected, rel=1e-9)
