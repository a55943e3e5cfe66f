"""Ray Tune adapter: each Tune trial drives one :class:`~auxilearn_hpo.integrations.trial.Trial`.

AuxiLearn learns the auxiliary-loss weights *inside* a trial by implicit differentiation; Ray
Tune searches the outer settings around it (:data:`~auxilearn_hpo.integrations.trial.OUTER_SETTINGS`:
hyperstep frequency, solver, weighting, learning rates, ...). This module is a recipe, not a
trainer: :func:`trainable` iterates :meth:`Trial.reports` and forwards every epoch's report to
``tune.report`` together with a checkpoint, so that

* schedulers such as ASHA stop bad trials after any epoch,
* ``tune.FailureConfig(max_failures=...)`` retries a crashed trial from its last epoch,
* Population Based Training's perturbed config takes effect after the restore (the learning
  rates of the new config are re-applied by :meth:`Trial.load_state_dict`),
* ``tune.Tuner.restore`` finishes an interrupted experiment.

Importing this module never fails; the first call of a function that needs Ray raises an
``ImportError`` naming ``pip install auxilearn-hpo[ray]``.

Example (a user's own task factory; see ``examples/ray_tune_own_model.py``)::

    from ray import tune
    from auxilearn_hpo.integrations import ray_tune

    ray_tune.init_local()
    name = ray_tune.register(task=my_factory)          # my_factory(config) -> auxilearn_hpo.Task
    tuner = tune.Tuner(name, param_space={**ray_tune.search_space(), "epochs": 20},
                       tune_config=tune.TuneConfig(metric="val_metric", mode="min", num_samples=8))
    grid = tuner.fit()

    # or all in one, with ASHA, checkpoints, retries and resume:
    frame, grid = ray_tune.run(my_factory, num_samples=8, fixed={"epochs": 20})

Notes:
    Trials run in their own working directory (Ray changes into it), so a task factory must
    use absolute paths for any file it reads. A user factory is pickled to the workers: define
    it at module level (or make it an instance of a module-level class).
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from auxilearn_hpo.columns import is_null
from auxilearn_hpo.records import TrialRecord, flatten
from auxilearn_hpo.report import EpochReport

from .space import PBT_MUTABLE, SPECS, Categorical, LogUniform, default_point, default_space, flat_params, to_tune
from .trial import TaskSpec, Trial, check_config, resolve_task

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from ray.tune import ResultGrid

__all__ = [
    "CHECKPOINT_FILE",
    "WARM_FILE",
    "trainable",
    "register",
    "search_space",
    "run",
    "to_frame",
    "load_state",
    "checkpoint_history",
    "init_local",
    "quiet_worker",
    "connect",
    "shutdown",
    "random_search", "start_point",
    "check_experiment",
]

#: File name of the learner's state inside every Tune checkpoint directory.
CHECKPOINT_FILE = "learner.pt"

#: Environment for quiet local runs, set (unless already set) before ``ray.init``.
QUIET_ENV: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",  # else a token-auth warning and ~/.ray/auth_token
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with RunConfig(verbose=0): no progress tables
}

_INSTALL_HINT = "pip install auxilearn-hpo[ray]"


# ---------------------------------------------------------------------- deferred imports
def _import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.ray_tune needs Ray Tune (module 'ray' could not be imported: {err}); "
            f"install it with `{_INSTALL_HINT}`"
        ) from err
    return ray


def _import_tune() -> Any:
    try:
        from ray import tune
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.ray_tune needs Ray Tune (module 'ray.tune' could not be imported: {err}); "
            f"install it with `{_INSTALL_HINT}`"
        ) from err
    return tune


# ---------------------------------------------------------------------- the trainable
def trainable(config: dict[str, Any], task: TaskSpec = "toy") -> None:
    """Ray Tune function trainable: train one :class:`Trial`, reporting and checkpointing each epoch.

    Builds ``Trial(task, config)``; if Tune hands back a checkpoint (a retry after a failure,
    ``Tuner.restore``, a PBT exploit), loads :data:`CHECKPOINT_FILE` from it and continues from
    that epoch, with this trial's (possibly perturbed) config in effect. Every epoch calls
    ``tune.report(metrics, checkpoint=...)`` where ``metrics`` is the epoch's
    :meth:`~auxilearn_hpo.report.EpochReport.flat` (``weights/<task>``, ``task_losses/<task>``)
    plus

    * ``score``: :func:`~auxilearn_hpo.records.selection_score` of the validation metrics so far
      (the mean of the last epochs), the one definition of best (:func:`run` ranks by it);
    * ``cpu_s``: process CPU-seconds of this epoch in this trial (``time.process_time``: building
      the trial or restoring it, training, evaluation), **without** writing checkpoints;
    * ``val_source``: ``"validation"``, or ``"auxiliary"`` when the auxiliary set doubles as
      validation;
    * ``warm_started`` / ``held``: 1.0 when the trial started from another trial's weights /
      holds them fixed (``hold_gain``, below), else 0.0;

    and the checkpoint holds the learner's full state, so ``training_iteration`` equals
    ``epoch``. A trial whose ``val_metric`` or weights become NaN or infinite reports that
    epoch and stops (training on would waste the budget); :mod:`auxilearn_hpo.results` labels
    it ``failed``, as Optuna does.

    Warm starts (``config["warm_start"]``): a new trial (no checkpoint of its own) first loads
    the learned weighting of the best finished trial of the same experiment (by ``score``) whose
    weighting has the same parametrisation; every trial that ends writes its weighting's state
    and score to :data:`WARM_FILE` in its trial folder for this purpose (the experiment's
    folder must be on a file system the trials share). With ``hold_gain`` set, a warm-started
    trial trains with the best finished ``"linear"`` trial's per-task weights held fixed, the
    auxiliaries times ``hold_gain`` (:meth:`~auxilearn_hpo.integrations.trial.Trial.warm_start`),
    and writes no weighting file.

    Args:
        config: the trial's outer settings (keys of
            :data:`~auxilearn_hpo.integrations.trial.OUTER_SETTINGS`).
        task: a benchmark name or a picklable factory ``config -> auxilearn_hpo.Task``.
            Bind it with :func:`register` or ``tune.with_parameters(trainable, task=...)``.
    """
    tune = _import_tune()
    import time

    import torch

    from auxilearn_hpo.records import selection_score

    mark = time.process_time()
    trial = Trial(task, config)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        trial.load_state_dict(load_state(checkpoint))
    elif trial.config["warm_start"]:
        stored = _warm_source(trial)
        if stored is not None:
            trial.warm_start(stored)
    values = [r.val_metric for r in trial.learner.history]
    for report in trial.reports():
        values.append(report.val_metric)
        metrics = {**report.flat(), "score": selection_score(values), "val_source": trial.val_source,
                   "warm_started": float(trial.warm_started), "held": float(trial.held)}
        metrics["cpu_s"] = time.process_time() - mark
        # Tune copies the directory into the trial's storage before report() returns.
        with tempfile.TemporaryDirectory(prefix="auxilearn-ckpt-") as tmp:
            torch.save(trial.state_dict(), os.path.join(tmp, CHECKPOINT_FILE))
            if report.epoch >= trial.epochs or report.non_finite():
                _write_warm(trial, metrics["score"])
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        mark = time.process_time()  # checkpoints are not counted in cpu_s
        if report.non_finite():
            return


#: File a finished trial of :func:`trainable` writes in its trial folder for warm starts.
WARM_FILE = "weighting.json"


def _trial_dir() -> Path | None:
    try:
        from ray import tune

        return Path(tune.get_context().get_trial_dir())
    except Exception:  # noqa: BLE001 - outside a Tune session (a direct call, a test)
        return None


def _write_warm(trial: Trial, score: float) -> None:
    state = trial.weighting_state()
    folder = _trial_dir()
    if not state or folder is None or not math.isfinite(score):
        return
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / (WARM_FILE + ".part")
    part.write_text(json.dumps({"score": score, "higher_is_better": trial.mode == "max", **state}))
    os.replace(part, folder / WARM_FILE)


def _warm_source(trial: Trial) -> dict[str, Any] | None:
    """The stored weighting of the best finished trial in this trial's experiment that fits this
    trial (:meth:`~auxilearn_hpo.integrations.trial.Trial.fits`), or ``None``."""
    folder = _trial_dir()
    if folder is None:
        return None
    best, best_score = None, math.nan
    higher = trial.mode == "max"
    for path in folder.parent.glob(f"*/{WARM_FILE}"):
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        score = stored.get("score")
        if not trial.fits(stored) or not isinstance(score, (int, float)) or not math.isfinite(score):
            continue
        if best is None or (score > best_score if higher else score < best_score):
            best, best_score = stored, float(score)
    return best


def load_state(checkpoint: Any) -> dict[str, Any]:
    """The learner state (:meth:`Trial.state_dict`) saved in a Tune checkpoint by :func:`trainable`."""
    import torch

    with checkpoint.as_directory() as directory:
        return torch.load(os.path.join(directory, CHECKPOINT_FILE), weights_only=True)


def checkpoint_history(result: Any) -> "pd.DataFrame":
    """A trial's per-epoch reports, one row per epoch, read from its latest checkpoint.

    The learner keeps every report in its state, so this history holds each epoch exactly
    once even after retries and restores. (Ray 2.60's ``result.metrics_dataframe`` reads the
    trial's ``result.json``, which can lose the reports made shortly before a crash once the
    trial is retried; ``progress.csv`` keeps them.) Columns are flattened like Tune's
    (``weights/<task>``); ``test_metric`` is not part of the learner's history.

    Args:
        result: a ``ray.tune.Result`` (an element of a ``ResultGrid``) of :func:`trainable`.
    """
    import pandas as pd

    if result.checkpoint is None:
        return pd.DataFrame()
    return pd.DataFrame([EpochReport.from_dict(r).flat() for r in load_state(result.checkpoint)["history"]])


def _bound_trainable(task: TaskSpec) -> Any:
    tune = _import_tune()
    _check_task(task)
    return tune.with_parameters(trainable, task=task)


def _check_task(task: TaskSpec) -> None:
    if not (isinstance(task, str) or callable(task)):
        raise TypeError(f"task must be a benchmark name or a callable config -> Task, got {type(task).__name__}")


def register(task: TaskSpec = "toy", name: str = "auxilearn") -> str:
    """Register :func:`trainable` bound to ``task`` under ``name``; returns ``name``.

    Afterwards ``tune.Tuner(name, param_space=...)`` trains that task. To give trials more
    than Tune's default resources, pass ``tune.with_resources(tune.with_parameters(trainable,
    task=task), {...})`` to the Tuner instead (Tune cannot add resources to a registered name).

    Args:
        task: a benchmark name (``"toy"``, ``"graded_noise"``, ``"scaled_regression"``,
            ``"digits"``) or a picklable factory ``config -> auxilearn_hpo.Task``.
        name: the name to register.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    tune = _import_tune()
    tune.register_trainable(name, _bound_trainable(task))
    return name


