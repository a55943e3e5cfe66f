"""config -> task -> learner -> reports: the one trial both Ray Tune and Optuna drive.

A trial config is a flat dict of outer settings (:data:`OUTER_SETTINGS`); a task is a
benchmark name or a user's factory ``config -> Task``. Neither adapter trains anything itself:
both iterate :meth:`Trial.reports` and forward each report to their framework.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Callable, Iterator, Union

import torch

from auxilearn_hpo.learner import AuxiliaryLearner, LearnerConfig
from auxilearn_hpo.records import SCORE_EPOCHS, selection_score
from auxilearn_hpo.refit import chunk_loaders, choose_gain, final_loader, fixed_weighting, fold_tasks, mean_log_weights
from auxilearn_hpo.report import EpochReport
from auxilearn_hpo.task import Task
from auxilearn_hpo.weightings import (GENERATOR_SETTINGS, TASK_SETTINGS, FixedWeights, GradientAlignment, LinearCombiner,
                                      generator_options, make_weighting)

from .space import CONDITIONAL_OPTIONS

__all__ = ["Trial", "TaskSpec", "OUTER_SETTINGS", "TRIAL_DEFAULTS", "FINAL_DATA", "resolve_task", "check_config",
           "warm_key"]

#: A benchmark name (see :func:`auxilearn_hpo.tasks.names`) or a factory ``config -> Task``.
TaskSpec = Union[str, Callable[[dict], Task]]

#: Settings of a trial besides :class:`~auxilearn_hpo.learner.LearnerConfig`'s fields.
TRIAL_DEFAULTS: dict[str, Any] = {
    "weighting": "linear",  # a learned weighting or a baseline (auxilearn_hpo.registry)
    "epochs": None,  # None: the task's default
    "lr": None,  # model learning rate (Adam); None: the task's default
    "weight_decay": None,  # Adam's weight decay on the model; None: the task's default (or 0)
    "seed": 0,  # seeds the task's data split, model and loaders
    "weighting_options": None,  # dict of keyword options for the weighting
    "task_options": None,  # dict of keyword options for a named benchmark
    **GENERATOR_SETTINGS,  # learned auxiliary labels: psi, generator_width / _depth, aux_weight
    "warm_start": False,  # start the learned weighting from the best finished trial's (the adapter finds it)
    "hold_gain": None,  # with a warm start: hold those weights fixed, the auxiliaries times this gain
    "final_data": "all",  # "all": the final model trains on train ∪ auxiliary set; "train": on the split
    "folds": 4,  # refit: per-task weights cross-fitted over this many auxiliary sets (1: the task's own only)
    "refit_gains": (0.0, 1.0, 3.0, 10.0),  # refit: auxiliary weights times each, the best by validation kept
    "refit_margin": 1.0,  # refit: keep a gain > 0 only if it beats gain 0 by more than this many paired s.e.
}

#: Validation parts for the refit's paired comparison of gains (:func:`~auxilearn_hpo.refit.choose_gain`).
VALIDATION_PARTS = 10

#: Values of the ``final_data`` setting.
FINAL_DATA = ("all", "train")

#: The learner's (hyperstep) settings, :class:`LearnerConfig`'s fields.
_LEARNER = frozenset(f.name for f in dataclasses.fields(LearnerConfig))

#: Every key a trial config may hold.
OUTER_SETTINGS: frozenset[str] = frozenset(TRIAL_DEFAULTS) | _LEARNER


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys (naming them), fill defaults; returns a new dict."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of outer settings, got {type(config).__name__}")
    unknown = sorted(set(config) - OUTER_SETTINGS)
    if unknown:
        raise ValueError(f"unknown outer setting(s) {unknown}; known settings: {sorted(OUTER_SETTINGS)}")
    full = {**TRIAL_DEFAULTS, **config}
    gain = full["hold_gain"]
    if gain is not None and (isinstance(gain, bool) or not isinstance(gain, (int, float))
                             or not math.isfinite(gain) or gain <= 0):
        raise ValueError(f"hold_gain must be None or a finite number > 0, got {gain!r}")
    if full["final_data"] not in FINAL_DATA:
        raise ValueError(f"final_data must be one of {list(FINAL_DATA)}, got {full['final_data']!r}")
    folds = full["folds"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be an int >= 1, got {folds!r}")
    gains = full["refit_gains"]
    if (not isinstance(gains, (list, tuple)) or not gains
            or any(isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0
                   for g in gains)):
        raise ValueError(f"refit_gains must be a non-empty list of finite numbers >= 0, got {gains!r}")
    full["refit_gains"] = tuple(float(g) for g in gains)
    margin = full["refit_margin"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0 or not math.isfinite(margin):
        raise ValueError(f"refit_margin must be a finite number >= 0, got {margin!r}")
    return full


def resolve_task(task: TaskSpec, config: dict[str, Any]) -> Task:
    """Build the task of one trial from a benchmark name or a user factory."""
    if isinstance(task, str):
        from auxilearn_hpo.tasks import make_task

        # learned-label settings shape the benchmark (a benchmark without a generator rejects them)
        options = {k: config[k] for k in TASK_SETTINGS if config.get(k) is not None}
        return make_task(task, seed=int(config.get("seed", 0)), **{**options, **(config.get("task_options") or {})})
    if callable(task):
        built = task(config)
        if not isinstance(built, Task):
            raise TypeError(f"the task factory must return an auxilearn_hpo.Task, got {type(built).__name__}")
        return built
    raise TypeError(f"task must be a benchmark name or a callable config -> Task, got {type(task).__name__}")


def _weighting_options(config: dict[str, Any]) -> dict[str, Any] | None:
    """``config["weighting_options"]`` without the :data:`~.space.CONDITIONAL_OPTIONS` that the
    config's weighting does not take (a shared search space draws them for every weighting)."""
    options = config.get("weighting_options")
    if not isinstance(options, dict):
        return options
    name = config.get("weighting")
    return {k: v for k, v in options.items() if k not in CONDITIONAL_OPTIONS or name in CONDITIONAL_OPTIONS[k]}


