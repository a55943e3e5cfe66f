"""``run``: one call that tunes a task with Ray Tune, new or restored; the experiment as a table."""
from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import TYPE_CHECKING, Any, Mapping

from auxilearn_hpo.integrations.trial import TaskSpec, check_config, resolve_task

from .extra import import_ray, import_tune
from .reading import records
from .runtime import init_local, quiet_logs
from .spaces import check_space, is_domain, is_grid, largest, make_scheduler, make_search_alg, search_space
from .training import bound_trainable, check_task

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from ray.tune import ResultGrid

__all__ = ["DRIVER_LOG", "check_experiment", "run", "to_frame"]

#: With ``verbose=0``, the file in the experiment folder that receives Ray's driver log.
DRIVER_LOG = "driver.log"


def to_frame(result_grid: "ResultGrid", *, mode: str | None = None, metric: str = "val_metric") -> "pd.DataFrame":
    """One row per trial of an experiment: ``results.trials_frame(records(result_grid))``."""
    from auxilearn_hpo.results import trials_frame

    return trials_frame(records(result_grid), mode=mode, metric=metric)



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
            ``"score"`` (:func:`~auxilearn_hpo.records.trial_score`, which the returned
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
        verbose: Tune's verbosity (0 silent .. 3). With 0, Ray's own driver log (such as the
            tracebacks it logs for trials it cannot resume after a kill) goes to
            :data:`DRIVER_LOG` in the experiment folder instead of the terminal (nowhere for a
            remote ``storage_path``); failed trials stay failed in the returned table.
        fixed: settings merged over ``param_space``, e.g. ``{"epochs": 20, "seed": 0}``.
        keep_checkpoints: checkpoints kept per trial (the latest ones; all with ``"pbt"``, whose
            exploits restore other trials' older checkpoints).

    Returns:
        ``(frame, result_grid)``: the table of :func:`to_frame` and Tune's ``ResultGrid``.
    """
    tune = import_tune()
    ray = import_ray()
    check_task(task)
    space = dict(search_space() if param_space is None else param_space)
    check_space(space)
    if fixed:
        check_space(fixed, "fixed")
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

    epochs = largest(space.get("epochs"))
    wants_asha = isinstance(scheduler, str)
    pbt = isinstance(scheduler, str) and scheduler.lower() == "pbt"
    if mode is None or (wants_asha and epochs is None):
        # Build the task once, from the space's fixed values, for its mode and default epochs.
        probe = {k: v for k, v in space.items() if not (is_domain(v) or is_grid(v))}
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
    fn = tune.with_resources(bound_trainable(task), dict(resources or {"cpu": 1}))

    logs: Any = contextlib.nullcontext()
    if verbose == 0:  # silent: Ray's driver log goes to a file of the experiment (nowhere when remote)
        if local is not None:
            os.makedirs(local, exist_ok=True)
        logs = quiet_logs(None if local is None else os.path.join(local, DRIVER_LOG))
    with logs:
        if resume and tune.Tuner.can_restore(path, storage_filesystem=storage_filesystem):
            tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True,
                                       storage_filesystem=storage_filesystem)
        else:
            tuner = tune.Tuner(
                fn,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=num_samples,
                    scheduler=make_scheduler(tune, scheduler, epochs, space),
                    search_alg=make_search_alg(search_alg, space, start_at_default),
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