# ---------------------------------------------------------------------- search spaces
def _check_space(space: Mapping[str, Any], what: str = "param_space") -> None:
    """Unknown outer settings raise ``ValueError`` naming them (``check_config``'s rule)."""
    if not isinstance(space, Mapping):
        raise TypeError(f"{what} must be a dict of outer settings, got {type(space).__name__}")
    try:
        check_config(dict(space))
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None


def _spec(name: str, value: Any, allowed: Sequence[str] | None = None, *, log_range: bool = False) -> Any:
    """A keyword of :func:`search_space` as a spec of :mod:`~auxilearn_hpo.integrations.space`."""
    if _is_domain(value) or isinstance(value, SPECS):
        return value
    if log_range and isinstance(value, tuple) and len(value) == 2:
        low, high = value
        if not 0 < low < high:
            raise ValueError(f"{name} must be a (low, high) range with 0 < low < high, got {value!r}")
        return LogUniform(float(low), float(high))
    if log_range:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be > 0 or a (low, high) range, got {value!r}")
        return float(value)
    values = [value] if isinstance(value, (str, int)) else list(value)
    if not values:
        raise ValueError(f"{name} must not be empty")
    if allowed is not None:
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ValueError(f"{name}: unknown value(s) {unknown}; choose from {sorted(allowed)}")
    return Categorical(tuple(values))


