"""``toy``: the AuxiLearn illustration, a 2-D linear regression with a helpful and a harmful auxiliary.

One shared linear model ``y = x . w`` (``nn.Linear(2, 1, bias=False)``) is fitted to three label
columns of the same inputs ``x ~ N(0, I_2)``:

=========  ===============================  =====================================================
column     labels                           role
=========  ===============================  =====================================================
0 main     ``x . w*  + noise * N(0, 1)``    the task we care about: few samples, very noisy
1 helpful  ``x . w*  + aux_noise * N(0,1)`` same optimum ``w* = (1, 1)``, low noise: **helps**
2 harmful  ``x . w_h + aux_noise * N(0,1)`` another optimum ``w_h = (-1, -4)``: **harms**
=========  ===============================  =====================================================

Sizes (defaults): a training pool of 64 samples of which ``aux_size=16`` form the auxiliary set
(48 train); 256 validation and 1024 test samples, drawn separately and *noiseless* (every column
is ``x . w`` exactly), so the metric, the main-task MSE on them, equals ``|w - w*|^2`` in
expectation. Main-task-only least squares on 48 samples with noise 2.5 leaves about
``2 * 2.5^2 / 48 ~= 0.26``; equal weights converge to the mean optimum ``(1/3, -2/3)`` (MSE
about 3.2); weighting the helpful task up and the harmful one down approaches 0. Measured
(seeds 0-2, Adam with ``defaults``, whose last iterate wanders): main alone 0.1-0.54, equal
weights 2.8-4.4, AuxiLearn's linear combiner 0.06-0.11 (harmful weight driven to 0).

The 16-sample auxiliary set is what the hypergradient sees, and on many seeds it favours the
harmful task: :func:`harmful_pull` gives the slope of the auxiliary-set main-task MSE of the exact
weighted least-squares fit in the harmful weight, at harmful weight 0 (negative: the auxiliary set
asks for some harmful weight). At helpful weight 5 it is below -0.4 on 21 of seeds 0-49 (6, 7,
12 and 13 of 0-19). Measured with the default learner: the harmful/helpful ratio ends above 0.1
on 17 of those 21 seeds and below 0.1 on all 29 others.

Shapes: a batch is ``(x, Y)`` with ``x`` ``(B, 2)`` and ``Y`` ``(B, 3)``; ``loss_fn`` returns the
squared errors ``(B, 3)``. ``Task.shared_params`` is ``None``: every parameter is shared.
"""
from __future__ import annotations

import torch
from torch import nn

from ..task import Task
from ._common import generator, make_loaders, seeded, split_pool
from ._common import main_mse as metric_fn
from ._common import shared_prediction_loss as loss_fn

__all__ = ["make", "harmful_pull", "W_STAR", "W_HARMFUL", "TASK_NAMES"]

W_STAR = (1.0, 1.0)
W_HARMFUL = (-1.0, -4.0)
TASK_NAMES = ("main", "helpful", "harmful")


def make(
    seed: int = 0, *, n_train: int = 64, aux_size: float | int = 16, n_val: int = 256, n_test: int = 1024,
    noise: float = 2.5, aux_noise: float = 0.1, batch_size: int = 16,
) -> Task:
    """Build the toy task (see the module docstring). ``noise``: main-label noise std;
    ``aux_noise``: noise std of the helpful and harmful labels; ``n_train`` includes the
    auxiliary set of ``aux_size`` samples (a count, or a fraction of ``n_train``)."""
    g = generator(seed, "data")
    w = torch.tensor([W_STAR, W_STAR, W_HARMFUL]).T  # (2, 3): one column per task
    stds = torch.tensor([noise, aux_noise, aux_noise])

    def draw(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 2, generator=g)
        y = x @ w
        if noisy:
            y = y + stds * torch.randn(n, 3, generator=g)
        return x, y

    pool, val, test = draw(n_train, True), draw(n_val, False), draw(n_test, False)
    train, aux, train_idx, aux_idx = split_pool(pool, aux_size, seed)
    loaders = make_loaders(train, aux, val, test, batch_size=batch_size, seed=seed)
    with seeded(seed):
        model = nn.Linear(2, 1, bias=False)
    return Task(
        name="toy", model=model, loss_fn=loss_fn,
        train_loader=loaders[0], aux_loader=loaders[1], val_loader=loaders[2], test_loader=loaders[3],
        metric_fn=metric_fn, metric_name="mse", mode="min", task_names=list(TASK_NAMES), main_task=0,
        shared_params=None,
        defaults={"epochs": 60, "lr": 0.05, "batch_size": batch_size},
        info={
            "w_star": list(W_STAR), "w_harmful": list(W_HARMFUL), "helpful": ["helpful"], "harmful": ["harmful"],
            # inverse noise variance on the tasks that share w*, 0 on the harmful one
            "oracle_weights": {"main": 1.0, "helpful": (noise / aux_noise) ** 2, "harmful": 0.0},
            "noise": {"main": noise, "helpful": aux_noise, "harmful": aux_noise},
            "metric": "main-task MSE on noiseless labels, ~ |w - w*|^2",
            "n": {"train": len(train_idx), "aux": len(aux_idx), "val": n_val, "test": n_test},
            "pool_indices": {"train": train_idx, "aux": aux_idx},
        },
    )


def harmful_pull(seed: int = 0, helpful: float = 5.0, **kwargs) -> float:
    """``d L_A / d r`` at ``r = 0``: how the auxiliary set's main-task MSE ``L_A`` of the exact
    inner solution moves as the harmful task's weight ``r`` grows from 0.

    The inner problem is weighted least squares on the training set (main weight 1, helpful
    weight ``helpful``, harmful weight ``r``, raw squared-error losses), solved in closed form in
    float64: with every task on the same inputs ``X``, ``w(r) = (X'X)^-1 X'(y0 + h y1 + r y2) /
    (1 + h + r)``. Negative: the auxiliary set rewards some harmful weight, so a hypergradient
    method faithful to it raises that weight. ``kwargs`` go to :func:`make`.

    Raises:
        ValueError: ``helpful`` not a finite number ``>= 0``.
    """
    if isinstance(helpful, bool) or not isinstance(helpful, (int, float)) or not 0 <= helpful < float("inf"):
        raise ValueError(f"helpful must be a finite number >= 0, got {helpful!r}")
    task = make(seed, **kwargs)
    x, y = (t.double() for t in task.train_loader.dataset.tensors)  # (N, 2), (N, 3)
    xa, ya = (t.double() for t in task.aux_loader.dataset.tensors)  # (n, 2), (n, 3)
    gram = x.T @ x
    total = 1.0 + helpful
    w = torch.linalg.solve(gram, x.T @ (y[:, 0] + helpful * y[:, 1])) / total  # (2,)
    dw = torch.linalg.solve(gram, x.T @ y[:, 2] - gram @ w) / total  # dw/dr at r = 0
    residual = ya[:, 0] - xa @ w
    return float(-2.0 * (residual @ (xa @ dw)) / len(residual))
