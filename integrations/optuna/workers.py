"""Workers: which process runs a trial, whether it still lives, and failing the trials of the dead.

A trial's ``user_attrs["worker"]`` (written first by the objective) names its process; a trial
left RUNNING by a process that is gone is failed by :func:`fail_dead_trials`, the fallback for
storages that record no heartbeat (see :mod:`.storage`).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from .extra import import_optuna

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["pid_namespace", "worker_info", "worker_gone", "fail_dead_trials", "DEAD_WORKER"]

_logger = logging.getLogger(__name__)

#: The reason (:func:`~.reading.failure_reason`) of a trial failed because its worker process was gone.
DEAD_WORKER = "killed: its worker process was gone"


def _process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return None if fields[0] == b"Z" else int(fields[19])  # a zombie counts as gone
    except (OSError, IndexError, ValueError):
        return None


def pid_namespace() -> str | None:
    """The PID namespace (Linux), so that containers sharing a hostname never judge each other's pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        return None


def worker_info() -> dict[str, Any]:
    """Who runs this process: ``{"host", "ns", "pid", "started"}`` (see :func:`worker_gone`)."""
    return {"host": socket.gethostname(), "ns": pid_namespace(), "pid": os.getpid(),
            "started": _process_start(os.getpid())}


def worker_gone(worker: Any) -> bool:
    """True only when ``worker`` ran on this host and its process no longer exists."""
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname() or os.name == "nt":
        return False  # unknown, another machine, or no safe liveness check (os.kill would terminate)
    if worker.get("ns") != pid_namespace():
        return False  # another container: its pids mean nothing here
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: alive, owned by someone else
        return False
    started = worker.get("started")
    now = _process_start(pid)
    if started is not None and now != started:
        return True  # a zombie, or the pid now belongs to another process
    return False



def fail_dead_trials(study: "optuna.Study") -> list[int]:
    """Mark FAIL every RUNNING trial whose worker process (on this host) is gone; returns their numbers.

    A process killed mid-trial leaves its trial RUNNING forever; such trials would count as
    in progress and keep :func:`run` from finishing the study. Trials run on another host, or
    without a ``worker`` attribute (a trial just starting elsewhere), are left alone. This is
    the fallback for storages without Optuna's heartbeat: ``JournalStorage`` (Optuna 5 records no
    heartbeats there) and RDB storages opened without ``heartbeat_interval``. With a heartbeat,
    :func:`run` leaves dead workers to Optuna (:func:`fail_stale_trials`), which also sees
    workers on other machines.
    """
    optuna = import_optuna()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker_gone(worker):
            try:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            except (ValueError, RuntimeError):  # another worker got there first
                continue
            _logger.warning("trial %d was left RUNNING by process %s on %s, which is gone: marked FAIL",
                            t.number, worker.get("pid"), worker.get("host"))
            failed.append(t.number)
    return failed

