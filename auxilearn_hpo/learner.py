"""The bilevel training loop: one object that Ray Tune, Optuna and the CLI all drive."""
from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .data import concat_batches
from .hypergrad.functional import LossFunctions
from .hyperstep import Hypersteps
from .learner_config import AUX_OPTIMIZERS, LearnerConfig, finite
from .optim import MetaOptimizer
from .report import EpochReport
from .weightings.base import Weighting
from .weightings.label_generation import generator_options, resolved_overrides
from .weightings.registry import make_weighting

__all__ = ["LearnerConfig", "AuxiliaryLearner", "EpochReport", "AUX_OPTIMIZERS"]



def _generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader draws its order from."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


class AuxiliaryLearner(Hypersteps):
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
        weighting: a :class:`~auxilearn_hpo.weightings.Weighting` (see :func:`~auxilearn_hpo.weightings.make_weighting`).
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
                aux_optimizer = AUX_OPTIMIZERS[config.aux_optimizer](own, lr=config.aux_lr)
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
        defaults = task.defaults
        if config is None or isinstance(config, dict):
            config = LearnerConfig.from_dict({**defaults.learner, **(config or {})})
        if not isinstance(weighting, Weighting):
            weighting = make_weighting(weighting, task.n_tasks, task.main_task, list(task.task_names),
                                       **{**generator_options(task, weighting), **(weighting_options or {})})
        lr = finite("lr", lr if lr is not None else defaults.lr)
        weight_decay = finite("weight_decay", weight_decay if weight_decay is not None else defaults.weight_decay,
                               strict=False)
        optimizer = torch.optim.Adam(task.model.parameters(), lr=lr, weight_decay=weight_decay)
        shared = task.shared_params(task.model) if task.shared_params is not None else None
        return cls(task.model, task.loss_fn, weighting, task.train_loader, task.aux_loader, optimizer, config,
                   shared_params=shared)


    # ------------------------------------------------------------------ training
    def _hyperstep_due(self, step: int) -> bool:
        """Whether training step ``step`` (1-based) comes with a hyperstep."""
        return step > self.config.warmup_steps and step % self.config.update_every == 0

    def fit(self, epochs: int, eval_fn: Callable[[nn.Module], float] | None = None) -> Iterator[EpochReport]:
        """Train until ``epochs`` epochs in total have run, yielding one :class:`EpochReport` per epoch.

        Resumes from :attr:`epoch` (after :meth:`load_state_dict`). ``epochs`` is the run's length
        for what depends on it (the weighting's :meth:`~auxilearn_hpo.weightings.Weighting.progress`,
        e.g. the linear combiner's ramp): to stop a run early and resume
        it later, iterate ``fit(total)`` and stop after the epoch wanted.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        w = self.weighting
        if self.meta is not None and self._owns_aux_optimizer:  # the current config's aux_lr wins
            for group in self.meta.param_groups:
                group["lr"] = float(self.config.aux_lr)
        try:
            run_steps = epochs * len(self.train_loader)  # type: ignore[arg-type]
        except TypeError:  # a loader without a length: the run's progress moves once per epoch
            run_steps = None
        while self.epoch < epochs:
            start = time.perf_counter()
            aux_batches = self.aux_batches() if self.meta is not None else iter(())
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
            if self._owns_aux_optimizer:
                for group in self.meta.param_groups:
                    group["lr"] = self.config.aux_lr
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._recent.clear()
        self._recent.extend(state.get("recent_batches", [])[-self._recent.maxlen:] if self._recent.maxlen else [])
        self.history = [EpochReport.from_dict(r) for r in state["history"]]
        torch.set_rng_state(state["rng"]["torch"])
        gens = self._all_generators()
        if len(gens) != len(state["rng"]["generators"]):
            raise ValueError("checkpoint's data loaders used a different number of random generators")
        for g, s in zip(gens, state["rng"]["generators"]):
            g.set_state(s)