def search_space(
    *,
    weightings: Sequence[str] | str | None = None,
    solvers: Sequence[str] | str | None = None,
    update_every: Sequence[int] | int | None = None,
    steps: Sequence[int] | int | None = None,
    aux_lr: tuple[float, float] | float | None = None,
    alpha: tuple[float, float] | float | None = None,
    lr: tuple[float, float] | float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Tune search space over AuxiLearn's outer settings: the shared default space
    (:func:`auxilearn_hpo.integrations.space.default_space`, the one Optuna searches), with any
    keyword given here replacing its entry.

    Sequences become ``tune.choice``; ``(low, high)`` ranges become ``tune.loguniform``; a
    single value fixes the setting; a Tune sampling object or a space spec passes through.

    Args:
        weightings: weightings (``"linear"``, ``"nonlinear"``, ``"conv"`` or baselines
            from :mod:`auxilearn_hpo.registry`).
        solvers: hypergradient solvers (``"neumann"``, ``"cg"``, ``"exact"``).
        update_every: training steps between hypersteps. steps: Neumann terms or CG iterations.
        aux_lr: the learned weighting's learning rate (log-uniform range).
        alpha: the Neumann step (log-uniform range), not searched by default (``alpha="auto"``).
        lr: the model's learning rate, not searched by default (the task's default).
        extra: more settings (``epochs``, ``damping``, ``seed``, ...), values or Tune objects.

    Raises:
        ValueError: an unknown setting in ``extra`` (named), an unknown weighting or solver, an
            empty choice or a bad range.

    Example:
        >>> space = search_space(weightings="linear", solvers=["neumann"], extra={"epochs": 5})
        >>> sorted(space)
        ['aux_lr', 'epochs', 'solver', 'steps', 'update_every', 'weighting']
    """
    _import_tune()
    from auxilearn_hpo.hypergrad import SOLVERS
    from auxilearn_hpo.registry import WEIGHTINGS

    space: dict[str, Any] = default_space()
    given = {"weighting": (weightings, list(WEIGHTINGS), False), "solver": (solvers, list(SOLVERS), False),
             "update_every": (update_every, None, False), "steps": (steps, None, False),
             "aux_lr": (aux_lr, None, True), "alpha": (alpha, None, True), "lr": (lr, None, True)}
    flag = {"weighting": "weightings", "solver": "solvers"}
    for name, (value, allowed, log_range) in given.items():
        if value is not None:
            space[name] = _spec(flag.get(name, name), value, allowed, log_range=log_range)
    if extra:
        _check_space(extra, "extra")
        space.update(extra)
    return to_tune(space)


# ---------------------------------------------------------------------- helpers for run()
def _is_domain(value: Any) -> bool:
    try:
        from ray.tune.search.sample import Domain
    except ImportError:
        return False

    return isinstance(value, Domain)


def _is_grid(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"grid_search"}


def _largest(value: Any) -> int | None:
    """The largest epoch count a space entry can take (``None`` when unknown)."""
    if value is None:
        return None
    if _is_grid(value):
        return max(int(v) for v in value["grid_search"])
    if _is_domain(value):
        if hasattr(value, "categories"):
            return max(int(v) for v in value.categories)
        upper = getattr(value, "upper", None)
        return int(upper) if upper is not None else None
    return int(value)


def to_frame(result_grid: "ResultGrid", *, mode: str | None = None, metric: str = "val_metric") -> "pd.DataFrame":
    """One row per trial of an experiment: ``results.trials_frame(records(result_grid))``."""
    from auxilearn_hpo.results import trials_frame

    return trials_frame(records(result_grid), mode=mode, metric=metric)


def _pbt_mutations(space: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The sampled entries of a Tune ``param_space`` that PBT may perturb (:data:`~.space.PBT_MUTABLE`)."""
    out: dict[str, Any] = {}
    for name, value in space.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and not _is_grid(value):
            inner = _pbt_mutations(value, path + "/")
            if inner:
                out[name] = inner
        elif _is_domain(value) and any(path == m or path.startswith(m + "/") for m in PBT_MUTABLE):
            # PBT perturbs a list of choices by moving to a neighbouring choice, and a sampled
            # number by a factor of 0.8 or 1.2 (or a new draw); a tune.choice must become a list.
            categories = getattr(value, "categories", None)
            out[name] = list(categories) if categories is not None else value
    return out


