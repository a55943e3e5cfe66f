"""Ray Tune adapter: each Tune trial drives one :class:`~auxilearn_hpo.integrations.trial.Trial`.

AuxiLearn learns the auxiliary-loss weights *inside* a trial by implicit differentiation; Ray
Tune searches the outer settings around it (:data:`~auxilearn_hpo.integrations.trial.OUTER_SETTINGS`:
hyperstep frequency, solver, weighting, learning rates, ...). This package is a recipe, not a
trainer: :func:`trainable` iterates :meth:`Trial.reports` and forwards every epoch's report to
``tune.report`` together with a checkpoint, so that

* schedulers such as ASHA stop bad trials after any epoch,
* ``tune.FailureConfig(max_failures=...)`` retries a crashed trial from its last epoch,
* Population Based Training's perturbed config takes effect after the restore (the learning
  rates of the new config are re-applied by :meth:`Trial.load_state_dict`),
* ``tune.Tuner.restore`` finishes an interrupted experiment.

Importing this package never fails; the first call of a function that needs Ray raises an
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

The package, one job per module (every name below is importable from the package itself):

============  ==================================================================================
module        what it holds
============  ==================================================================================
``training``  :func:`trainable` (reports, checkpoints, warm starts), :func:`register`,
              :func:`load_state`, :func:`checkpoint_history`
``spaces``    :func:`search_space`, :func:`start_point`, :func:`random_search`, the schedulers
``tuner``     :func:`run` (a new or restored experiment), :func:`check_experiment`, :func:`to_frame`
``runtime``   :func:`init_local`, :func:`connect`, :func:`shutdown`, :func:`quiet_worker`,
              :func:`quiet_logs`
``reading``   :func:`records`: an experiment (grid, results or folder) as trial records
``extra``     the optional dependency, or an error naming the extra
============  ==================================================================================
"""
from __future__ import annotations

from .reading import records
from .runtime import QUIET_ENV, connect, init_local, quiet_logs, quiet_worker, shutdown
from .spaces import random_search, search_space, start_point
from .training import CHECKPOINT_FILE, WARM_FILE, checkpoint_history, load_state, register, trainable
from .tuner import check_experiment, run, to_frame

__all__ = [
    "CHECKPOINT_FILE", "WARM_FILE", "QUIET_ENV", "trainable", "register", "search_space", "run", "to_frame",
    "records", "load_state", "checkpoint_history", "init_local", "quiet_worker", "quiet_logs", "connect", "shutdown",
    "random_search", "start_point", "check_experiment",
]
