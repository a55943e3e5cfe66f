"""The Ray runtime: a quiet local Ray, a cluster to join, and quiet trial processes."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from .extra import import_ray

__all__ = ["QUIET_ENV", "quiet_env", "quiet_worker", "quiet_logs", "init_local", "connect", "shutdown"]

#: Environment for quiet local runs, set (unless already set) before ``ray.init``.
QUIET_ENV: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",  # else a token-auth warning and ~/.ray/auth_token
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with RunConfig(verbose=0): no progress tables
}


def quiet_env() -> None:
    """Set :data:`QUIET_ENV` in ``os.environ``, keeping values already there."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def quiet_worker() -> None:
    """``worker_process_setup_hook`` of :func:`init_local`: Ray's train/tune loggers in the
    trial processes log at INFO ("Checkpoint successfully created at ...") whatever the
    driver's ``logging_level``; keep their warnings and errors only."""
    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet_env()
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
    import_ray().shutdown()


def connect(address: str = "auto", **init_kwargs: Any) -> bool:
    """Connect to a running Ray cluster (``ray.init(address=address)``); returns whether this
    call connected (``False`` when Ray is already initialised in this process)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet_env()
    ray.init(address=address, **init_kwargs)
    return True


@contextlib.contextmanager
def quiet_logs(path: str | os.PathLike | None = None) -> Iterator[None]:
    """While active, the driver's Ray log records go to the file ``path`` (appended; ``None``:
    nowhere) instead of the terminal.

    Ray logs through its ``"ray"`` logger, which does not propagate to the root logger: on a
    restore after a kill, Tune logs every trial it could not resume as an ERROR with a traceback
    ("Trial task failed for trial ..."), although the trial is then retried or reported failed
    (:func:`~auxilearn_hpo.integrations.ray_tune.records` says which). :func:`run` uses this with
    ``verbose=0``. The handlers are restored on exit.
    """
    logger = logging.getLogger("ray")
    handlers, propagate = list(logger.handlers), logger.propagate
    if path is None:
        handler: logging.Handler = logging.NullHandler()
    else:
        handler = logging.FileHandler(os.fspath(path), encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for old in handlers:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        for old in handlers:
            logger.addHandler(old)
        logger.propagate = propagate