def _scheduler(tune: Any, scheduler: Any, epochs: int | None, space: Mapping[str, Any] | None = None) -> Any:
    if scheduler is None:
        return None
    if isinstance(scheduler, str):
        if scheduler.lower() not in ("asha", "pbt"):
            raise ValueError(f"scheduler must be 'asha', 'pbt', None or a Tune scheduler, got {scheduler!r}")
        if epochs is None or epochs < 1:
            raise ValueError(f"{scheduler} needs the number of epochs as an int >= 1, got {epochs!r}")
        if scheduler.lower() == "pbt":
            from ray.tune.schedulers import PopulationBasedTraining

            mutations = _pbt_mutations(space or {})
            if not mutations:
                raise ValueError("scheduler='pbt' needs a param_space with at least one sampled setting PBT may "
                                 f"perturb ({sorted(PBT_MUTABLE)}); got none")
            # Perturb about five times per run; the bottom quarter copies the top quarter's full
            # learner state (model, weighting, optimizers) and perturbs its outer settings.
            return PopulationBasedTraining(
                time_attr="training_iteration", perturbation_interval=max(1, epochs // 6),
                hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25, synch=False)
        from ray.tune.schedulers import ASHAScheduler

        # Early epochs say little (every trial starts near chance): stop nothing before a quarter.
        return ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=max(1, epochs // 4))
    from ray.tune.schedulers import TrialScheduler

    if not isinstance(scheduler, TrialScheduler):
        raise TypeError(f"scheduler must be 'asha', 'pbt', None or a Tune scheduler, got {type(scheduler).__name__}")
    return scheduler


def _search_alg(search_alg: Any, space: Mapping[str, Any] | None = None, start: bool = False) -> Any:
    """The searcher of :func:`run`; ``start``: try :func:`start_point` of ``space`` first (with
    ``None`` or ``"optuna"``; Optuna's searcher takes only a point that sets every dimension)."""
    takes_point = start and space is not None and (search_alg is None or isinstance(search_alg, str))
    point = start_point(space) if takes_point else {}
    if search_alg is None:
        return random_search(points_to_evaluate=[point]) if point else None
    if isinstance(search_alg, str):
        if search_alg.lower() != "optuna":
            raise ValueError(f"search_alg must be 'optuna', None or a Tune searcher, got {search_alg!r}")
        try:
            from ray.tune.search.optuna import OptunaSearch

            import optuna  # noqa: F401  (OptunaSearch only fails when it is used)
        except ImportError as err:
            raise ImportError(
                f"search_alg='optuna' needs Optuna ({err}); install it with `pip install auxilearn-hpo[ray,optuna]`"
            ) from err
        flat = flat_params(point)
        sampled = {name for name, value in flat_params(space or {}).items() if _is_domain(value)}
        full = bool(flat) and set(flat) == sampled
        return OptunaSearch(points_to_evaluate=[flat] if full else None)
    from ray.tune.search import SearchAlgorithm, Searcher

    if not isinstance(search_alg, (Searcher, SearchAlgorithm)):
        raise TypeError(f"search_alg must be 'optuna', None or a Tune searcher, got {type(search_alg).__name__}")
    return search_alg


# ---------------------------------------------------------------------- one-call experiments
def check_experiment(path: str | os.PathLike) -> int:
    """Check that the Ray Tune experiment folder ``path`` can be restored; returns its trial count.

    Reads the latest ``experiment_state-*.json`` (plain JSON, no unpickling, no Ray needed).
    Ray's own restore treats a state file that was cut short as "no trials" and starts a new,
    empty experiment over the old one; this refuses it instead.

    Raises:
        ValueError: one line naming the file, when the folder holds ``tuner.pkl`` but no state
            file, or the state file does not parse or lists no trials.
    """
    path = os.fspath(path)
    states = sorted(glob.glob(os.path.join(glob.escape(path), "experiment_state-*.json")))
    if not states:
        raise ValueError(f"{path} holds no experiment_state-*.json, so Ray Tune cannot resume it "
                         "(the run was stopped before its first save, or the file was removed)")
    latest = states[-1]
    try:
        with open(latest, encoding="utf-8") as f:
            state = json.load(f)
        trials = state["trial_data"]
        for entry in trials:
            json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]["trial_id"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as err:
        detail = " ".join(str(err).split())[:120]
        raise ValueError(f"{latest} is damaged ({type(err).__name__}: {detail}); Ray Tune would start a new, "
                         "empty experiment over it") from None
    if not trials:
        raise ValueError(f"{latest} lists no trials; Ray Tune would start a new, empty experiment over it")
    return len(trials)


def run(
    task: TaskSpec = "toy",
    *,
    param_space: Mapping[str, Any] | None = None,
    num_samples: int = 8,
    metric: str = "score",
    mode: str | None = None,
    scheduler: Any = "asha",
    search_alg: Any = None,
    storage_path: str | os.PathLike = "./runs",
    storage_filesystem: Any = None,
    name: str = "auxilearn",
    max_failures: int = 1,
    resources: Mapping[str, float] | None = None,
    max_concurrent: int | None = None,
    resume: bool = True,
    verbose: int = 0,
    fixed: Mapping[str, Any] | None = None,
    keep_checkpoints: int = 2,
    start_at_default: bool = True,
) -> tuple["pd.DataFrame", "ResultGrid"]:
    """Tune the outer settings of AuxiLearn on ``task``; returns ``(frame, result_grid)``.

    Starts a quiet local Ray (:func:`init_local`) unless Ray is running. If ``resume`` and
    ``storage_path/name`` holds an experiment, that experiment is restored
    (``Tuner.restore(..., resume_errored=True)``) and finished instead of starting a new one:
    unfinished and errored trials continue from their last checkpoint, finished ones are kept,
    and ``param_space``, ``scheduler``, ``search_alg`` and ``num_samples`` are those saved with
    it (Ray cannot add trials to a stored experiment: run more trials as another ``name``, as
    ``auxilearn-hpo tune`` does). A damaged experiment state raises ``ValueError``
    (:func:`check_experiment`) rather than start over it. Use another ``name`` (or
    ``resume=False``) for a new experiment.

    Restoring unpickles ``storage_path/name/tuner.pkl`` (Ray's own format): resume only
    experiments you wrote yourself.

    Args:
        task: a benchmark name or a picklable factory ``config -> auxilearn_hpo.Task``.
        param_space: outer settings to search (Tune objects or values); default
            :func:`search_space`. Unknown settings raise ``ValueError`` naming them.
        num_samples: trials to sample (each grid point ``num_samples`` times).
        metric: the reported metric schedulers and Tune's ``get_best_result`` rank by; default
            ``"score"`` (:func:`~auxilearn_hpo.records.selection_score`, which the returned
            frame ranks by too). mode: ``"min"`` or ``"max"``; default the
            task's mode (the task is built once in this process to read it).
        scheduler: ``"asha"`` (``ASHAScheduler(time_attr="training_iteration", max_t=epochs)``,
            Ray's other defaults), ``"pbt"`` (asynchronous Population Based Training: every
            ``epochs // 6`` epochs the bottom quarter of the trials copies a top-quarter trial's
            full learner state and perturbs the settings of ``param_space`` listed in
            :data:`~auxilearn_hpo.integrations.space.PBT_MUTABLE`, while the weights go on being
            learned by hypergradients inside; ``num_samples`` is the population), ``None``
            (FIFO) or any Tune scheduler.
        search_alg: ``None`` (random/grid), ``"optuna"`` (``OptunaSearch``) or a Tune searcher.
        start_at_default: with ``search_alg`` ``None`` or ``"optuna"``, the first trial runs the
            shipped defaults of the searched settings (:func:`start_point`; the rest drawn; with
            ``"optuna"`` only when the defaults set every searched setting), so
            the best trial is never worse than the defaults' and, with ``"pbt"``, one member of
            the population starts there. A searcher object is used as given
            (``random_search(seed, points_to_evaluate=[start_point(space)])`` does the same).
        storage_path: directory of experiments: a local path (made absolute: trials change
            directory) or a URI passed to Ray as it is (``s3://bucket/runs``, ``gs://...``,
            ``file:///shared/runs``), as is any path when ``storage_filesystem`` is given.
        storage_filesystem: a ``pyarrow.fs.FileSystem`` holding ``storage_path`` (Ray's
            ``RunConfig(storage_filesystem=...)``), e.g. an ``S3FileSystem`` with credentials.
        name: the experiment's name, a folder in ``storage_path``.
        max_failures: retries of a crashed trial, each from its last checkpoint (``-1``: no limit).
        resources: per trial, default ``{"cpu": 1}``.
        max_concurrent: at most this many trials at once (default: as resources allow).
        resume: restore an existing experiment of the same name (see above).
        verbose: Tune's verbosity (0 silent .. 3).
        fixed: settings merged over ``param_space``, e.g. ``{"epochs": 20, "seed": 0}``.
        keep_checkpoints: checkpoints kept per trial (the latest ones; all with ``"pbt"``, whose
            exploits restore other trials' older checkpoints).

    Returns:
        ``(frame, result_grid)``: the table of :func:`to_frame` and Tune's ``ResultGrid``.
    """
    tune = _import_tune()
    ray = _import_ray()
    _check_task(task)
    space = dict(search_space() if param_space is None else param_space)
    _check_space(space)
    if fixed:
        _check_space(fixed, "fixed")
        space.update(fixed)
    if mode is not None and mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or None (the task's mode), got {mode!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise ValueError(f"max_failures must be an int >= -1, got {max_failures!r}")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ValueError(f"max_concurrent must be None or an int >= 1, got {max_concurrent!r}")
    if isinstance(keep_checkpoints, bool) or not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be an int >= 1, got {keep_checkpoints!r}")
    if not isinstance(start_at_default, bool):
        raise ValueError(f"start_at_default must be True or False, got {start_at_default!r}")

    epochs = _largest(space.get("epochs"))
    wants_asha = isinstance(scheduler, str)
    pbt = isinstance(scheduler, str) and scheduler.lower() == "pbt"
    if mode is None or (wants_asha and epochs is None):
        # Build the task once, from the space's fixed values, for its mode and default epochs.
        probe = {k: v for k, v in space.items() if not (_is_domain(v) or _is_grid(v))}
        probe_task = resolve_task(task, check_config(probe))
        if mode is None:
            mode = probe_task.mode
        if epochs is None:
            epochs = probe_task.defaults.epochs
        del probe_task

    storage = os.fspath(storage_path)
    remote = storage_filesystem is not None or "://" in storage
    if not remote:
        storage = os.path.abspath(storage)
    path = f"{storage.rstrip('/')}/{name}" if remote else os.path.join(storage, name)
    local = path[len("file://"):] if path.startswith("file://") and storage_filesystem is None else (
        None if remote else path)
    if resume and local is not None and os.path.exists(os.path.join(local, "tuner.pkl")):
        check_experiment(local)  # before Ray starts: a damaged state is refused, not started over
    if not ray.is_initialized():
        init_local(num_cpus=None)
    fn = tune.with_resources(_bound_trainable(task), dict(resources or {"cpu": 1}))

    if resume and tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, storage_filesystem=storage_filesystem)
    else:
        tuner = tune.Tuner(
            fn,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, num_samples=num_samples, scheduler=_scheduler(tune, scheduler, epochs, space),
                search_alg=_search_alg(search_alg, space, start_at_default),
                max_concurrent_trials=max_concurrent, reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                storage_path=storage, storage_filesystem=storage_filesystem, name=name, verbose=verbose,
                # PBT: an exploit restores the donor's checkpoint of the perturbation step, which the
                # donor (running ahead, asynchronously) may have replaced since: keep them all.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None if pbt else keep_checkpoints),
                failure_config=tune.FailureConfig(max_failures=max_failures),
            ),
        )
    result_grid = tuner.fit()
    # "score" is a function of val_metric, which the table scores the same way.
    return to_frame(result_grid, mode=mode, metric="val_metric" if metric == "score" else metric), result_grid


# ---------------------------------------------------------------------- Ray runtime
def _quiet_env() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def quiet_worker() -> None:
    """``worker_process_setup_hook`` of :func:`init_local`: Ray's train/tune loggers in the
    trial processes log at INFO ("Checkpoint successfully created at ...") whatever the
    driver's ``logging_level``; keep their warnings and errors only."""
    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


_quiet_worker = quiet_worker  # the former private name, kept for callers not yet moved


def init_local(num_cpus: int | None = 2, **init_kwargs: Any) -> bool:
    """Start a quiet local Ray unless one is running; returns whether this call started it.

    Sets :data:`QUIET_ENV` (keeping values already in the environment), then
    ``ray.init(address="local", num_cpus=num_cpus, logging_level="ERROR", include_dashboard=False,
    **init_kwargs)`` (a new instance even when another Ray runs on this machine; use
    :func:`connect` to join a cluster)
    with a ``worker_process_setup_hook`` (added to ``runtime_env`` unless it names one) that
    keeps the trial processes' Ray loggers at WARNING. ``num_cpus=None`` lets Ray count the
    machine's cores. The driver's own logging configuration is left alone.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    _quiet_env()
    import logging

    # address="local": always a new local instance, never another process's Ray on this machine.
    options: dict[str, Any] = {"address": "local", "num_cpus": num_cpus, "logging_level": logging.ERROR,
                               "include_dashboard": False}
    options.update(init_kwargs)
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env.setdefault("worker_process_setup_hook", quiet_worker)
    options["runtime_env"] = runtime_env
    ray.init(**options)
    return True


def shutdown() -> None:
    """``ray.shutdown()``: stop the Ray this process started or joined."""
    _import_ray().shutdown()


def random_search(seed: int | None = None, points_to_evaluate: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """Tune's random search (``BasicVariantGenerator``) with its own seed, for ``run(search_alg=...)``;
    ``points_to_evaluate``: configs (nested like the space, partial ones drawn for the rest) the
    first trials run, e.g. ``[start_point(param_space)]``."""
    _import_tune()
    from ray.tune.search import BasicVariantGenerator

    points = [dict(p) for p in points_to_evaluate] if points_to_evaluate else None
    return BasicVariantGenerator(points_to_evaluate=points, random_state=seed)


def _tune_contains(domain: Any, value: Any) -> bool:
    """Whether ``value`` is a possible draw of Tune's sampling object ``domain`` (read as the
    space spec with the same support)."""
    from ray.tune.search.sample import Categorical as TuneCategorical, Float, Integer

    from .space import IntRange, Uniform, in_spec

    if isinstance(domain, TuneCategorical):
        spec: Any = Categorical(tuple(domain.categories))
    elif isinstance(domain, Integer):  # Tune's upper bound is exclusive
        spec = IntRange(int(domain.lower), int(domain.upper) - 1) if domain.upper > domain.lower else None
    elif isinstance(domain, Float):
        spec = Uniform(float(domain.lower), float(domain.upper))
    else:
        return False
    return spec is not None and in_spec(spec, value)


def start_point(param_space: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The shipped defaults of the searched settings of ``param_space`` (Tune objects or space
    specs; default :func:`search_space`), nested like it: the config ``run`` tries first
    (:func:`~auxilearn_hpo.integrations.space.default_point`)."""
    _import_tune()
    return default_point(search_space() if param_space is None else param_space, contains=_tune_contains)


