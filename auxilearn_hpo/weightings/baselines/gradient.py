"""Baselines that act on per-task gradients of the shared parameters: GradNorm, gradient cosine
similarity and PCGrad."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..base import Weighting
from ..parts import check_positive

__all__ = ["GradNorm", "GradientCosineSimilarity", "PCGrad"]


def _unique(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``tensors`` without repeats (by identity), order kept."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _split_params(
    params: Sequence[Tensor], shared_params: Sequence[Tensor] | None
) -> tuple[list[Tensor], list[bool]]:
    """The union of ``params`` and ``shared_params`` and, for each, whether it is shared."""
    params = _unique(list(params))
    shared = params if shared_params is None else _unique(list(shared_params))
    if not params and not shared:
        raise ValueError("params must hold at least one tensor, got an empty sequence")
    ids = {id(p) for p in params}
    union = params + [p for p in shared if id(p) not in ids]
    shared_ids = {id(p) for p in shared}
    return union, [id(p) in shared_ids for p in union]


def _per_task_grads(task_losses: Tensor, params: Sequence[Tensor]) -> list[list[Tensor]]:
    """``grads[j][k] = d task_losses[j] / d params[k]``; unused parameters get zeros."""
    grads = []
    for j in range(task_losses.shape[0]):
        if task_losses[j].requires_grad:
            gs = torch.autograd.grad(task_losses[j], params, retain_graph=True, allow_unused=True)
        else:  # a constant loss column (e.g. a task with no labels in this batch)
            gs = (None,) * len(params)
        grads.append([torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)])
    return grads


def _gram(grads: list[list[Tensor]], is_shared: Sequence[bool]) -> Tensor:
    """``M[i, j] = <g_i, g_j>`` over the shared parameters, float64, ``(T, T)``."""
    n = len(grads)
    gram = torch.zeros(n, n, dtype=torch.float64)
    for k, shared in enumerate(is_shared):
        if not shared:
            continue
        flat = torch.stack([g[k].reshape(-1) for g in grads]).double()
        gram += (flat @ flat.T).cpu()
    return gram


def _write_grads(
    params: Sequence[Tensor],
    is_shared: Sequence[bool],
    grads: list[list[Tensor]],
    shared_coef: Tensor,
    other_coef: Tensor,
) -> None:
    """``p.grad += sum_j coef_j g_j[p]`` with ``shared_coef`` on shared params, ``other_coef`` elsewhere."""
    shared_coef, other_coef = shared_coef.tolist(), other_coef.tolist()
    for k, (p, shared) in enumerate(zip(params, is_shared)):
        coef = shared_coef if shared else other_coef
        g = sum(c * gj[k] for c, gj in zip(coef, grads))
        g = g.detach()
        p.grad = g if p.grad is None else p.grad + g


def _combined(task_losses: Tensor, weights: Tensor) -> Tensor:
    return (task_losses.detach() * weights.to(task_losses)).sum()


class _GradientWeighting(Weighting):
    """A weighting that acts on the per-task gradients (``T`` backward passes per step).

    :meth:`backward` computes ``g_j = d L_j / d W`` and their Gram matrix on the shared
    parameters, asks :meth:`combine` for the coefficients, and writes
    ``p.grad += sum_j c_j g_j[p]`` (the shared coefficients on shared parameters, the head
    coefficients elsewhere); it returns ``sum_j v_j L_j`` with the loss weights ``v``.
    """

    learnable = False

    def combine(self, task_losses: Tensor, gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(shared, heads, loss_weights)`` coefficients, each ``(T,)`` float64, from the
        per-task losses ``(T,)`` and the Gram matrix ``(T, T)`` of their shared gradients."""
        raise NotImplementedError

    def backward(
        self, losses: Tensor, params: Sequence[Tensor], shared_params: Sequence[Tensor] | None = None
    ) -> Tensor:
        self.check(losses)
        params, is_shared = _split_params(params, shared_params)
        task_losses = losses.mean(0)
        grads = _per_task_grads(task_losses, params)
        shared, heads, loss_weights = self.combine(task_losses, _gram(grads, is_shared))
        _write_grads(params, is_shared, grads, shared, heads)
        return _combined(task_losses, loss_weights)


