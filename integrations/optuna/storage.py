"""Storage: Optuna's storage from a URL or object, locks every worker shares, and the heartbeat.

* :func:`resolve_storage` / :func:`open_storage`: what :func:`~.study.run` passes to Optuna (an
  ``RDBStorage`` with heartbeat settings for a URL, created under a lock);
* :func:`storage_lock`: a lock shared by every process using a storage (a PostgreSQL advisory
  lock, an ``flock`` beside a SQLite file);
* :func:`heartbeat_enabled` / :func:`fail_stale_trials`: dead workers through Optuna's heartbeat,
  or through :func:`~.workers.fail_dead_trials` where there is none.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .extra import import_optuna
from .workers import fail_dead_trials

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["SQLITE_TIMEOUT", "resolve_storage", "open_storage", "report_heartbeat_errors", "storage_lock",
           "heartbeat_enabled", "fail_stale_trials"]

_logger = logging.getLogger(__name__)


def _default_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy then wants psycopg2; with only psycopg 3
    installed (``pip install auxilearn-hpo[postgres]``) use it instead. Any other URL is unchanged."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def resolve_storage(storage: Any) -> Any:
    """What :func:`run` passes to ``optuna.create_study(storage=...)``: Optuna's own choices.

    ``None`` -> in memory; a database URL (any SQLAlchemy URL: ``"sqlite:///study.db"``,
    ``"postgresql+psycopg://user@host/db"``, ``"mysql+pymysql://..."``) as it is, except that a
    driverless ``postgresql://`` uses psycopg 3 when psycopg2 is not installed; an Optuna storage
    object (``RDBStorage``, ``JournalStorage(JournalFileBackend(path))``, ...) as it is. A file
    path is refused: Optuna picks the storage by URL or object, not by file name.
    """
    optuna = import_optuna()
    if storage is None or isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, str) and "://" in storage:
        return _default_driver(storage)
    raise ValueError(
        f"storage must be None, a database URL (sqlite:///path/study.db, postgresql+psycopg://user@host/db) or an "
        f"Optuna storage object (JournalStorage(JournalFileBackend(path)) for a journal file); got {storage!r}")


def open_storage(storage: Any, **rdb_options: Any) -> Any:
    """A URL becomes an ``RDBStorage`` with ``rdb_options`` (heartbeat settings), created while
    holding :func:`storage_lock` on the database: several processes starting on a new database would
    otherwise all create its tables, and all but one fail with ``table ... already exists``.
    Anything else is returned as it is (``rdb_options`` must then be empty)."""
    options = {k: v for k, v in rdb_options.items() if v is not None}
    if not isinstance(storage, str):
        if options:
            raise ValueError(f"{', '.join(sorted(options))} apply to a storage given as a URL; set them on the "
                             f"storage object instead (RDBStorage(url, heartbeat_interval=...))")
        return storage
    optuna = import_optuna()
    callback = options.pop("stale_trial_callback", None)
    if callback is not None:  # Optuna 4.9 renamed failed_trial_callback
        import inspect

        params = inspect.signature(optuna.storages.RDBStorage).parameters
        name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
        options[name] = callback
    if storage.startswith("sqlite:"):  # writers wait for each other instead of failing after 5 s
        options.setdefault("engine_kwargs", {"connect_args": {"timeout": SQLITE_TIMEOUT}})
    report_heartbeat_errors()
    import warnings

    with storage_lock(storage, "schema"), warnings.catch_warnings():
        # The heartbeat is "experimental" in Optuna 5 (it has been since 2.9); it is chosen here on purpose.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(storage, **options)


SQLITE_TIMEOUT = 60.0
"""Seconds a connection to a SQLite study waits for another's write (SQLite's busy timeout);
Python's default of 5 s is too short for several workers, or a heartbeat, on a loaded machine."""


def report_heartbeat_errors() -> None:
    """Make a heartbeat thread that dies on a storage error log one line instead of a traceback
    (installed once per process; every other thread's exception goes to the previous hook)."""
    previous = threading.excepthook
    if getattr(previous, "_auxilearn_hpo", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        name = getattr(args.thread, "name", "") or ""
        if "_record_heartbeat" in name and isinstance(args.exc_value, Exception):
            cause = args.exc_value.__cause__ or args.exc_value
            _logger.warning("a trial's heartbeat could not be recorded (%s: %s); workers sharing the study may "
                            "fail that trial as stale", type(cause).__name__, " ".join(str(cause).split())[:120])
            return
        previous(args)

    hook._auxilearn_hpo = True  # type: ignore[attr-defined]
    threading.excepthook = hook


_THREAD_LOCK = threading.RLock()
_LOCK_ENGINES: dict[str, Any] = {}


def _rdb_url(storage: Any) -> str | None:
    """The SQLAlchemy URL (password included) of an RDB storage or URL, else None."""
    if isinstance(storage, str):
        return storage
    engine = getattr(storage, "engine", None)
    url = getattr(engine, "url", None)
    return url.render_as_string(hide_password=False) if url is not None else None


@contextlib.contextmanager
def storage_lock(storage: Any, purpose: str) -> Iterator[None]:
    """Hold a lock shared by every process using ``storage``: a PostgreSQL advisory lock (so every
    machine on that server takes part), an ``flock`` on a SQLite file (processes on this machine);
    other storages get a lock of this process only. ``purpose`` keeps unrelated locks apart."""
    with _THREAD_LOCK:
        url = _rdb_url(storage)
        backend = url.split(":", 1)[0].split("+", 1)[0] if url else ""
        if backend == "postgresql":
            import hashlib

            import sqlalchemy

            engine = _LOCK_ENGINES.get(url)
            if engine is None:
                engine = _LOCK_ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
            key = int.from_bytes(hashlib.sha256(f"auxilearn-hpo:{purpose}".encode()).digest()[:8], "big",
                                 signed=True)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    conn.commit()
            return
        path = url[len("sqlite:///"):].split("?", 1)[0] if backend == "sqlite" and url.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        # A lock file beside the database, never the database itself: closing any descriptor of
        # the database file drops every POSIX lock SQLite's own connections in this process hold
        # on it (https://www.sqlite.org/howtocorrupt.html, section 2.2).
        db = Path(path)
        with open(db.with_name(f".{db.name}.lock"), "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def heartbeat_enabled(storage: Any) -> bool:
    """Whether ``storage`` (or a study's) records Optuna heartbeats (``RDBStorage(url,
    heartbeat_interval=...)``), so that trials of dead workers go stale and are failed."""
    storage = getattr(storage, "_storage", storage)  # a Study
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


def fail_stale_trials(study: "optuna.Study") -> None:
    """Fail the trials whose worker is gone: through Optuna's heartbeat
    (``optuna.storages.fail_stale_trials``, which also runs the storage's stale-trial callback,
    e.g. ``RetryHeartbeatStaleTrialCallback``) when the storage records
    heartbeats; otherwise (JournalStorage, in memory, an RDB storage without heartbeat) through
    :func:`fail_dead_trials`, which sees workers on this host only."""
    optuna = import_optuna()
    if heartbeat_enabled(study):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    else:
        fail_dead_trials(study)