def connect(address: str = "auto", **init_kwargs: Any) -> bool:
    """Connect to a running Ray cluster (``ray.init(address=address)``); returns whether this
    call connected (``False`` when Ray is already initialised in this process)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    _quiet_env()
    ray.init(address=address, **init_kwargs)
    return True


# ---------------------------------------------------------------------- reading experiments
# Ray Tune's Trial.status values; TERMINATED is completed or pruned (by the epochs run).
_RAY_STATUS = {"ERROR": "failed", "RUNNING": "interrupted", "PAUSED": "interrupted", "PENDING": "not_started"}
# Keys Ray Tune adds to every report (ray.tune.result.AUTO_RESULT_KEYS and friends): not ours.
_RAY_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname", "pid",
    "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "checkpoint_dir_name", "done", "trial_id", "experiment_tag",
    "experiment_id", "should_checkpoint", "episodes_this_iter", "timesteps_this_iter", "logdir", "warmup_time",
})
_RAY_TRIAL_ID = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)")
_RAY_FAILURE = re.compile(r"Failure # \d+ \(occurred at ([^)]+)\)")


def _status(ray_status: str | None, error: bool, reported: bool) -> str | None:
    """Our status from Ray's ``Trial.status``; ``None`` (completed or pruned, by the epochs run) when
    Ray says TERMINATED or nothing. An error always makes the trial failed."""
    known = _RAY_STATUS.get(str(ray_status or "").upper())
    if error:
        return "failed"
    if known == "not_started" and reported:
        return "interrupted"  # restored with a checkpoint, waiting to go on
    return known


def records(source: Any) -> list[TrialRecord]:
    """The trials of a Ray Tune experiment as trial records, for :mod:`auxilearn_hpo.results`
    (``results.trials_frame(records(grid))``).

    ``source``: a ``ResultGrid`` (or several), a ``Result`` or a list of them, an
    ``ExperimentAnalysis``, or an experiment folder on disk (every ``result.json`` below it is a
    trial; Ray need not be running). Ray's statuses map to ours: ERROR failed, RUNNING and PAUSED
    interrupted, PENDING not_started (interrupted when it has reports: restored from a checkpoint),
    TERMINATED completed or pruned by the epochs run.

    .. note::
        Ray keeps ``error.txt`` in a trial folder after ``FailureConfig(max_failures=...)`` retried
        the trial successfully. Reading a folder, a trial therefore counts as failed only when its
        last report is not later than the last ``Failure # N (occurred at ...)`` in ``error.txt``.
        After a retry Ray 2.60 can drop the crashed attempt's rows from ``result.json`` while
        ``progress.csv`` keeps them: the longer of the two is read.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"no such folder: {str(root)!r}")
        found = _ray_folder_records(root)
        if not found and not any(root.rglob("experiment_state-*.json")):
            raise FileNotFoundError(f"{str(root)!r} holds no Ray Tune experiment (no result.json below it)")
        return found
    if hasattr(source, "get_dataframe"):  # a ResultGrid
        return _ray_result_records(source, _ray_grid_statuses(source))
    if hasattr(source, "metrics_dataframe"):  # one Result
        return _ray_result_records([source])
    if hasattr(source, "experiment_path"):  # e.g. ExperimentAnalysis
        return records(str(source.experiment_path))
    items = list(source)
    if items and all(hasattr(g, "get_dataframe") for g in items):  # several experiments
        return [r for grid in items for r in _ray_result_records(grid, _ray_grid_statuses(grid))]
    return _ray_result_records(items)