class GradNorm(_GradientWeighting):
    """Balances tasks by making their gradient norms proportional to their training progress.

    At every :meth:`backward` call, with per-task losses ``L_j``, weights ``w_j`` and
    ``g_j = d L_j / d W`` on the shared parameters ``W``:

    1. the model receives the gradient of ``sum_j w_j L_j`` (the weights *before* this step's
       update), on every parameter;
    2. ``G_j = ||w_j g_j||``, ``Gbar = mean_j G_j``; the inverse training rate is
       ``r_j = (L_j / L_j(0)) / mean_k (L_k / L_k(0))``, with ``L_j(0)`` the losses of the very
       first call;
    3. the GradNorm loss ``L_grad = sum_j |G_j - Gbar r_j^alpha|``, with the target
       ``Gbar r_j^alpha`` held constant, is lowered by one gradient step
       ``w_j <- w_j - lr * sign(G_j - target_j) * ||g_j||`` (``d G_j / d w_j = ||g_j||`` exactly,
       so no second-order graph is needed);
    4. weights are floored at ``1e-8`` and renormalised to sum to ``T``.

    The weights are a buffer, not an ``nn.Parameter``, so the model optimizer never sees them.

    Args:
        alpha: asymmetry ``alpha >= 0``; larger values pull harder towards equal training rates
            (0 equalises raw gradient norms). The paper's default is 1.5.
        lr: step size of the weight update (``> 0``). Not from the paper, which uses the model's
            learning rate; the step is proportional to gradient norms, so tune it per problem.

    Attributes (buffers):
        weights: ``(T,)`` task weights, initialised to 1, always summing to ``T``.
        initial_losses: ``(T,)`` ``L_j(0)``, ``nan`` until the first :meth:`backward`.

    .. note::
        The paper takes the norms on the weights of the *last shared layer* only (for speed);
        here they are taken over all ``shared_params`` together, which is the quantity the
        last-layer norm approximates. Pass only the last shared layer as ``shared_params`` to
        recover the paper's choice. The paper updates ``w`` with the model's optimizer; here it
        is a plain gradient step of size ``lr``.

    WARNING: without ``shared_params`` the norms include task-specific heads, which is not
    GradNorm. Each call costs ``T`` backward passes. :meth:`forward` only gives the value
    ``sum_j w_j L_j``; calling ``forward(...).backward()`` trains the model with fixed weights
    that are never updated. ``L_j(0)`` must be non-zero (it is clamped to ``1e-12``).

    References:
        Chen, Badrinarayanan, Lee, Rabinovich 2018, "GradNorm: Gradient Normalization for
        Adaptive Loss Balancing in Deep Multitask Networks", ICML.
        https://arxiv.org/abs/1711.02257

    Example:
        >>> w = GradNorm(2, alpha=1.5, lr=0.01)
        >>> w.task_weights()
        tensor([1., 1.])
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 alpha: float = 1.5, lr: float = 0.01):
        super().__init__(n_tasks, main_task, task_names)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.lr = check_positive("lr", lr)
        self.register_buffer("weights", torch.ones(n_tasks))
        self.register_buffer("initial_losses", torch.full((n_tasks,), float("nan")))

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, alpha={self.alpha}, lr={self.lr}"

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return (losses.mean(0) * self.weights.to(losses)).sum()

    def combine(self, task_losses: Tensor, gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w = self.weights.detach().double().cpu().clone()  # the model steps with these; the buffer moves on
        L = task_losses.detach().double().cpu()
        if torch.isnan(self.initial_losses).any():
            self.initial_losses.copy_(L.to(self.initial_losses))
        norms = gram.diagonal().clamp_min(0).sqrt()
        G = w * norms
        rel = L / self.initial_losses.double().cpu().clamp_min(1e-12)
        r = rel / rel.mean().clamp_min(1e-12)
        target = G.mean() * r**self.alpha
        # one gradient step on sum_j |G_j - target_j|, target constant; keep positive, sum T
        new_w = (w - self.lr * torch.sign(G - target) * norms).clamp_min(1e-8)
        self.weights.copy_((self.n_tasks * new_w / new_w.sum()).to(self.weights))
        return w, w, w

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return self.weights.detach().clone()


# --------------------------------------------------------------------------------------------
# gradient cosine similarity


class GradientCosineSimilarity(_GradientWeighting):
    """Uses an auxiliary task only while its gradient agrees with the main task's.

    On the shared parameters, with ``g_main`` and ``g_j`` the gradients of the main and of
    auxiliary loss ``j``, the update is

    .. math::

        g = g_{main} + \\sum_{j \\ne main} \\mathbb{1}[\\cos(g_{main}, g_j) > 0] \\, g_j

    (``weighted=True``: the gate is ``max(0, cos(g_main, g_j))`` instead of the indicator).
    Parameters that are not shared (task heads) receive the plain gradient of ``sum_j L_j``.
    The cosine is taken over all shared parameters concatenated; a zero gradient gives
    ``cos = 0``, so the auxiliary task is dropped.

    Args:
        weighted: ``False`` for the unweighted (0/1 gate) variant, ``True`` for the weighted one.

    Attributes (buffer):
        gates: ``(T,)`` gates of the last :meth:`backward` (main task 1), initialised to 1.

    .. note::
        The paper states the rule for one auxiliary task; with several, each is gated by its own
        cosine with the main gradient, independently of the others.

    WARNING: :meth:`forward` returns ``sum_j gate_j L_j`` with the *previous* gates and no
    gradient gating; train through :meth:`backward`. Each call costs ``T`` backward passes.

    References:
        Du, Czarnecki, Jayakumar, Farajtabar, Pascanu, Lakshminarayanan 2018, "Adapting
        Auxiliary Losses Using Gradient Similarity". https://arxiv.org/abs/1812.02224

    Example:
        >>> GradientCosineSimilarity(3, weighted=True).task_weights()
        tensor([1., 1., 1.])
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 weighted: bool = False):
        super().__init__(n_tasks, main_task, task_names)
        if not isinstance(weighted, bool):
            raise ValueError(f"weighted must be a bool, got {weighted!r}")
        self.weighted = weighted
        self.register_buffer("gates", torch.ones(n_tasks))

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, main_task={self.main_task}, weighted={self.weighted}"

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return (losses.mean(0) * self.gates.to(losses)).sum()

    def combine(self, task_losses: Tensor, gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.main_task
        denom = (gram[m, m] * gram.diagonal()).clamp_min(0).sqrt()
        cos = torch.where(denom > 0, gram[m] / denom.clamp_min(1e-300), torch.zeros_like(denom))
        gates = cos.clamp_min(0) if self.weighted else (cos > 0).double()
        gates[m] = 1.0
        self.gates.copy_(gates.to(self.gates))
        return gates, torch.ones_like(gates), gates

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return self.gates.detach().clone()


# --------------------------------------------------------------------------------------------
# PCGrad


class PCGrad(_GradientWeighting):
    """Gradient surgery: removes the part of each task gradient that conflicts with another.

    For each task ``i`` (shared parameters only), starting from ``g_i^PC = g_i``, loop over the
    other tasks ``j`` in a random order and, whenever ``g_i^PC . g_j < 0``, project
    ``g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j``. The update is ``sum_i g_i^PC``;
    non-shared parameters receive the plain sum ``sum_i g_i``. Projections are against the
    *original* ``g_j``, as in the paper's Algorithm 1.

    Because every projection subtracts a multiple of an original gradient, the result is
    ``sum_j a_j g_j`` for coefficients ``a_j >= 1``; :meth:`surgery_coefficients` returns these
    ``a_j`` for the last call (ones before the first call and whenever nothing conflicts). They
    are **not** loss weights: they depend on the conflicts of one batch and can reach 1e5 when
    gradients nearly cancel. The losses themselves are summed with weight 1, which is what
    :meth:`task_weights` (and so the ``weights/<task>`` columns of results) reports.

    Args:
        seed: seeds the ``torch.Generator`` that draws the orders, so runs are reproducible.
            Its state is saved in :meth:`state_dict` (extra state) and restored by
            :meth:`load_state_dict`.

    .. note::
        The authors' released code shuffles the list of all gradients, ``g_i`` included, which
        is a no-op only while ``g_i^PC . g_i >= 0``; here ``j`` ranges over the other tasks, as in
        the paper. Gradients are combined through their Gram matrix in float64, which is
        algebraically identical to projecting the flattened vectors.

    WARNING: PCGrad treats all tasks symmetrically: the main task's gradient is projected too,
    so auxiliary tasks can steer the main one. Each call costs ``T`` backward passes.
    :meth:`forward` returns ``sum_j L_j`` without surgery; train through :meth:`backward`.

    References:
        Yu, Kumar, Gupta, Levine, Hausman, Finn 2020, "Gradient Surgery for Multi-Task
        Learning", NeurIPS. https://arxiv.org/abs/2001.06782

    Example:
        >>> PCGrad(2, seed=0).task_weights()
        tensor([1., 1.])
        >>> PCGrad(2, seed=0).effective_coefficients()
        {'main': 1.0, 'aux1': 1.0}
    """

    learnable = False

    def __init__(self, n_tasks: int, main_task: int = 0, task_names: Sequence[str] | None = None, *,
                 seed: int = 0):
        super().__init__(n_tasks, main_task, task_names)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("coefficients", torch.ones(n_tasks))

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, seed={self.seed}"

    def get_extra_state(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator_state"])

    def forward(self, losses: Tensor) -> Tensor:
        self.check(losses)
        return losses.mean(0).sum()

    def surgery(self, gram: Tensor) -> Tensor:
        """Coefficients ``a`` with ``sum_i g_i^PC = sum_j a_j g_j``, from the Gram matrix ``(T, T)``.

        Row ``i`` of ``B`` holds ``g_i^PC`` in the basis of the original gradients, so
        ``g_i^PC . g_j = (B gram)[i, j]``; consumes one random order per task.
        """
        n = gram.shape[0]
        basis = torch.eye(n, dtype=torch.float64)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            order = torch.randperm(len(others), generator=self.generator).tolist()
            for k in order:
                j = others[k]
                dot = basis[i] @ gram[:, j]
                if dot < 0:  # conflict; ||g_j|| > 0 here since the dot product is non-zero
                    basis[i, j] -= dot / gram[j, j]
        return basis.sum(0)

    def combine(self, task_losses: Tensor, gram: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        coef = self.surgery(gram)
        self.coefficients.copy_(coef.to(self.coefficients))
        return coef, torch.ones_like(coef), torch.ones_like(coef)

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        """The loss weights: ones (PCGrad sums the losses; its surgery acts on the gradients)."""
        return torch.ones_like(self.coefficients)

    def surgery_coefficients(self) -> Tensor:
        """``a`` with ``update = sum_j a_j g_j`` for the shared parameters in the last call, ``(T,)``."""
        return self.coefficients.detach().clone()

    def effective_coefficients(self) -> dict[str, float]:
        """:meth:`surgery_coefficients` as ``{task_name: float}``, named apart from the loss weights."""
        return dict(zip(self.task_names, self.surgery_coefficients().double().cpu().tolist()))
