"""The bilevel training loop: one object that Ray Tune, Optuna and the CLI all drive."""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, SequentialSampler

from .data import concat_batches
from .hypergrad.functional import LossFunctions, check_compile
from .hypergrad import SOLVERS, HypergradInfo, Solver, make_solver
from .weightings.label_generation import generator_options, resolved_overrides
from .optim import MetaOptimizer
from .pooled_adam import PooledAdam
from .report import EpochReport
from .weightings.base import Weighting

__all__ = ["LearnerConfig", "AuxiliaryLearner", "EpochReport"]


#: The optimizers :class:`LearnerConfig`'s ``aux_optimizer`` names.
AUX_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "pooled_adam": PooledAdam, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
}


def _finite(name: str, value: Any, *, low: float = 0.0, strict: bool = True) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` unless finite and ``> low`` (``>=`` if not strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")
    return float(value)


#: How a hyperstep takes the mixed term ``-d/dphi (g_T . v)`` (:attr:`LearnerConfig.mixed`).
MIXED = ("autograd", "difference")


@dataclass
class LearnerConfig:
    """The outer settings of AuxiLearn, the ones a tuning study searches.

    Attributes:
        update_every: take a hyperstep every this many training steps. The default 8, with
            ``aux_lr=0.13`` (the same step per training step as 0.05 every 3 steps), matched or
            beat one hyperstep every 3 steps on the validation metric of all five shipped
            benchmarks over 20 seeds, with 2.7 times fewer hypersteps.
        max_update_every: adaptive hypersteps: after a hyperstep that changed the effective
            task weights by under half the largest relative change seen so far (the weights have
            settled: Adam's steps shrink when the hypergradient's sign wavers, and weights
            heading to 0 stop mattering), the interval doubles, up to this many steps; after a
            larger change it halves, down to ``update_every``. ``None`` (or equal to
            ``update_every``): a fixed interval.
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
            log-space weights the default 0.13 lets a consistent signal move a weight by
            ``e^5`` (two decades) in 40 hypersteps. ``"auto"``: ``aux_travel / n``, where
            ``n`` is the number of hypersteps :meth:`AuxiliaryLearner.fit` will take (the same
            reach whatever the length of the run).
        aux_travel: the log-weight distance ``aux_lr="auto"`` allows over a run.
        aux_optimizer: the optimizer the learner builds over the auxiliary parameters:
            ``"pooled_adam"`` (default, :class:`~auxilearn_hpo.pooled_adam.PooledAdam`: Adam with
            each coordinate's second moment floored at its tensor's mean, so a weight whose
            hypergradient is small next to the other weights' moves in proportion to it rather
            than by a full Adam step), ``"adam"`` or ``"sgd"``. With the linear combiner over
            20 seeds (validation, paired, against ``"adam"`` at the same settings) it lifted
            ``fewshot_digits`` by 0.7 points and left the other benchmarks within noise; with
            the starting weights of :data:`~auxilearn_hpo.registry.DEFAULT_OPTIONS` it tied or
            won on all five (docs/experiments.md, "The weights' dynamics").
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
            hypersteps (one Hessian-vector product each time; the estimate moves slowly, and
            re-estimating at every hyperstep changed no benchmark's validation metric).
        implicit_params: the inner parameters of the implicit differentiation: ``"all"`` the
            model's, or ``"top"``: those outside the shared trunk (``shared_params``, e.g.
            ``Task.shared_params``: the task heads) plus the trunk's last two tensors (its last
            layer's weight and bias), the rest held fixed. Cheaper (no Hessian-vector product
            reaches the lower trunk), and an approximation of the full hypergradient. (The heads
            alone would not do: a task-specific head does not touch the main task's loss, so its
            auxiliary weight would get a zero hypergradient.)
        fused: ``"auto"`` (default), ``True`` or ``False``. Fused, a hyperstep reuses its training
            step's forward pass and ``create_graph`` gradient (one forward and one backward
            fewer), so the hypergradient is taken at the weights before that step rather than
            after it. Cheaper (a training step and its hyperstep cost 0.88-0.89x the unfused pair
            on ``bench hypergrad``'s MLP and CNN at 3 Neumann terms; on the shipped benchmarks'
            tiny models, where per-call overhead dominates, 0-4% of the training CPU), and it
            learns the weights as well: paired over seeds 0-49 it is within noise of the
            unfused hyperstep on all five shipped benchmarks. ``"auto"`` fuses when the other
            settings allow it (``train_batches=1``, ``mixed="autograd"``, no ``compile``) and
            otherwise runs the unfused hyperstep; ``True`` demands fusing (those settings are
            then an error); ``False`` never fuses. Weightings with their own backward or
            meta-gradient (gradient alignment) never fuse.
        mixed: how the hypergradient's mixed term ``-d/dphi (g_T . v)`` is taken:
            ``"autograd"`` (default), a backward pass through the ``create_graph`` training
            gradient, or ``"difference"``, a central difference of the training loss along
            ``v`` (:func:`~auxilearn_hpo.hypergrad.difference_hypergradient`: two evaluations
            of the training batch with no graph through the model, the same dropout masks,
            batch-norm statistics restored). With ``steps=0`` it needs no ``create_graph``
            gradient at all except when ``alpha="auto"`` re-estimates its eigenvalue.
            Relative error about 1e-3 in float32 (1% on a ReLU network), 1e-8 in float64.
            Not with ``fused=True``, which takes the mixed term from its training step's graph.
        compile: take each hyperstep as one ``torch.compile``-d program
            (:func:`~auxilearn_hpo.functional.functional_hypergradient`: ``g_A``, the Neumann
            series and the mixed term as ``torch.func`` transforms of the model's and the
            weighting's parameters, the same numbers as the default up to rounding). ``True``
            compiles with inductor; a string names another ``torch.compile`` backend. Compiling
            takes seconds to a minute per model and batch shape, so it pays over long runs, not
            on the shipped benchmarks (``bench hypergrad`` has the per-hyperstep gain). Needs
            ``solver="neumann"`` without ``residual``, ``mixed="autograd"`` and ``fused`` not
            ``True`` (``"auto"`` runs it unfused). Batch-norm statistics are not updated by the
            hyperstep's forward passes, and dropout masks come from the compiled program's
            generator.
    """

    update_every: int = 8
    max_update_every: int | None = None
    solver: str = "neumann"
    steps: int = 3
    alpha: float | str = "auto"
    damping: float = 0.0
    tol: float = 1e-6
    aux_lr: float | str = 0.13
    aux_travel: float = 10.0
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
    implicit_params: str = "all"
    fused: bool | str = "auto"
    mixed: str = "autograd"
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
        with ``train_batches=1``, ``mixed="autograd"`` and no ``compile``."""
        if self.fused == "auto":
            return self.train_batches == 1 and self.mixed == "autograd" and self.compile is False
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
        if self.max_update_every is not None:
            positive_int("max_update_every", self.update_every)
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
            _finite("alpha (a number or 'auto')", self.alpha)
        if self.aux_lr != "auto":
            _finite("aux_lr (a number or 'auto')", self.aux_lr)
        _finite("aux_travel", self.aux_travel)
        _finite("tol", self.tol)
        _finite("damping", self.damping, strict=False)
        if self.max_grad_norm is not None:
            _finite("max_grad_norm (or None)", self.max_grad_norm)
        if not isinstance(self.aux_optimizer, str) or self.aux_optimizer not in AUX_OPTIMIZERS:
            raise ValueError(f"aux_optimizer must be one of {sorted(AUX_OPTIMIZERS)}, got {self.aux_optimizer!r}")
        for name in ("scaled", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.fused, bool) and self.fused != "auto":
            raise ValueError(f"fused must be True, False or 'auto', got {self.fused!r}")
        if self.implicit_params not in ("all", "top"):
            raise ValueError(f"implicit_params must be 'all' or 'top', got {self.implicit_params!r}")
        if self.mixed not in MIXED:
            raise ValueError(f"mixed must be one of {list(MIXED)}, got {self.mixed!r}")
        if self.fused is True and self.train_batches > 1:
            raise ValueError("fused=True takes its hyperstep from the training step's graph of one batch; it needs "
                             f"train_batches=1, got train_batches={self.train_batches!r}")
        if self.fused is True and self.mixed != "autograd":
            raise ValueError("fused=True takes the mixed term from its training step's graph; it needs "
                             f"mixed='autograd', got mixed={self.mixed!r}")
        check_compile(self.compile)
        if self.compile is not False:
            clash = [f"{k}={v!r}" for k, v, ok in (("solver", self.solver, self.solver == "neumann"),
                                                  ("residual", self.residual, not self.residual),
                                                  ("mixed", self.mixed, self.mixed == "autograd"),
                                                  ("fused", self.fused, self.fused is not True)) if not ok]
            if clash:
                raise ValueError("compile needs solver='neumann', residual=False, mixed='autograd' and "
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


def _generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader draws its order from."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


class AuxiliaryLearner:
    """Trains a model on a main task plus auxiliary tasks, learning how to weight them.

    Every training step combines the per-task losses with ``weighting`` and steps the model;
    when ``weighting.learnable`` (an AuxiLearn combiner), every ``config.update_every`` steps
    the combiner takes a step along the implicit-differentiation hypergradient of the
    main-task loss on the auxiliary set. Baselines (``learnable = False``) train without
    hypersteps; their own parameters, if any, join the model optimizer.

    Args:
        model: the model ``W``.
        loss_fn: ``loss_fn(model, batch) -> (B, T)`` per-sample, per-task losses
            (``(B, T, H, W)`` for pixel-wise combiners); column ``weighting.main_task`` is the main task.
        weighting: a :class:`~auxilearn_hpo.weighting.Weighting` (see :func:`~auxilearn_hpo.registry.make_weighting`).
        train_loader: training batches. aux_loader: auxiliary-set batches (main loss only).
        optimizer: the model's optimizer.
        config: the outer settings (:class:`LearnerConfig` or a dict).
        aux_optimizer: optimizer over ``weighting.parameters()``; built from ``config`` if omitted.
        scheduler: optional learning-rate scheduler of ``optimizer``, stepped once per epoch.
        shared_params: parameters shared by all tasks (gradient-based baselines); default all.

    Example:
        >>> from auxilearn_hpo.tasks import make_task
        >>> task = make_task("toy", seed=0)
        >>> learner = AuxiliaryLearner.from_task(task, "linear")
        >>> reports = list(learner.fit(2, eval_fn=lambda m: task.metric_fn(m, task.val_loader)))
        >>> [r.epoch for r in reports]
        [1, 2]
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], Tensor],
        weighting: Weighting,
        train_loader: DataLoader,
        aux_loader: DataLoader | None,
        optimizer: torch.optim.Optimizer,
        config: LearnerConfig | dict | None = None,
        *,
        aux_optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        shared_params: Sequence[Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
        if not isinstance(weighting, Weighting):
            raise TypeError(f"weighting must be an auxilearn_hpo Weighting (a combiner or a baseline), "
                            f"got {type(weighting).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if config is None:
            config = LearnerConfig()
        elif isinstance(config, dict):
            config = LearnerConfig.from_dict(config)  # unknown keys raise
        elif not isinstance(config, LearnerConfig):
            raise TypeError(f"config must be a LearnerConfig or a dict, got {type(config).__name__}")
        overrides = resolved_overrides(weighting)  # e.g. MAXL's one-step lookahead: Neumann, 0 terms
        if overrides:
            config = dataclasses.replace(config, **overrides)
        self.model, self.loss_fn, self.weighting, self.config = model, loss_fn, weighting, config
        self.train_loader, self.aux_loader = train_loader, aux_loader
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model_params = [p for p in model.parameters() if p.requires_grad]
        self.params = list(self.model_params)
        if not self.params:
            raise ValueError("model has no parameter that requires grad")
        if len(train_loader) == 0:
            raise ValueError("train_loader is empty")

        own = [p for p in weighting.parameters() if p.requires_grad]
        self._calibrate = type(weighting).calibrate is not Weighting.calibrate
        self.meta: MetaOptimizer | None = None
        self._owns_aux_optimizer = False
        if weighting.learnable:
            if aux_loader is None or len(aux_loader) == 0:
                raise ValueError("aux_loader is empty: a learned combiner needs an auxiliary set "
                                 "(split one off the training data with auxilearn_hpo.data.split_auxiliary)")
            if aux_optimizer is None:
                aux_optimizer = AUX_OPTIMIZERS[config.aux_optimizer](own, lr=0.1 if config.aux_lr == "auto" else config.aux_lr)
                self._owns_aux_optimizer = True
            try:
                self._aux_size = len(aux_loader.dataset)  # type: ignore[arg-type]
            except TypeError:  # an iterable dataset: one batch per hyperstep unless aux_samples says more
                self._aux_size = config.aux_samples
            self.meta = MetaOptimizer(aux_optimizer, solver=config.make_solver(), max_grad_norm=config.max_grad_norm,
                                      project=weighting.project)
            self.aux_params = own
        else:
            self.aux_params = []
            known = {id(p) for g in optimizer.param_groups for p in g["params"]}
            extra = [p for p in own if id(p) not in known]
            if extra:  # e.g. uncertainty weighting's log-variances train with the model
                optimizer.add_param_group({"params": extra})
            self.params = self.params + own
        self.shared_params = list(shared_params) if shared_params is not None else None
        self.implicit_params = self.model_params
        if config.implicit_params == "top" and self.meta is not None:
            if self.shared_params is None:
                raise ValueError("implicit_params='top' needs shared_params (the trunk shared by all tasks) "
                                 "to tell the heads apart")
            keep = {id(p) for p in self.model_params} - {id(p) for p in self.shared_params[:-2]}
            self.implicit_params = [p for p in self.model_params if id(p) in keep]
        # With config.fuses, a learned combiner with the plain backward: its hyperstep reuses the
        # training step's forward pass and gradient graph (see _fused_step).
        self._fusable = (config.fuses and self.meta is not None and getattr(weighting, "meta_gradient", None) is None
                         and (type(weighting).backward is Weighting.backward
                              or getattr(type(weighting), "backward_is_gradient", False)))
        self._aux_cache: list[Any] | None = None
        self._objective: LossFunctions | None = None  # the losses as functions of the parameters (compile)
        if config.compile is not False and (self.meta is None or getattr(weighting, "meta_gradient", None) is not None):
            raise ValueError("compile=True needs a weighting learned by IFT hypergradients "
                             f"(a combiner or a label generator), got {type(weighting).__name__}")
        self._interval = config.update_every  # adaptive hypersteps: the current interval,
        self._next_hyper = 0  # the step of the next hyperstep (0: not scheduled yet)
        self._largest_change = 0.0  # and the largest weight change a hyperstep made so far
        # the training batches before the current one that a hyperstep also evaluates (train_batches)
        self._recent: collections.deque = collections.deque(maxlen=config.train_batches - 1 if self.meta is not None else 0)
        self.epoch = 0
        self.step = 0
        self.history: list[EpochReport] = []

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_task(
        cls,
        task: Any,
        weighting: str | Weighting = "linear",
        config: LearnerConfig | dict | None = None,
        *,
        lr: float | None = None,
        weight_decay: float | None = None,
        weighting_options: dict | None = None,
    ) -> "AuxiliaryLearner":
        """A learner for a :class:`~auxilearn_hpo.task.Task` with Adam on the model.

        ``lr``, ``weight_decay`` and config fields not given default to ``task.defaults``
        (its ``learner`` settings under ``config``).
        """
        from .weightings.registry import make_weighting

        defaults = task.defaults
        if config is None or isinstance(config, dict):
            config = LearnerConfig.from_dict({**defaults.learner, **(config or {})})
        if not isinstance(weighting, Weighting):
            weighting = make_weighting(weighting, task.n_tasks, task.main_task, list(task.task_names),
                                       **{**generator_options(task, weighting), **(weighting_options or {})})
        lr = _finite("lr", lr if lr is not None else defaults.lr)
        weight_decay = _finite("weight_decay", weight_decay if weight_decay is not None else defaults.weight_decay,
                               strict=False)
        optimizer = torch.optim.Adam(task.model.parameters(), lr=lr, weight_decay=weight_decay)
        shared = task.shared_params(task.model) if task.shared_params is not None else None
        return cls(task.model, task.loss_fn, weighting, task.train_loader, task.aux_loader, optimizer, config,
                   shared_params=shared)

    # ------------------------------------------------------------------ training
    def aux_lr(self, epochs: int) -> float:
        """The auxiliary learning rate of a run of ``epochs`` epochs: ``config.aux_lr``, or with
        ``"auto"`` ``aux_travel / n`` for the ``n`` hypersteps such a run takes (at least 1)."""
        cfg = self.config
        if cfg.aux_lr != "auto":
            return float(cfg.aux_lr)
        n = (epochs * len(self.train_loader) - cfg.warmup_steps) // cfg.update_every
        return cfg.aux_travel / max(1, n)

    def _aux_batches(self) -> Iterator[Any]:
        if self._aux_cache is not None:  # the whole, unshuffled auxiliary set serves every hyperstep
            while True:
                yield from self._aux_cache
        cacheable = (isinstance(getattr(self.aux_loader, "sampler", None), SequentialSampler)
                     and self._aux_size <= max(self.config.aux_samples, 1))
        while True:
            empty, seen = True, []
            for batch in self.aux_loader:  # type: ignore[union-attr]
                empty = False
                if cacheable:
                    seen.append(batch)
                yield batch
            if empty:
                raise ValueError("aux_loader yielded no batch")
            if cacheable:  # same batches every pass: keep them and skip the loader from now on
                self._aux_cache = seen
                while True:
                    yield from seen

    def _losses(self, batch: Any) -> Tensor:
        losses = self.loss_fn(self.model, batch)
        self.weighting.check(losses)
        if not losses.requires_grad:
            raise ValueError("loss_fn(model, batch) returned losses without a graph to the model "
                             "(detached, or computed under torch.no_grad()): nothing would train")
        return losses

    def _aux_loss(self, aux_batches: Iterator[Any]) -> Tensor:
        """Mean main-task loss over auxiliary-set batches holding at least ``aux_samples`` samples."""
        main, total, count = self.weighting.main_task, None, 0
        while True:
            main_losses = self._losses(next(aux_batches))[:, main]
            part = main_losses.flatten(1).mean(1).sum() if main_losses.dim() > 1 else main_losses.sum()
            total = part if total is None else total + part
            count += main_losses.shape[0]
            if self._aux_enough(count):
                return total / max(count, 1)

    def _aux_enough(self, count: int) -> bool:
        """Whether ``count`` auxiliary-set samples make up one hyperstep's auxiliary-set loss."""
        return count >= self.config.aux_samples or count >= self._aux_size

    def _fused_step(self, losses: Tensor, aux_batches: Iterator[Any]) -> Tensor:
        """Training gradient and hyperstep from one forward pass: ``g_T = dL_T/dW`` is built once
        with a graph, serves the hypergradient's Hessian-vector products, and its values are
        the model's gradients (the hypergradient is taken at the weights before this step)."""
        assert self.meta is not None
        combined = self.weighting(losses)
        self._check_finite(combined)
        grads = torch.autograd.grad(combined, self.params, create_graph=True, allow_unused=True)
        by_id = {id(p): g for p, g in zip(self.params, grads)}
        self.meta.step(combined, self._aux_loss(aux_batches), self.implicit_params, self.aux_params,
                       train_grads=[by_id[id(p)] for p in self.implicit_params])
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else g.detach()
        return combined.detach()

    def _check_finite(self, combined: Tensor) -> None:
        combined = combined.detach()
        if not math.isfinite(float(combined)):
            raise FloatingPointError(
                f"training diverged at epoch {self.epoch + 1}, step {self.step + 1}: the combined training "
                f"loss is {float(combined)} (task weights {self.weighting.effective_weights()}); lower lr or aux_lr")

    def _hyperstep(self, batch: Any, aux_batches: Iterator[Any]) -> None:
        assert self.meta is not None
        meta_gradient = getattr(self.weighting, "meta_gradient", None)
        if meta_gradient is not None:  # a weighting with its own meta-gradient (gradient alignment)
            losses = self._losses(batch)
            params = self.shared_params if self.shared_params is not None else self.model_params
            grads = meta_gradient(losses, self._aux_loss(aux_batches), params)
            norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            self.meta.last_info = HypergradInfo("alignment", 0, math.nan, "aligned", norm, math.isfinite(norm))
            self.meta.apply(grads, self.aux_params, norm=norm)
            return
        if self.config.mixed == "difference":
            self._difference_hyperstep(batch, aux_batches)
            return
        if self.config.compile is not False:
            self._compiled_hyperstep(batch, aux_batches)
            return
        train_loss = self.weighting(self._losses(batch))
        val_loss = self._aux_loss(aux_batches)
        self.meta.step(train_loss, val_loss, self.implicit_params, self.aux_params)

    def _difference_hyperstep(self, batch: Any, aux_batches: Iterator[Any]) -> None:
        """A hyperstep whose mixed term is a central difference (``mixed="difference"``): every
        evaluation of the training batch replays the same random numbers (dropout masks) and
        leaves the model's buffers (batch-norm statistics) as they were."""
        assert self.meta is not None
        val_loss = self._aux_loss(aux_batches)
        devices = sorted({p.device for p in self.params if p.device.type == "cuda"}, key=str)
        rng = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]

        def train_loss() -> Tensor:
            torch.set_rng_state(rng[0])
            for d, state in zip(devices, rng[1]):
                torch.cuda.set_rng_state(state, d)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            return self.weighting(self.loss_fn(self.model, batch))

        try:
            self.meta.step_by_difference(train_loss, val_loss, self.implicit_params, self.aux_params)
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)

    def _compiled_hyperstep(self, batch: Any, aux_batches: Iterator[Any]) -> None:
        """A hyperstep as one compiled program (``compile``, see :mod:`auxilearn_hpo.functional`)."""
        assert self.meta is not None
        if self._objective is None:
            self._objective = LossFunctions(self.model, self.weighting, self.loss_fn, self.implicit_params,
                                            self.aux_params, self.weighting.main_task)
        val_batches, count = [], 0
        while True:
            b = next(aux_batches)
            val_batches.append(b)
            count += self._objective.batch_size(b)
            if self._aux_enough(count):
                break
        obj = self._objective
        self.meta.step_functional(obj.train_loss, obj.val_loss, obj.params(), obj.aux_params(), batch, val_batches,
                                  compile=self.config.compile)

    @property
    def _adaptive(self) -> bool:
        return self.config.max_update_every not in (None, self.config.update_every)

    def _hyperstep_due(self, step: int) -> bool:
        """Whether training step ``step`` (1-based) comes with a hyperstep."""
        cfg = self.config
        if not self._adaptive:
            return step > cfg.warmup_steps and step % cfg.update_every == 0
        if not self._next_hyper:  # the first, as with a fixed interval
            self._next_hyper = (cfg.warmup_steps // cfg.update_every + 1) * cfg.update_every
        return step >= self._next_hyper

    def _adapt(self, before: dict[str, float]) -> None:
        """Adaptive hypersteps: lengthen the interval once the weights settle, shorten it when they move.

        The change of a hyperstep is ``sum_t |w_t' - w_t| / sum_t w_t`` over the effective task
        weights (a weight shrinking towards 0 settles; one that keeps growing does not)."""
        after = self.weighting.effective_weights()
        change = sum(abs(after[k] - before[k]) for k in before) / max(sum(abs(v) for v in before.values()), 1e-12)
        self._largest_change = max(self._largest_change, change)
        settled = change < 0.5 * self._largest_change
        cfg = self.config
        self._interval = min(2 * self._interval, cfg.max_update_every) if settled else max(self._interval // 2, cfg.update_every)  # type: ignore[type-var]
        self._next_hyper = self.step + self._interval

    def fit(self, epochs: int, eval_fn: Callable[[nn.Module], float] | None = None) -> Iterator[EpochReport]:
        """Train until ``epochs`` epochs in total have run, yielding one :class:`EpochReport` per epoch.

        Resumes from :attr:`epoch` (after :meth:`load_state_dict`). ``epochs`` is the run's length
        for what depends on it (the weighting's :meth:`~auxilearn_hpo.weighting.Weighting.progress`,
        e.g. the linear combiner's ramp, and ``aux_lr="auto"``): to stop a run early and resume
        it later, iterate ``fit(total)`` and stop after the epoch wanted.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        w = self.weighting
        if self.meta is not None and self._owns_aux_optimizer:
            for group in self.meta.param_groups:
                group["lr"] = self.aux_lr(epochs)
        try:
            run_steps = epochs * len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:  # a loader without a length: the run's progress moves once per epoch
            run_steps = None
        while self.epoch < epochs:
            start = time.perf_counter()
            aux_batches = self._aux_batches() if self.meta is not None else iter(())
            sum_losses = torch.zeros(w.n_tasks, dtype=torch.float64)
            sum_train, n_batches = 0.0, 0
            hyper: list[Any] = []
            last_losses: Tensor | None = None
            self.model.train()
            for batch in self.train_loader:
                w.progress(min(self.step / run_steps, 1.0) if run_steps else self.epoch / epochs)
                losses = self._losses(batch)
                if self._calibrate and self.step == 0:
                    w.calibrate(losses.detach())
                self.optimizer.zero_grad(set_to_none=True)
                due = self.meta is not None and self._hyperstep_due(self.step + 1)
                skipped = self.meta.steps_skipped if self.meta is not None else 0
                before = w.effective_weights() if due and self._adaptive else None
                if due and self._fusable:
                    combined = self._fused_step(losses, aux_batches)
                else:
                    combined = w.backward(losses, self.params, self.shared_params)
                    self._check_finite(combined)
                self.optimizer.step()
                self.step += 1
                n_batches += 1
                per_task = losses.detach().flatten(2).mean(-1) if losses.dim() > 2 else losses.detach()
                sum_losses += per_task.mean(0).double().cpu()
                sum_train += float(combined)
                last_losses = losses.detach()
                if due:
                    if not self._fusable:  # a weighting with its own backward or meta-gradient
                        # the step's gradients are spent: freed, they do not add a copy of the
                        # parameters to the hyperstep's peak memory
                        self.optimizer.zero_grad(set_to_none=True)
                        self._hyperstep(concat_batches([*self._recent, batch]) if self._recent else batch,
                                        aux_batches)
                    if before is not None:
                        self._adapt(before)
                    if self.meta.steps_skipped == skipped:  # type: ignore[union-attr]
                        hyper.append(self.meta.last_info)  # type: ignore[union-attr]
                if self._recent.maxlen:
                    self._recent.append(batch)
            if self.scheduler is not None:
                self.scheduler.step()
            mean_losses = (sum_losses / max(n_batches, 1)).float()
            w.epoch_end(mean_losses)
            self.epoch += 1
            val = math.nan
            if eval_fn is not None:
                was_training = self.model.training
                self.model.eval()
                with torch.no_grad():
                    val = float(eval_fn(self.model))
                self.model.train(was_training)

            def mean(field: str) -> float:
                return float(sum(getattr(i, field) for i in hyper) / len(hyper)) if hyper else math.nan

            report = EpochReport(
                epoch=self.epoch,
                step=self.step,
                val_metric=val,
                train_loss=sum_train / max(n_batches, 1),
                task_losses=dict(zip(w.task_names, mean_losses.double().tolist())),
                weights=w.effective_weights(last_losses),
                coefficients=w.effective_coefficients() if hasattr(w, "effective_coefficients") else {},
                hypersteps=self.meta.steps_taken if self.meta else 0,
                hypersteps_skipped=self.meta.steps_skipped if self.meta else 0,
                hypergrad_norm=mean("norm"),
                solver_iterations=mean("iterations"),
                residual=mean("residual"),
                seconds=time.perf_counter() - start,
            )
            self.history.append(report)
            yield report

    # ------------------------------------------------------------------ checkpoints
    def _all_generators(self) -> list[torch.Generator]:
        gens = _generators(self.train_loader)
        if self.aux_loader is not None:
            gens += [g for g in _generators(self.aux_loader) if all(g is not h for h in gens)]
        return gens

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the same run bit for bit (at an epoch boundary).

        Holds only tensors, numbers, strings, lists and dicts (and, with ``train_batches > 1``,
        the last training batches as the loader made them), so it loads with
        ``torch.load(..., weights_only=True)``. Tensors are references, not copies.
        """
        return {
            "model": self.model.state_dict(),
            "weighting": self.weighting.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta": self.meta.state_dict() if self.meta is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "schedule": {"interval": self._interval, "next": self._next_hyper, "largest_change": self._largest_change},
            "recent_batches": list(self._recent),
            "history": [r.to_dict() for r in self.history],
            "rng": {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in self._all_generators()]},
            "config": dataclasses.asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. The current :attr:`config` wins over the saved one, so
        settings changed between runs (Population Based Training) take effect."""
        self.model.load_state_dict(state["model"])
        self.weighting.load_state_dict(state["weighting"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["meta"] is None) != (self.meta is None):
            raise ValueError("checkpoint and learner disagree on whether the weighting is learned by hypergradients")
        if self.meta is not None:
            self.meta.load_state_dict(state["meta"])
            if self._owns_aux_optimizer and self.config.aux_lr != "auto":  # "auto" is set by fit()
                for group in self.meta.param_groups:
                    group["lr"] = self.config.aux_lr
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        schedule = state.get("schedule") or {}
        self._interval = int(schedule.get("interval", self.config.update_every))
        self._next_hyper = int(schedule.get("next", 0))
        self._largest_change = float(schedule.get("largest_change", 0.0))
        self._recent.clear()
        self._recent.extend(state.get("recent_batches", [])[-self._recent.maxlen:] if self._recent.maxlen else [])
        self.history = [EpochReport.from_dict(r) for r in state["history"]]
        torch.set_rng_state(state["rng"]["torch"])
        gens = self._all_generators()
        if len(gens) != len(state["rng"]["generators"]):
            raise ValueError("checkpoint's data loaders used a different number of random generators")
        for g, s in zip(gens, state["rng"]["generators"]):
            g.set_state(s)