def _ray_report(row: Mapping[str, Any]) -> dict[str, Any]:
    report = {k: v for k, v in row.items() if k not in _RAY_KEYS and not k.startswith("config/")}
    if is_null(report.get("epoch")) and not is_null(row.get("training_iteration")):
        report["epoch"] = row["training_iteration"]  # a trainable that does not report epochs
    return report


def _ray_id_from_path(path: Any) -> str | None:
    if not path:
        return None
    match = _RAY_TRIAL_ID.search(Path(str(path)).name)
    return match.group(1) if match else None


def _ray_grid_statuses(grid: Any) -> dict[str, dict[str, Any]]:
    """``{trial_id: {"status": Trial.status, "config": ...}}`` of a Ray ``ResultGrid`` (read by
    duck typing; empty when unknown). The config serves trials that never reported (their
    ``Result`` has none).

    The experiment state Ray saved on disk wins over the grid's live trials: after Ctrl-C, Ray
    saves the state (unfinished trials RUNNING or PENDING, which is what a restore resumes) and
    then stops the live trials, which end up TERMINATED in memory as if they had finished.
    """
    statuses: dict[str, dict[str, Any]] = {}
    analysis = getattr(grid, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or ():
        trial_id, status = getattr(trial, "trial_id", None), getattr(trial, "status", None)
        if trial_id is not None and status is not None:
            config = getattr(trial, "config", None)
            statuses[str(trial_id)] = {"status": str(status), "config": config if isinstance(config, Mapping) else {}}
    try:
        path = getattr(grid, "experiment_path", None)
    except Exception:  # noqa: BLE001 - a duck-typed grid may not know its path
        path = None
    if isinstance(path, (str, os.PathLike)) and "://" not in str(path) and Path(path).is_dir():
        for trial_id, known in _ray_experiment_state(Path(path), recursive=False).items():
            if known["status"]:
                before = statuses.get(trial_id, {})
                statuses[trial_id] = {"status": known["status"], "config": known["config"] or before.get("config", {})}
    return statuses


def _ray_result_records(results: Iterable[Any], statuses: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> list[TrialRecord]:
    import pandas as pd

    statuses = statuses or {}
    found = []
    for i, result in enumerate(results):
        frame = getattr(result, "metrics_dataframe", None)
        # After a retry Ray 2.60 can drop the crashed attempt's rows from result.json (which
        # metrics_dataframe reads) while progress.csv keeps every report: take the longer one.
        progress = Path(str(getattr(result, "path", "") or "")) / "progress.csv"
        if getattr(result, "path", None) and progress.is_file():
            try:
                logged = pd.read_csv(progress)
            except (OSError, ValueError, pd.errors.ParserError):
                logged = None
            if logged is not None and (frame is None or len(logged) > len(frame)):
                frame = logged
        rows = [] if frame is None else frame.to_dict("records")
        config = flatten(dict(getattr(result, "config", None) or {}))
        reports, configs = [], []
        for row in rows:
            row_config = {k[len("config/"):]: v for k, v in row.items() if k.startswith("config/")}
            configs.append(flatten(row_config) if row_config else config)
            reports.append(_ray_report(row))
        ids = [row.get("trial_id") for row in rows if not is_null(row.get("trial_id"))]
        metrics = getattr(result, "metrics", None) or {}
        trial_id = (ids[0] if ids else None) or metrics.get("trial_id") or _ray_id_from_path(
            getattr(result, "path", None)) or str(i)
        known = statuses.get(str(trial_id), {})
        if not config and known.get("config"):  # a trial that never reported
            config = flatten(dict(known["config"]))
        error = getattr(result, "error", None) is not None
        found.append(TrialRecord(str(trial_id), "ray", configs[-1] if configs else config, reports,
                                   configs=configs or None, error=error,
                                   status=_status(known.get("status"), error, bool(reports))))
    return found


def _ray_folder_failed(trial_dir: Path, lines: list[dict[str, Any]]) -> bool:
    error_txt, error_pkl = trial_dir / "error.txt", trial_dir / "error.pkl"
    if not error_txt.exists():
        return error_pkl.exists()
    failures = _RAY_FAILURE.findall(error_txt.read_text(errors="replace"))
    last_date = lines[-1].get("date") if lines else None
    # Reported after the last failure: Ray retried the trial and it went on (see the module note).
    recovered = bool(failures) and isinstance(last_date, str) and last_date > failures[-1].strip()
    return not recovered


def _ray_experiment_state(root: Path, *, recursive: bool = True) -> dict[str, dict[str, Any]]:
    """Every trial Ray's latest ``experiment_state-*.json`` of each experiment below ``root`` lists:
    ``{trial_id: {"status", "config", "logdir"}}``. A file that does not parse (cut short) is
    skipped: the trial folders still hold what was reported."""
    latest: dict[Path, Path] = {}
    for state_file in sorted((root.rglob if recursive else root.glob)("experiment_state-*.json")):
        latest[state_file.parent] = state_file  # names hold the start time: the last sorts last
    trials: dict[str, dict[str, Any]] = {}
    for state_file in latest.values():
        try:
            state = json.loads(state_file.read_text())
            entries = state["trial_data"]
            for entry in entries:
                data = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
                config = data.get("config")
                trials[str(data["trial_id"])] = {
                    "status": str(data.get("status") or ""),
                    "config": config if isinstance(config, Mapping) else {},
                    "logdir": state_file.parent / str(data.get("relative_logdir") or ""),
                }
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return trials


def _ray_folder_records(root: Path) -> list[TrialRecord]:
    found = []
    states = _ray_experiment_state(root)
    for result_file in sorted(root.rglob("result.json")):
        trial_dir = result_file.parent
        lines = []
        for text in result_file.read_text(errors="replace").splitlines():
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:  # a line cut short when the run was interrupted
                    continue
        params_file = trial_dir / "params.json"
        params = json.loads(params_file.read_text()) if params_file.exists() else {}
        config = flatten(params if isinstance(params, Mapping) else {})
        configs = [flatten(line["config"]) if isinstance(line.get("config"), Mapping) else config for line in lines]
        ids = [line["trial_id"] for line in lines if line.get("trial_id")]
        trial_id = ids[0] if ids else (_ray_id_from_path(trial_dir) or trial_dir.name)
        known = states.pop(str(trial_id), {})
        error = _ray_folder_failed(trial_dir, lines)
        found.append(TrialRecord(str(trial_id), "ray", configs[-1] if configs else config,
                                   [_ray_report(line) for line in lines], configs=configs or None, error=error,
                                   status=_status(known.get("status"), error, bool(lines))))
    for trial_id, known in states.items():  # listed by Ray, never wrote a result.json: not started
        status = known["status"] or "PENDING"
        error = status.upper() == "ERROR"
        found.append(TrialRecord(trial_id, "ray", flatten(known["config"]), [], error=error,
                                   status=_status(status, error, False)))
    return found
