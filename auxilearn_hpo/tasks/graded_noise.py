"""``graded_noise``: linear regression with many auxiliaries of increasing label noise.

One shared linear model ``y = x . w`` (``nn.Linear(d, 1, bias=False)``, ``d=10``) predicts every
label column of the same inputs ``x ~ N(0, I_d)``; ``w* ~ N(0, I_d)`` is drawn from the seed.

* column 0, ``main``: ``x . w* + noise * N(0, 1)`` (``noise=1``);
* columns ``1..n_aux`` (``aux1`` ...): the first ``n_aux - n_pure`` share the optimum,
  ``x . w* + noise_k * N(0, 1)``, with ``noise_k`` growing geometrically from ``noise`` towards
  ``max_noise``; the last ``n_pure`` (default ``n_aux // 4``) are **pure noise**,
  ``noise_k * N(0, 1)`` independent of ``x``, whose optimum is ``w = 0``.

What helps: every signal auxiliary helps when weighted in proportion to ``1 / noise_k^2`` (the
inverse-variance weights are optimal for this shared least-squares model; ``info`` holds them);
the pure-noise ones only harm (they shrink ``w`` towards 0 and add variance). With the defaults
(``n_aux=16``, 64-sample pool, ``aux_size=16``, 48 train), main-task-only least squares leaves a
test MSE of about ``d * noise^2 / (48 - d)``; equal weights are worse than that (4 of 17 tasks pull
``w`` towards 0); inverse-variance weights are several times better.

Validation (256) and test (1024) samples are separate draws with noiseless labels, so the metric,
the main-task MSE on them, is ``~ |w - w*|^2``.

``info``: ``noise`` (the ``n_aux`` auxiliary noise levels, increasing), ``main_noise``,
``pure_noise`` (loss-column indices of the pure-noise tasks; ``auxK`` is column ``K``),
``optimal_weights`` (``noise^2 / noise_k^2`` per column, 0 for pure noise), ``w_star``.
Measured (seeds 0-2, Adam with ``defaults``): main alone 0.18-0.45, equal weights 0.68-1.9,
inverse-variance weights 0.04-0.13 (``info["oracle_weights"]``). The Hessian is
``2 * sum(weights) * I`` here, so a fixed Neumann ``alpha`` of 0.1 diverges with 17 weights near 1;
the learner's default ``alpha="auto"`` follows the largest eigenvalue instead.

Shapes: a batch is ``(x, Y)``, ``x`` ``(B, d)``, ``Y`` ``(B, 1 + n_aux)``; ``loss_fn`` returns
squared errors ``(B, 1 + n_aux)``. ``Task.shared_params`` is ``None`` (every parameter is shared).
"""
from __future__ import annotations

import torch
from torch import nn

from ..task import Task
from ._common import generator, make_loaders, seeded, split_pool
from ._common import main_mse as metric_fn
from ._common import shared_prediction_loss as loss_fn

__all__ = ["make"]


def make(
    seed: int = 0, *, n_aux: int = 16, n_pure: int | None = None, d: int = 10, n_train: int = 64,
    aux_size: float | int = 16, n_val: int = 256, n_test: int = 1024, noise: float = 1.0,
    max_noise: float = 16.0, batch_size: int = 16,
) -> Task:
    """Build the task (see the module docstring). Noise levels of the ``n_aux`` auxiliaries are
    ``geomspace(noise, max_noise, n_aux + 1)[1:]`` (strictly increasing); the last ``n_pure`` of them
    are pure noise of that standard deviation. ``n_train`` includes the ``aux_size`` auxiliary set."""
    for key, value, low in (("n_aux", n_aux, 1), ("d", d, 1), ("n_train", n_train, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{key} must be an int >= {low}, got {value!r}")
    n_pure = n_aux // 4 if n_pure is None else n_pure
    if isinstance(n_pure, bool) or not isinstance(n_pure, int) or not 0 <= n_pure <= n_aux:
        raise ValueError(f"n_pure must be an int in [0, n_aux={n_aux}], got {n_pure!r}")
    if not 0 < noise < max_noise:
        raise ValueError(f"need 0 < noise < max_noise, got noise={noise!r}, max_noise={max_noise!r}")

    levels = torch.logspace(torch.log10(torch.tensor(float(noise))), torch.log10(torch.tensor(float(max_noise))),
                            n_aux + 1, dtype=torch.float64)[1:].float()
    stds = torch.cat([torch.tensor([float(noise)]), levels])  # (1 + n_aux,)
    signal = torch.ones(1 + n_aux)
    signal[1 + n_aux - n_pure:] = 0.0  # pure-noise columns carry no x . w*
    g = generator(seed, "data")
    w_star = torch.randn(d, generator=g)

    def draw(n: int, noisy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=g)
        eps = torch.randn(n, 1 + n_aux, generator=g)
        if noisy:
            return x, (x @ w_star)[:, None] * signal + stds * eps
        return x, (x @ w_star)[:, None] * signal  # evaluation: noiseless (pure-noise columns: 0)

    pool, val, test = draw(n_train, True), draw(n_val, False), draw(n_test, False)
    train, aux, train_idx, aux_idx = split_pool(pool, aux_size, seed)
    loaders = make_loaders(train, aux, val, test, batch_size=batch_size, seed=seed)
    with seeded(seed):
        model = nn.Linear(d, 1, bias=False)
    pure = list(range(1 + n_aux - n_pure, 1 + n_aux))
    optimal = (noise / stds) ** 2 * signal
    return Task(
        name="graded_noise", model=model, loss_fn=loss_fn,
        train_loader=loaders[0], aux_loader=loaders[1], val_loader=loaders[2], test_loader=loaders[3],
        metric_fn=metric_fn, metric_name="mse", mode="min",
        task_names=["main"] + [f"aux{k}" for k in range(1, n_aux + 1)], main_task=0, shared_params=None,
        defaults={"epochs": 60, "lr": 0.05, "batch_size": batch_size},
        info={
            "noise": levels.tolist(), "main_noise": float(noise), "pure_noise": pure,
            "optimal_weights": optimal.tolist(), "w_star": w_star.tolist(),
            "oracle_weights": dict(zip(["main"] + [f"aux{k}" for k in range(1, n_aux + 1)], optimal.tolist())),
            "metric": "main-task MSE on noiseless labels, ~ |w - w*|^2",
            "n": {"train": len(train_idx), "aux": len(aux_idx), "val": n_val, "test": n_test},
            "pool_indices": {"train": train_idx, "aux": aux_idx},
        },
    )
