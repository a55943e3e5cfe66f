"""The run folder of ``auxilearn-hpo tune --out DIR``: its record, fingerprint, locks and move-aside.

``run.json`` records the run's settings (benchmark, backend, epochs, seed, weightings, solvers,
the search space, the learner settings ``--set`` fixes for every trial, trials) with a
fingerprint: an HMAC-SHA256 of those settings under a key private to this user account
(``$XDG_CONFIG_HOME/auxilearn-hpo/run-key``, created on first use). Resuming restores
Ray Tune's pickled ``tuner.pkl``, which can run code, so a run folder is trusted input: ``tune``
refuses to resume a folder whose ``run.json`` is missing or carries another key's fingerprint.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterator

from .errors import UsageError

__all__ = ["FORMAT", "check_out", "key_file", "fingerprint", "write_meta", "read_meta", "peek_meta",
           "ray_experiments", "recorded_state", "move_aside", "locked", "check_sqlite"]

FORMAT = 2  # 2: weightings/solvers (was combiners/methods)


def check_out(path: Path) -> Path:
    """``path`` resolved, created if missing and checked writable (a one-line UsageError if not)."""
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path} is not a writable folder: {err.strerror or err}") from None
    return path


def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "auxilearn-hpo" / "run-key"


def _key() -> bytes:
    """This account's fingerprint key, created (0600) on first use."""
    path = key_file()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    except ValueError:
        raise UsageError(f"{path} is not a key written by auxilearn-hpo; remove it to make a new one") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it just now
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def fingerprint(meta: dict[str, Any]) -> str:
    """The HMAC-SHA256 of ``meta`` (its ``fingerprint`` key left out) under this account's key."""
    body = json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(_key(), body.encode(), hashlib.sha256).hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write ``out/run.json`` (atomically) with its fingerprint."""
    meta = {k: v for k, v in meta.items() if k != "fingerprint"}
    _write_json(out / "run.json", {**meta, "fingerprint": fingerprint(meta)})


def ray_experiments(out: Path) -> list[Path]:
    """The Ray Tune experiment folders of a run: ``ray``, then ``ray-2``, ``ray-3``, ... in order."""
    found = []
    for path in out.glob("ray*"):
        suffix = path.name[3:]
        if path.is_dir() and (suffix == "" or (suffix.startswith("-") and suffix[1:].isdigit())):
            found.append((int(suffix[1:] or 1), path))
    return [p for _, p in sorted(found)]


def recorded_state(out: Path) -> list[Path]:
    """What a previous run left in ``out``: the study, Ray experiments, run.json, tables."""
    names = ["run.json", "study.db", "reports.csv", "trials.csv", "weights.csv"]
    return [out / n for n in names if (out / n).exists()] + ray_experiments(out)


def peek_meta(out: Path) -> dict[str, Any]:
    """``run.json`` as recorded, unchecked, or ``{}``: only to learn which extras a rerun needs
    before anything is written (:func:`read_meta` checks it under the folder's lock)."""
    try:
        meta = json.loads((out / "run.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def read_meta(out: Path) -> dict[str, Any]:
    """``run.json`` of a folder that holds a previous run, checked: present, parseable, ours."""
    path = out / "run.json"
    if not path.exists():
        raise UsageError(f"{out} holds a previous run but no run.json written by auxilearn-hpo; refusing to resume "
                         "it (run folders are trusted input); use a new --out, or --restart to move it aside")
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path} is damaged ({type(err).__name__}: {' '.join(str(err).split())[:100]}); use a "
                         "new --out, or --restart to move the run aside") from None
    recorded = meta.get("fingerprint")
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded, fingerprint(meta)):
        raise UsageError(f"{path} was not written by auxilearn-hpo under this account (its fingerprint does not "
                         f"match the key in {key_file()}); resuming would load pickled files from the folder, "
                         "so it is refused (run folders are trusted input); use a new --out, or --restart to "
                         "move it aside")
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} was written by another version of auxilearn-hpo (run format {meta.get('format')}, "
                         f"this one reads {FORMAT}); use a new --out, or --restart to move the run aside")
    return meta


def move_aside(out: Path, state: list[Path]) -> Path:
    """Move a recorded run (``state``, and the plots) into ``out/previous-<time>/``; returns that folder."""
    target = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while target.exists():
        n += 1
        target = out / f"previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    target.mkdir()
    for path in state + sorted(out.glob("*.png")):
        os.replace(path, target / path.name)
    return target


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (POSIX; elsewhere nothing is locked); yields whether it was got."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_sqlite(path: Path) -> None:
    """A one-line UsageError when ``path`` is not a whole SQLite database (cut short, overwritten)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error as err:
        raise UsageError(f"{path} is damaged ({' '.join(str(err).split())}); Optuna cannot resume it: use a new "
                         "--out, or --restart to move the run aside") from None
    if rows != [("ok",)] or "studies" not in tables:
        problem = "; ".join(str(r[0]) for r in rows[:2]) if rows != [("ok",)] else "no Optuna tables"
        raise UsageError(f"{path} is damaged ({problem}); Optuna cannot resume it: use a new --out, or --restart "
                         "to move the run aside")
