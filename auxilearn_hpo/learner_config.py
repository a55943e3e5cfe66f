"""The outer settings of AuxiLearn, the ones a tuning study searches: :class:`LearnerConfig`."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch

from .hypergrad import SOLVERS, Solver, make_solver
from .hypergrad.functional import check_compile
from .pooled_adam import PooledAdam

__all__ = ["LearnerConfig", "AUX_OPTIMIZERS", "finite"]


#: The optimizers :class:`LearnerConfig`'s ``aux_optimizer`` names.
AUX_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "pooled_adam": PooledAdam, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
}


def finite(name: str, value: Any, *, low: float = 0.0, strict: bool = True) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` unless finite and ``> low`` (``>=`` if not strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


@dataclass
class LearnerConfig:
    """The outer settings of AuxiLearn, the ones a tuning study searches.

    The defaults are the measured ones; ``docs/experiments.md`` holds the runs behind each.

    Attributes:
        update_every: take a hyperstep every this many training steps (with ``aux_lr=0.26``,
            the same step per training step as 0.13 every 8 steps).
        solver: hypergradient solver, ``"neumann"``, ``"cg"`` or ``"exact"``
            (:data:`~auxilearn_hpo.hypergrad.SOLVERS`); :meth:`make_solver` builds its value
            from the flat fields below that the solver takes, plus ``solver_options``.
        solver_options: further options of the named solver, those without a field here
            (``stop_on_growth`` of Neumann, ``max_params`` of exact); a key the solver does not
            take, or one that has a field here, is an error.
        steps: Neumann terms or CG iterations.
        alpha: Neumann step (converges for ``0 < alpha < 2 / lambda_max(H)``), or ``"auto"``
            (default): ``1 / lambda_max`` from a power iteration on the Hessian, warm-started
            from hyperstep to hyperstep (``power_iters`` products at the first, then one), so
            no benchmark needs a hand-set alpha.
        damping: ``H + damping I`` in every solver.
        tol: CG tolerance (relative residual).
        aux_lr: learning rate of the auxiliary optimizer (built by the learner when none is
            given). Adam moves a parameter by about its learning rate per step while the
            hypergradient's sign is consistent and much less while it is mostly noise, so with
            log-space weights the default 0.26 lets a consistent signal move a weight by
            ``e^5`` (two decades) in 20 hypersteps.
        aux_optimizer: the optimizer the learner builds over the auxiliary parameters:
            ``"pooled_adam"`` (default, :class:`~auxilearn_hpo.pooled_adam.PooledAdam`: Adam with
            each coordinate's second moment floored at its tensor's mean, so a weight whose
            hypergradient is small next to the other weights' moves in proportion to it rather
            than by a full Adam step), ``"adam"`` or ``"sgd"``.
        max_grad_norm: clip the hypergradient norm; ``None`` disables clipping.
        warmup_steps: no hyperstep before this many training steps.
        scaled: Neumann scaling (``False`` reproduces the original AuxiLearn update).
        residual: Neumann only: measure the solve's residual (about one more Hessian-vector
            product per hyperstep); CG and exact always report it.
        aux_samples: each hyperstep evaluates the auxiliary-set loss on at least this many
            samples (whole auxiliary-set batches, cycling), which lowers the hypergradient's
            variance when the auxiliary set is small; ``0`` uses one batch.
        train_batches: each hyperstep evaluates the training loss on the current batch and the
            ``train_batches - 1`` training batches before it, concatenated along the first
            dimension (tensors, or tuples, lists and dicts of them), which lowers the variance
            of the mixed term and the Hessian-vector products. The earlier batches are held by
            reference (and saved in :meth:`AuxiliaryLearner.state_dict`); a hyperstep's cost
            grows with its batch where compute, not per-call overhead, dominates. Not with
            ``fused=True``, whose hyperstep reuses its training step's graph.
        power_iters: power iterations of the first ``alpha="auto"`` estimate.
        power_every: with ``alpha="auto"``, re-estimate the largest eigenvalue every this many
            hypersteps (one Hessian-vector product each time; the estimate moves slowly).
        fused: ``"auto"`` (default), ``True`` or ``False``. Fused, a hyperstep reuses its training
            step's forward pass and ``create_graph`` gradient (one forward and one backward
            fewer), so the hypergradient is taken at the weights before that step rather than
            after it. ``"auto"`` fuses when the other settings allow it (``train_batches=1``, no
            ``compile``) and otherwise runs the unfused hyperstep; ``True`` demands fusing
            (those settings are then an error); ``False`` never fuses. Weightings with their
            own backward or meta-gradient (gradient alignment) never fuse.
        compile: take each hyperstep as one ``torch.compile``-d program
            (:func:`~auxilearn_hpo.hypergrad.functional_hypergradient`: ``g_A``, the Neumann
            series and the mixed term as ``torch.func`` transforms of the model's and the
            weighting's parameters, the same numbers as the default up to rounding). ``True``
            compiles with inductor; a string names another ``torch.compile`` backend. Compiling
            takes seconds to a minute per model and batch shape, so it pays over long runs, not
            on the shipped benchmarks (``bench hypergrad`` has the per-hyperstep gain). Needs
            ``solver="neumann"`` without ``residual`` and ``fused`` not ``True`` (``"auto"``
            runs it unfused). Batch-norm statistics are not updated by the hyperstep's forward
            passes, and dropout masks come from the compiled program's generator.
    """

    update_every: int = 16
    solver: str = "neumann"
    steps: int = 3
    alpha: float | str = "auto"
    damping: float = 0.0
    tol: float = 1e-6
    aux_lr: float = 0.26
    aux_optimizer: str = "pooled_adam"
    max_grad_norm: float | None = 10.0
    warmup_steps: int = 0
    scaled: bool = True
    residual: bool = False
    aux_samples: int = 256
    train_batches: int = 1
    power_iters: int = 10
    power_every: int = 10
    solver_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    fused: bool | str = "auto"
    compile: bool | str = False

    #: The flat fields each solver takes (the rest of a solver's options go in ``solver_options``).
    SOLVER_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "neumann": ("steps", "alpha", "damping", "scaled", "residual", "power_iters", "power_every"),
        "cg": ("steps", "tol", "damping"),
        "exact": ("damping",),
    }

    @property
    def fuses(self) -> bool:
        """Whether a hyperstep reuses its training step's graph: ``fused=True``, or ``"auto"``
        with ``train_batches=1`` and no ``compile``."""
        if self.fused == "auto":
            return self.train_batches == 1 and self.compile is False
        return bool(self.fused)

    def make_solver(self) -> Solver:
        """The :class:`~auxilearn_hpo.hypergrad.Solver` value these settings describe."""
        flat = {k: getattr(self, k) for k in self.SOLVER_FIELDS[self.solver]}
        shadowed = sorted(set(self.solver_options) & {f.name for f in dataclasses.fields(self)})
        if shadowed:
            raise ValueError(f"solver_options {shadowed} are LearnerConfig fields; set those fields instead")
        return make_solver(self.solver, **flat, **self.solver_options)

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")

        positive_int("update_every", 1)
        positive_int("steps", 0)
        positive_int("warmup_steps", 0)
        positive_int("aux_samples", 0)
        positive_int("train_batches", 1)
        positive_int("power_iters", 1)
        positive_int("power_every", 1)
        if not isinstance(self.solver, str) or self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.solver == "cg" and self.steps < 1:
            raise ValueError("steps must be >= 1 with solver='cg'")
        if self.alpha != "auto":
            finite("alpha (a number or 'auto')", self.alpha)
        finite("aux_lr", self.aux_lr)
        finite("tol", self.tol)
        finite("damping", self.damping, strict=False)
        if self.max_grad_norm is not None:
            finite("max_grad_norm (or None)", self.max_grad_norm)
        if not isinstance(self.aux_optimizer, str) or self.aux_optimizer not in AUX_OPTIMIZERS:
            raise ValueError(f"aux_optimizer must be one of {sorted(AUX_OPTIMIZERS)}, got {self.aux_optimizer!r}")
        for name in ("scaled", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.fused, bool) and self.fused != "auto":
            raise ValueError(f"fused must be True, False or 'auto', got {self.fused!r}")
        if self.fused is True and self.train_batches > 1:
            raise ValueError("fused=True takes its hyperstep from the training step's graph of one batch; it needs "
                             f"train_batches=1, got train_batches={self.train_batches!r}")
        check_compile(self.compile)
        if self.compile is not False:
            clash = [f"{k}={v!r}" for k, v, ok in (("solver", self.solver, self.solver == "neumann"),
                                                  ("residual", self.residual, not self.residual),
                                                  ("fused", self.fused, self.fused is not True)) if not ok]
            if clash:
                raise ValueError("compile needs solver='neumann', residual=False and "
                                 f"fused=False or 'auto', got {', '.join(clash)}")
        if not isinstance(self.solver_options, dict):
            raise ValueError(f"solver_options must be a dict, got {type(self.solver_options).__name__}")
        self.make_solver()  # every solver option is checked here, not at the first hyperstep

    @classmethod
    def from_dict(cls, settings: dict[str, Any], *, ignore: Iterable[str] = ()) -> "LearnerConfig":
        """Build from a dict. A key that is neither a field nor listed in ``ignore`` (keys that
        belong to a larger config, e.g. a trial's) raises a ``ValueError`` naming it."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names - set(ignore))
        if unknown:
            raise ValueError(f"unknown LearnerConfig setting(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: v for k, v in settings.items() if k in names})