# Options that only set where learned parameters start: trials differing in them can share weights.
_INIT_OPTIONS = frozenset({"init", "init_total"})


def warm_key(config: dict[str, Any]) -> str:
    """Which trials' learned weightings fit this config's: the weighting and its options except
    those that only set the starting point (``init``, ``init_total``). Two configs with the same
    key build weightings with the same parameters, shapes and meaning, so one's state loads into
    the other's (log-space and plain weights, say, never mix)."""
    import json

    full = check_config(dict(config))
    options = {k: v for k, v in (_weighting_options(full) or {}).items() if k not in _INIT_OPTIONS}
    return json.dumps({"weighting": full["weighting"], "options": options}, sort_keys=True, default=str)


class Trial:
    """One trial: the task, its learner and the number of epochs, built from a config.

    Attributes:
        config: the full config (defaults filled in). task: the :class:`~auxilearn_hpo.task.Task`.
        learner: the :class:`~auxilearn_hpo.learner.AuxiliaryLearner`. epochs: epochs to run.
        val_source: ``"validation"`` when the task has validation data of its own (what
            ``val_metric`` is measured on), ``"auxiliary"`` when its ``val_loader`` is ``None``
            and the auxiliary set doubles as validation (selection then reuses the data the
            weights were fitted to: say so next to any result).
        warm_started: whether :meth:`warm_start` loaded another trial's weighting.
        held: whether :meth:`warm_start` replaced the learned weighting by the loaded weights
            held fixed (``hold_gain``); such a trial learns nothing and stores no weighting.

    ``final_data="all"`` (the default): every final model trains on all labelled training data,
    train ∪ auxiliary set (:func:`~auxilearn_hpo.refit.final_loader`). A weighting that learns
    nothing trains on it directly; a learned one learns on the split, then :meth:`refit` trains
    a fresh model (the task's model at its initial state) from scratch on all of it with the
    learned weighting held fixed, and the last report's ``test_metric`` is the refit's (the
    learning run's is ``learn_test_metric``), as is ``refit_score``, the trial's score. Per-task
    weights are cross-fitted over ``folds`` auxiliary sets first, and refit at every gain of
    ``refit_gains``, the best by validation kept (:meth:`refit`).
    ``final_data="train"``: the paper's protocol, every model trains on the split.
    """

    def __init__(self, task: TaskSpec, config: dict[str, Any]) -> None:
        self.config = check_config(config)
        self.task = resolve_task(task, self.config)
        self._initial_model = copy.deepcopy(self.task.model.state_dict())  # what a refit starts from
        self.warm_started = self.held = False
        self.val_source = "validation" if self.task.val_loader is not None else "auxiliary"
        defaults = self.task.defaults
        self.lr = float(self.config["lr"] if self.config["lr"] is not None else defaults.lr)
        self.epochs = int(self.config["epochs"] if self.config["epochs"] is not None else defaults.epochs)
        weighting_options = _weighting_options(self.config)
        if self.config["aux_weight"] is not None:  # the learned-label weightings' loss weight
            weighting_options = {"aux_weight": self.config["aux_weight"], **(weighting_options or {})}
        self._options = weighting_options
        self.learner = self._build(self.config["weighting"], weighting_options)
        self._refitted: AuxiliaryLearner | None = None
        self.folds_used, self.refit_gain = 1, math.nan
        self.refit_scores: dict[float, float] = {}  # gain -> mean validation score (higher is better)
        self.refit_score = math.nan  # the final (refit) model's score: selection_score of its last epochs
        self._parts: list[Any] | None = None

    def _build(self, weighting: str, weighting_options: dict[str, Any] | None, held: bool = False,
               task: Task | None = None) -> AuxiliaryLearner:
        """The learner (on ``task``, default :attr:`task`); a held trial's takes no hyperstep, so
        it leaves out the config's :class:`LearnerConfig` (hyperstep) settings."""
        own = {k: v for k, v in self.config.items() if v is not None and not (held and k in _LEARNER)}
        task = task or self.task
        settings = {**task.defaults.learner, **own}
        with torch.random.fork_rng():  # the weighting's initialisation is seeded too
            torch.manual_seed(int(self.config["seed"]))
            built = make_weighting(weighting, task.n_tasks, task.main_task, list(task.task_names),
                                   **{**generator_options(task, weighting), **(weighting_options or {})})
            if not built.learnable and self.config["final_data"] == "all":  # trains on all labelled data
                task = dataclasses.replace(task, train_loader=final_loader(task))
            return AuxiliaryLearner.from_task(
                task, built, LearnerConfig.from_dict(settings, ignore=set(TRIAL_DEFAULTS)), lr=self.lr,
                weight_decay=self.config["weight_decay"],
            )

    @property
    def refits(self) -> bool:
        """Whether the final model is a refit: ``final_data="all"`` and a learned weighting."""
        return self.config["final_data"] == "all" and self.learner.meta is not None

    def _fresh_model(self) -> torch.nn.Module:
        model = copy.deepcopy(self.task.model)
        model.load_state_dict(self._initial_model)
        return model

    def cross_fit(self) -> dict[str, float] | None:
        """Per-task weights learned on ``folds`` auxiliary sets, averaged in log space
        (:func:`~auxilearn_hpo.refit.mean_log_weights`): the learning run's (the task's own
        auxiliary set) and ``folds - 1`` more learners, each from the model's initial state on
        train ∪ auxiliary set less a held-out fold of labelled training examples
        (:func:`~auxilearn_hpo.refit.fold_tasks`). ``None`` for a weighting without per-task
        weights (a nonlinear combiner, a label generator), which refits as it learned."""
        weighting = self.learner.weighting
        if not isinstance(weighting, (LinearCombiner, GradientAlignment)):
            return None
        main = self.task.task_names[self.task.main_task]
        learned = [weighting.effective_weights()]
        folds = fold_tasks(dataclasses.replace(self.task, model=self._fresh_model()), self.config["folds"],
                           seed=int(self.config["seed"]))
        for fold in folds[1:]:
            fold = dataclasses.replace(fold, model=self._fresh_model())
            learner = self._build(self.config["weighting"], self._options, task=fold)
            for _ in learner.fit(self.epochs):
                pass
            learned.append(learner.weighting.effective_weights())
        self.folds_used = len(learned)
        return mean_log_weights(learned, main)

    def refit(self) -> AuxiliaryLearner:
        """Train the final model: a copy of the task's model at its initial state, from scratch, for
        :attr:`epochs` epochs on train ∪ auxiliary set with what was learned held fixed (the
        model's optimizer and settings as the learning run's). Per-task weights are
        :meth:`cross_fit`; with validation data, one refit per ``refit_gains`` entry (every
        auxiliary weight times it; gain 0 is single-task on all labelled data) and the best by
        the validation metric is kept (``refit_gain``; the first of equals) unless its paired
        advantage over gain 0 on :data:`VALIDATION_PARTS` parts of the validation data is at most
        ``refit_margin`` standard errors (:func:`~auxilearn_hpo.refit.choose_gain`); without validation
        data, the first gain that is not 0. Other weightings refit with :func:`~auxilearn_hpo.refit.fixed_weighting`.
        Sets :attr:`refit_score`, the kept refit's validation score (the mean validation metric of
        its last epochs, as a learning run's), which is the trial's score: the learning run's
        would rank a final model by a model trained on less data. Sets and returns :attr:`final`."""
        task = self.task
        weights = self.cross_fit()
        if weights is None:
            candidates = [(math.nan, fixed_weighting(self.learner.weighting, task.label_generator))]
        else:
            main = task.task_names[task.main_task]
            gains = self.config["refit_gains"]
            if task.val_loader is None:  # nothing to choose on: the learned weights as they are
                gains = tuple(g for g in gains if g > 0)[:1] or (1.0,)
            candidates = [(g, FixedWeights(task.n_tasks, task.main_task, list(task.task_names),
                                           weights={k: (w if k == main else w * g) for k, w in weights.items()}))
                          for g in gains]
        scores: dict[float, list[float]] = {}
        kept: dict[float, AuxiliaryLearner] = {}  # gain 0's and the best mean's: the only ones choose_gain can pick
        last: dict[float, list[float]] = {}  # gain -> validation metric of its last SCORE_EPOCHS epochs
        for gain, weighting in candidates:
            refit_task = dataclasses.replace(task, model=self._fresh_model(), train_loader=final_loader(task))
            with torch.random.fork_rng():
                torch.manual_seed(int(self.config["seed"]))
                learner = AuxiliaryLearner.from_task(refit_task, weighting, lr=self.lr,
                                                     weight_decay=self.config["weight_decay"])
            last[gain] = [self._metric(learner.model, self._val_loader) for report in learner.fit(self.epochs)
                          if report.epoch > self.epochs - SCORE_EPOCHS]
            kept[gain] = learner
            if len(candidates) == 1:
                break
            scores[gain] = self._validation_scores(learner.model)
            leader = choose_gain(scores, 0.0)
            kept = {g: m for g, m in kept.items() if g == 0.0 or g == leader}
        chosen = next(iter(kept)) if len(candidates) == 1 else choose_gain(scores, self.config["refit_margin"])
        self.refit_scores = {g: sum(v) / len(v) for g, v in scores.items()}
        self.refit_gain = chosen
        self.refit_score = selection_score(last[chosen])
        self._refitted = kept[chosen]
        return self._refitted

    @property
    def final(self) -> AuxiliaryLearner:
        """The learner of the final model: the refit once :meth:`refit` ran, else :attr:`learner`."""
        return self._refitted if self._refitted is not None else self.learner

    @property
    def metric_name(self) -> str:
        return self.task.metric_name

    @property
    def mode(self) -> str:
        return self.task.mode

    def state_dict(self) -> dict[str, Any]:
        """The learner's state; a held trial's (see :meth:`warm_start`) also holds its fixed
        weights under ``"held_weights"``, so that it resumes as it ran."""
        state = self.learner.state_dict()
        if self.held:
            state["held_weights"] = self.learner.weighting.effective_weights()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint; this trial's config (possibly perturbed) takes effect."""
        state = dict(state)
        held = state.pop("held_weights", None)
        if held is not None:
            self.learner = self._build("fixed", {"weights": dict(held)}, held=True)
            self.held = True
        self.learner.load_state_dict(state)
        for group in self.learner.optimizer.param_groups[:1]:
            group["lr"] = self.lr

    def weighting_state(self) -> dict[str, Any]:
        """The learned weighting's parameters and buffers as plain nested lists (JSON-safe, for
        Optuna's user attributes) under ``"state"``, with :func:`warm_key` under ``"key"`` and,
        for per-task weights (``"linear"``), ``{task: weight}`` of the raw losses under
        ``"weights"``; ``{}`` for a weighting not learned (a held trial's included)."""
        if self.learner.meta is None:
            return {}
        state = {k: v.detach().cpu().tolist() for k, v in self.learner.weighting.state_dict().items()}
        stored: dict[str, Any] = {"key": warm_key(self.config), "state": state}
        if isinstance(self.learner.weighting, LinearCombiner):  # per-task weights, for held trials
            stored["weights"] = self.learner.weighting.effective_weights()
        return stored

    def fits(self, stored: Any) -> bool:
        """Whether ``stored`` (another trial's :meth:`weighting_state`) can warm-start this
        trial: one with ``hold_gain`` takes any stored per-task weights; one that learns on
        needs the same :func:`warm_key` (the same parameters, shapes and meaning)."""
        if not isinstance(stored, dict):
            return False
        if self.config["hold_gain"] is not None:
            return isinstance(stored.get("weights"), dict)
        return stored.get("key") == warm_key(self.config)

    def warm_start(self, stored: dict[str, Any]) -> bool:
        """Start from ``stored`` (another trial's :meth:`weighting_state`, see :meth:`fits`);
        returns whether it was taken, only before training. The model and optimizers start fresh.

        Without ``hold_gain`` the learned weighting loads ``stored``'s parameters (tensor shapes
        must match) and learns on. With ``hold_gain`` set, the trial learns nothing: whatever
        weighting its config names, it trains with ``stored``'s per-task weights held fixed
        (``"fixed"``, no hypersteps), every auxiliary weight times ``hold_gain``, the main weight
        as stored. The source trial's hypergradients chose which auxiliaries help; the outer
        search then sets their overall scale, which a trial's greedy hypergradients leave too
        small on ``scaled_regression`` (``docs/experiments.md``)."""
        if self.learner.epoch or self.held or not self.fits(stored):
            return False
        if self.config["hold_gain"] is not None:
            self._hold(stored["weights"], float(self.config["hold_gain"]))
            self.warm_started = True
            return True
        if self.learner.meta is None:
            return False
        own = self.learner.weighting.state_dict()
        values = stored.get("state") or {}
        if set(values) != set(own):
            return False
        loaded = {}
        for name, tensor in own.items():
            value = torch.as_tensor(values[name], dtype=tensor.dtype)
            if value.shape != tensor.shape:
                return False
            loaded[name] = value
        self.learner.weighting.load_state_dict(loaded)
        self.warm_started = True
        return True

    def _hold(self, weights: dict[str, float], gain: float) -> None:
        """Replace the learner by one with ``weights`` held fixed, the auxiliaries times ``gain``."""
        main = self.task.task_names[self.task.main_task]
        held = {name: float(w) if name == main else float(w) * gain for name, w in weights.items()}
        self.learner = self._build("fixed", {"weights": held}, held=True)
        self.held = True

    def held_signature(self) -> str | None:
        """What alone decides a held trial's training, as a string (``None`` unless held): its
        fixed weights and the settings outside the learner's hyperstep settings (seed, epochs,
        ``lr``, ...). Two held trials with the same signature train identically."""
        if not self.held:
            return None
        import json

        ignored = _LEARNER | {"weighting", "weighting_options", "warm_start", "hold_gain"}
        settings = {k: v for k, v in self.config.items() if k not in ignored}
        weights = {k: float(v) for k, v in self.learner.weighting.effective_weights().items()}
        return json.dumps({"weights": weights, "settings": settings}, sort_keys=True, default=repr)

    def test_metric(self, learner: AuxiliaryLearner | None = None) -> float:
        """The main-task metric on the test set of :attr:`final`'s model, or ``learner``'s (only
        ever called after training)."""
        return self._metric((learner or self.final).model, self.task.test_loader)

    def _validation_scores(self, model: torch.nn.Module) -> list[float]:
        """``model``'s validation metric on each of :data:`VALIDATION_PARTS` random parts of the
        validation data (higher is better); on the whole set, one score, when it cannot be split
        or the task's ``metric_fn`` cannot take a loader over a part (then no margin applies)."""
        sign = 1.0 if self.task.mode == "max" else -1.0
        if self._parts is None:
            self._parts = chunk_loaders(self.task.val_loader, VALIDATION_PARTS, seed=int(self.config["seed"])) or []
        if self._parts:
            try:
                return [sign * self._metric(model, part) for part in self._parts]
            except Exception:  # a metric_fn written for the task's own loader only: choose on the whole set
                self._parts = []
        return [sign * self._metric(model, self.task.val_loader)]

    @property
    def _val_loader(self) -> Any:
        """What ``val_metric`` is measured on: the validation data, or the auxiliary set without it."""
        return self.task.val_loader if self.task.val_loader is not None else self.task.aux_loader

    def _metric(self, model: torch.nn.Module, loader: Any) -> float:
        """The task's main-task metric of ``model`` on ``loader``, in eval mode without gradients."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            value = float(self.task.metric_fn(model, loader))
        model.train(was_training)
        return value

    def reports(self) -> Iterator[EpochReport]:
        """The learner's per-epoch reports with ``higher_is_better`` (from the task's mode, so that
        tables know how to rank ``val_metric``) and, at the last epoch only, ``test_metric`` of the
        final model (after :meth:`refit` when :attr:`refits`; the learning run's own test metric is
        then ``learn_test_metric``)."""
        task = self.task
        for report in self.learner.fit(self.epochs, eval_fn=lambda m: task.metric_fn(m, self._val_loader)):
            extra: dict[str, float] = {}
            if report.epoch >= self.epochs:
                extra["test_metric"] = self.test_metric(self.learner)
                if self.refits:
                    extra["learn_test_metric"] = extra["test_metric"]
                    extra["test_metric"] = self.test_metric(self.refit())
                    extra["refit_gain"] = self.refit_gain
                    extra["refit_score"] = self.refit_score
            yield dataclasses.replace(report, **extra, higher_is_better=1.0 if task.mode == "max" else 0.0)
