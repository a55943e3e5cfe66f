"""``auxilearn-hpo tune`` and ``auxilearn-hpo report``: the main job from the command line.

``tune`` searches the outer settings of AuxiLearn on a shipped benchmark with Ray Tune or
Optuna, prints the best trials and writes ``reports.csv``, ``trials.csv``, ``weights.csv`` and
plots to ``--out``. Running the same command again resumes the search stored in ``--out``
(Optuna: ``study.db``; Ray Tune: the experiment folders ``ray/``, ``ray-2/``, ...) instead of
starting over. ``report DIR`` prints the tables again from disk.

The run folder
--------------
``run.json`` records the run's settings (benchmark, backend, epochs, seed, weightings, solvers,
the search space, the learner settings ``--set`` fixes for every trial, trials) with a
fingerprint: an HMAC-SHA256 of those settings under a key private to this user account
(``$XDG_CONFIG_HOME/auxilearn-hpo/run-key``, created on first use). Resuming restores
Ray Tune's pickled ``tuner.pkl``, which can run code, so a run folder is trusted input: ``tune``
refuses to resume a folder whose ``run.json`` is missing or carries another key's fingerprint.
A rerun whose settings conflict with the recorded ones stops with a one-line message (mixing
3-epoch and 6-epoch trials in one ranking would be meaningless); ``--restart`` moves the
recorded run into ``DIR/previous-<time>/`` and starts a new one. Nothing recorded is rewritten
before the search returns: ``run.json`` is written when a folder is new, and its trial count is
updated after the search; the tables are replaced atomically.

Progress: Optuna logs a line per finished trial; while a trial runs, a line redrawn in place on
stdout shows its epoch, validation metric and time, only when stdout is a terminal (``--quiet``
silences both). Trials run torch on ``--threads`` threads (default 1): the shipped benchmarks'
tensors are tiny, and a second thread only adds waiting (on a busy machine, many times over).

Exit status: 0 when the search finished; 130 when Ctrl-C interrupted it (the tables of what ran
are written; rerun the same command to resume); 1 when every trial failed; 2 for bad input.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import math
import os
import secrets
import shutil
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = ["tune", "report"]

_SHOW = ["trial_id", "status", "config/weighting", "config/solver", "config/update_every", "config/steps",
         "config/aux_lr", "score", "best_metric", "test_metric", "epochs", "hypersteps", "wall_time"]
#: Settings recorded in run.json that a rerun must not change (flag, run.json key).
_RECORDED = (("--benchmark", "benchmark"), ("--backend", "backend"), ("--epochs", "epochs"), ("--seed", "seed"),
             ("--weightings", "weightings"), ("--solvers", "solvers"), ("--set", "set"), ("--storage", "storage"),
             ("--study", "study"), ("--space", "space"))
_FORMAT = 2  # 2: weightings/solvers (was combiners/methods)
_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line input or an unusable run folder; printed as one line without a traceback."""


def _parser() -> argparse.ArgumentParser:
    from auxilearn_hpo.bench import add_set_option
    from auxilearn_hpo.tasks import names

    ap = argparse.ArgumentParser(
        prog="auxilearn-hpo tune",
        description="Search the outer settings of AuxiLearn on a shipped benchmark with Optuna or Ray Tune, "
                    "print the best trials and write trials.csv, weights.csv, reports.csv and plots to --out. "
                    "Running the same command again resumes the search stored in --out.")
    # Defaults are None so that a rerun can tell a setting given on the command line from one
    # left out (which then comes from the recorded run).
    ap.add_argument("--benchmark", default=None, help=f"one of {names()} (default: digits)")
    ap.add_argument("--backend", default=None, choices=["optuna", "ray"], help="default: optuna")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials in total, resumed runs included (default 12, or the recorded run's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (default: the benchmark's)")
    ap.add_argument("--out", default=None, help="output folder (default: runs/<benchmark>)")
    ap.add_argument("--seed", type=int, default=None, help="data split and model seed of every trial (default 0)")
    ap.add_argument("--weightings", nargs="+", default=None,
                    help="weightings to search over (learned ones and/or baselines; default: linear nonlinear)")
    ap.add_argument("--solvers", nargs="+", default=None,
                    help="hypergradient solvers to search over (default: neumann cg)")
    ap.add_argument("--space", default=None, choices=["default", "warm"],
                    help="Optuna backend: 'warm' also searches warm starts and hold_gain (a trial may train the "
                         "best learned linear weights held fixed, the auxiliaries times a searched gain; "
                         "integrations.space.warm_space) (default: default)")
    add_set_option(ap, "every trial, taken out of the search (e.g. --set steps=0 --set fused=true)")
    ap.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna backend: the study's database as a SQLAlchemy URL, e.g. "
                         "postgresql+psycopg://user@host:5432/db (default: sqlite:///<out>/study.db); workers on "
                         "several machines that name the same URL and --study share one study")
    ap.add_argument("--study", default=None, metavar="NAME", help="Optuna study name (default: the benchmark's name)")
    ap.add_argument("--workers", type=int, default=1, metavar="N",
                    help="Optuna backend: worker processes on this machine sharing the study (default 1)")
    ap.add_argument("--threads", type=int, default=1, metavar="N",
                    help="Optuna backend: torch threads of each worker process (default 1: the shipped benchmarks' "
                         "models are small, and more threads on their tiny tensors only add waiting)")
    ap.add_argument("--heartbeat", type=int, default=10, metavar="SECONDS",
                    help="Optuna backend: seconds between a running trial's heartbeats; a trial silent for twice "
                         "as long (its worker died) is marked failed and its place run again (default 10)")
    ap.add_argument("--restart", action="store_true",
                    help="move the run recorded in --out to --out/previous-<time>/ and start a new one there")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--quiet", action="store_true",
                    help="no per-trial lines and no per-epoch progress line (that line is drawn only on a terminal)")
    return ap


# ------------------------------------------------------------------------------ run folder
def _check_out(path: Path) -> Path:
    path = path.expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path} is not a writable folder: {err.strerror or err}") from None
    return path


def _key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "auxilearn-hpo" / "run-key"


def _key() -> bytes:
    """This account's fingerprint key, created (0600) on first use."""
    path = _key_file()
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


def _fingerprint(meta: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in meta.items() if k != "fingerprint"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(_key(), body.encode(), hashlib.sha256).hexdigest()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    meta = {k: v for k, v in meta.items() if k != "fingerprint"}
    _write_json(out / "run.json", {**meta, "fingerprint": _fingerprint(meta)})


def _ray_experiments(out: Path) -> list[Path]:
    """The Ray Tune experiment folders of a run: ``ray``, then ``ray-2``, ``ray-3``, ... in order."""
    found = []
    for path in out.glob("ray*"):
        suffix = path.name[3:]
        if path.is_dir() and (suffix == "" or (suffix.startswith("-") and suffix[1:].isdigit())):
            found.append((int(suffix[1:] or 1), path))
    return [p for _, p in sorted(found)]


def _recorded_state(out: Path) -> list[Path]:
    """What a previous run left in ``out``: the study, Ray experiments, run.json, tables."""
    names = ["run.json", "study.db", "reports.csv", "trials.csv", "weights.csv"]
    return [out / n for n in names if (out / n).exists()] + _ray_experiments(out)


def _read_meta(out: Path) -> dict[str, Any]:
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
    if not isinstance(recorded, str) or not hmac.compare_digest(recorded, _fingerprint(meta)):
        raise UsageError(f"{path} was not written by auxilearn-hpo under this account (its fingerprint does not "
                         f"match the key in {_key_file()}); resuming would load pickled files from the folder, "
                         "so it is refused (run folders are trusted input); use a new --out, or --restart to "
                         "move it aside")
    if meta.get("format") != _FORMAT:
        raise UsageError(f"{path} was written by another version of auxilearn-hpo (run format {meta.get('format')}, "
                         f"this one reads {_FORMAT}); use a new --out, or --restart to move the run aside")
    return meta


def _move_aside(out: Path, state: list[Path]) -> Path:
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
def _locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
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


def _check_sqlite(path: Path) -> None:
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


# ------------------------------------------------------------------------------ settings
#: LearnerConfig fields that ``--set`` cannot fix: the search's own flags name them.
_NOT_SETTABLE = {"solver": "--solvers"}


def _fixed_settings(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, Any] | None:
    """``--set`` as a dict of checked ``LearnerConfig`` fields (``None`` when not given); exit 2 if bad."""
    from auxilearn_hpo.bench import learner_settings

    if not items:
        return None
    fixed = learner_settings(ap, items)
    for key, flag in _NOT_SETTABLE.items():
        if key in fixed:
            ap.error(f"--set {key}=... : use {flag} to choose it")
    return fixed


def _settings(args: argparse.Namespace, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: the command line over the recorded run over the defaults; a setting given
    on the command line that differs from the recorded one is a UsageError naming both."""
    given = {"benchmark": args.benchmark, "backend": args.backend, "epochs": args.epochs, "seed": args.seed,
             "weightings": args.weightings, "solvers": args.solvers, "set": args.set,
             "storage": _shown_url(args.storage) if args.storage else None, "study": args.study,
             "space": args.space}
    if recorded is not None:
        for flag, key in _RECORDED:
            mine, theirs = given[key], recorded.get(key)
            if key == "set" and mine is not None and theirs is None:
                theirs = {}  # a run recorded before --set existed fixed nothing
            if key == "space" and theirs is None:
                theirs = "default"  # a run recorded before --space existed searched the default space
            if mine is not None and theirs is not None and mine != theirs:
                shown = _shown(flag, theirs)
                again = f"with {shown} (or without {flag})" if theirs != {} else f"without {flag}"
                raise UsageError(
                    f"{_shown(flag, mine)} conflicts with the run recorded in {args.out_path} "
                    f"({shown if theirs != {} else 'no --set'}); rerun {again} to resume it, or pass --restart "
                    "to move the recorded run aside and start a new one")
        given = {k: (v if v is not None else recorded.get(k)) for k, v in given.items()}
    defaults = {"benchmark": "digits", "backend": "optuna", "seed": 0, "weightings": ["linear", "nonlinear"],
                "solvers": ["neumann", "cg"], "set": {}, "space": "default"}
    return {k: (v if v is not None else defaults.get(k)) for k, v in given.items()}


def _shown(flag: str, value: Any) -> str:
    """A setting as it is written on the command line: ``--solvers neumann cg``, ``--set steps=0 --set ...``."""
    if isinstance(value, dict):
        return " ".join(f"{flag} {k}={json.dumps(v)}" for k, v in value.items())
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def _validate(settings: dict[str, Any], trials: int) -> Any:
    """Check the settings before anything is written; returns the benchmark's task."""
    from auxilearn_hpo.tasks import make_task, names
    from auxilearn_hpo.registry import weighting_names

    if settings["benchmark"] not in names():
        raise UsageError(f"unknown --benchmark {settings['benchmark']!r}; choose one of {names()}")
    if settings["backend"] not in ("optuna", "ray"):
        raise UsageError(f"--backend must be 'optuna' or 'ray', got {settings['backend']!r}")
    if trials < 1:
        raise UsageError(f"--trials must be >= 1, got {trials}")
    if settings["epochs"] is not None and (not isinstance(settings["epochs"], int) or settings["epochs"] < 1):
        raise UsageError(f"--epochs must be an integer >= 1, got {settings['epochs']}")
    if not isinstance(settings["seed"], int) or settings["seed"] < 0:
        raise UsageError(f"--seed must be an integer >= 0, got {settings['seed']}")
    bad = [c for c in settings["weightings"] if c not in weighting_names()]
    if bad:
        raise UsageError(f"unknown --weightings {bad}; choose from {weighting_names()}")
    bad = [m for m in settings["solvers"] if m not in ("neumann", "cg", "exact")]
    if bad:
        raise UsageError(f"unknown --solvers {bad}; choose from ['neumann', 'cg', 'exact']")
    try:
        task = make_task(settings["benchmark"], seed=settings["seed"])
    except (ValueError, TypeError) as err:
        raise UsageError(f"--benchmark {settings['benchmark']} --seed {settings['seed']}: {err}") from None
    _check_weightings(task, settings["weightings"])
    _check_fixed(settings)
    if settings["space"] == "warm" and settings["backend"] != "optuna":
        raise UsageError("--space warm applies to --backend optuna (Ray Tune's ASHA would stop held trials by "
                         "their early epochs)")
    return task


def _check_fixed(settings: dict[str, Any]) -> None:
    """``--set`` must build a trial with every weighting and solver searched (e.g. ``steps=0`` is
    not a CG iteration count, ``compile`` not for gradient alignment)."""
    from auxilearn_hpo.integrations.trial import Trial

    if not settings["set"]:
        return
    for weighting in settings["weightings"]:
        for solver in settings["solvers"]:
            config = {**settings["set"], "weighting": weighting, "solver": solver, "epochs": 1,
                      "seed": settings["seed"]}
            try:
                Trial(settings["benchmark"], config)
            except (ValueError, TypeError) as err:
                raise UsageError(f"{_shown('--set', settings['set'])} does not combine with --weightings {weighting} "
                                 f"--solvers {solver}: {' '.join(str(err).split())[:200]}") from None


def _check_weightings(task: Any, weightings: list[str]) -> None:
    """Each weighting must accept this task's loss matrix (``conv`` needs ``(B, T, H, W)``)."""
    import torch

    from auxilearn_hpo.registry import make_weighting

    with torch.no_grad():
        losses = task.loss_fn(task.model, next(iter(task.train_loader)))
    shape = "(B, " + ", ".join(["T", "H", "W"][: losses.dim() - 1]) + ")" if losses.dim() <= 4 else str(
        tuple(losses.shape))
    for name in weightings:
        try:
            make_weighting(name, len(task.task_names), task_names=list(task.task_names)).check(losses)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--weightings {name} cannot combine the {shape} losses of benchmark {task.name!r} "
                             f"({' '.join(str(err).split())[:160]})") from None


# ------------------------------------------------------------------------------ printing
def _print_tables(trials, out: Path | None = None) -> None:
    import pandas as pd

    from auxilearn_hpo.results import summary_frame

    cols = [c for c in _SHOW if c in trials.columns]
    # --space warm: which trials held whose weights, at what gain
    held = trials["config/held_from"].notna() if "config/held_from" in trials.columns else None
    any_held = held is not None and bool(held.any())
    if any_held:
        at = cols.index("config/weighting") + 1 if "config/weighting" in cols else len(cols)
        cols[at:at] = [c for c in ("config/hold_gain", "config/held_from") if c in trials.columns]
    wcols = [c for c in trials.columns if c.startswith("weights/")]
    counts = trials["status"].value_counts().to_dict() if "status" in trials.columns else {}
    breakdown = ", ".join(f"{n} {s}" for s, n in counts.items())
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\nBest trials ({len(trials)} in total{': ' + breakdown if breakdown else ''}):")
        print(trials[cols].head(5).to_string(index=False))
        if wcols and len(trials):
            print("\nLearned effective weights of the best trial:")
            print(trials[wcols].head(1).rename(columns=lambda c: c.split("/", 1)[1]).to_string(index=False))
        if "config/weighting" in trials.columns and len(trials):
            note = " (held: trials that trained another trial's weights held fixed, whatever weighting they drew)"
            print(f"\nBest metric by weighting{note if any_held else ''}:")
            by = trials.assign(**{"config/weighting": trials["config/weighting"].where(~held, "held")}) \
                if any_held else trials
            print(summary_frame(by, by="config/weighting").to_string())
    if out is not None:
        print(f"\nTables in {out}: trials.csv, weights.csv, reports.csv")


# ------------------------------------------------------------------------------ tune
def tune(argv: list[str] | None = None) -> int:
    """Run (or resume) a search; returns the process exit status."""
    ap = _parser()
    args = ap.parse_args(argv)
    args.set = _fixed_settings(ap, args.set)
    try:
        return _tune(args)
    except UsageError as err:
        print(f"auxilearn-hpo tune: error: {err}", file=sys.stderr)
        return 2


def _tune(args: argparse.Namespace) -> int:
    from auxilearn_hpo.results import TableError, trials_frame, write_tables

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.heartbeat < 1:
        raise UsageError(f"--heartbeat must be >= 1 (seconds), got {args.heartbeat}")
    if args.storage is not None and "://" not in args.storage:
        raise UsageError(f"--storage must be a database URL such as postgresql+psycopg://user@host:5432/db or "
                         f"sqlite:///path/study.db, got {args.storage!r}")
    out = _check_out(Path(args.out or f"runs/{args.benchmark or 'digits'}"))
    args.out_path = out
    # One process at a time decides what the folder holds and records a new run; a second worker
    # started at the same moment then finds the first one's run.json and study and joins them.
    with _locked(out / ".auxilearn-hpo.lock"):
        state = _recorded_state(out)
        recorded = _read_meta(out) if state and not args.restart else None
        settings = _settings(args, recorded)
        trials = args.trials or (recorded or {}).get("trials") or 12
        task = _validate(settings, trials)
        if state and args.restart:  # only once the new settings are known to be good
            moved = _move_aside(out, state)
            print(f"auxilearn-hpo tune: moved the recorded run to {moved}")
        if settings["backend"] == "ray" and (args.workers > 1 or settings["storage"] or settings["study"]):
            raise UsageError("--workers, --storage and --study apply to --backend optuna (Ray Tune places its "
                             "trials itself: see examples/cluster.md)")
        url = _storage_url(out, settings, args.storage)
        epochs = settings["epochs"] or task.defaults.epochs
        settings["epochs"] = epochs
        meta = {"format": _FORMAT, **settings, "trials": trials, "mode": task.mode, "metric": task.metric_name}
        if recorded is None:
            _write_meta(out, meta)  # a new run: recorded before the search, so it can be resumed
        if settings["backend"] == "optuna":
            if settings["storage"] is None and (out / "study.db").exists():
                _check_sqlite(out / "study.db")
            _create_optuna_storage(url)
        else:
            from auxilearn_hpo.integrations.ray_tune import check_experiment

            for exp in _ray_experiments(out):
                if (exp / "tuner.pkl").exists():
                    try:
                        check_experiment(exp)
                    except ValueError as err:
                        raise UsageError(f"{err}; use a new --out, or --restart to move the run aside") from None
    fixed: dict[str, Any] = {**settings["set"], "epochs": epochs, "seed": settings["seed"]}
    args.metric_name = task.metric_name
    verb = "resuming" if recorded is not None else "starting"
    every = f", every trial with {_shown('--set', settings['set'])}" if settings["set"] else ""
    print(f"auxilearn-hpo tune: {verb} {settings['benchmark']} ({task.metric_name}, "
          f"{'higher' if task.mode == 'max' else 'lower'} is better), {trials} trials x {epochs} epochs with "
          f"{settings['backend']}{every}, output in {out}")
    start = time.perf_counter()
    interrupted = False
    try:
        with _SigintSeen() as sigint, sigint.as_interrupt():
            if settings["backend"] == "optuna" and args.workers > 1:
                source = _run_optuna_workers(args, settings, fixed, url, trials)
            elif settings["backend"] == "optuna":
                import torch

                torch.set_num_threads(args.threads)
                source = _run_optuna(args, settings, fixed, url, trials)
            else:
                with _locked(out / ".ray.lock", wait=False) as got:
                    if not got:
                        raise UsageError(f"another auxilearn-hpo process is running the Ray Tune search in {out}; "
                                         "Ray Tune cannot share an experiment (wait for it, or use --backend "
                                         "optuna for several workers)")
                    source = _run_ray(args, settings, fixed, out, trials)
    except KeyboardInterrupt:
        interrupted = True
        try:
            source = _stored_source(out, settings, url)
        except (UsageError, ImportError):
            print(f"\nauxilearn-hpo tune: interrupted before any trial was stored in {out}; rerun the same "
                  "command to start it", file=sys.stderr)
            return _INTERRUPTED
    try:
        if settings["backend"] == "ray" and not interrupted:  # Ray stops on Ctrl-C and fit() returns
            interrupted = any(_unfinished(grid) for grid in source)
        first_error = _first_error(source)
        source = _records(source)
        frame = trials_frame(source)
        written = write_tables(source, out, plots=not args.no_plots and not interrupted)
    except (TableError, ValueError, OSError) as err:
        raise UsageError(f"could not write the tables to {out}: {' '.join(str(err).split())[:200]}") from None
    except KeyboardInterrupt:
        print(f"\nauxilearn-hpo tune: interrupted while writing the tables; the previous ones in {out} are "
              "intact; rerun the same command to resume", file=sys.stderr)
        return _INTERRUPTED
    counts = frame["status"].value_counts().to_dict()
    if interrupted:
        _print_tables(frame, out)
        done = counts.get("completed", 0) + counts.get("pruned", 0)
        print(f"\nauxilearn-hpo tune: interrupted after {time.perf_counter() - start:.0f} s: {done} of {trials} "
              f"trials finished ({', '.join(f'{n} {s}' for s, n in counts.items())}); rerun the same command "
              "to resume", file=sys.stderr)
        return _INTERRUPTED
    if recorded is not None and trials > int(recorded.get("trials") or 0):
        _write_meta(out, {**recorded, "trials": trials})  # the search brought the run to this total
    print(f"\nFinished in {time.perf_counter() - start:.0f} s.")
    _print_tables(frame, out)
    extra = sorted(p.name for p in written.values() if p.suffix == ".png")
    if extra:
        print(f"Plots: {', '.join(extra)}")
    if len(frame) and not frame["status"].isin(["completed", "pruned"]).any():
        print(f"auxilearn-hpo tune: error: all {len(frame)} trials failed{first_error}", file=sys.stderr)
        return 1
    return 0


class _SigintSeen:
    """Ctrl-C as a request to stop. The first one is recorded, and the running trial stops at
    the end of its epoch (:meth:`watch` raises ``KeyboardInterrupt`` there, between storage
    calls); a block that ends without one raises it on exit. A second Ctrl-C raises at once.

    Raising from the signal handler itself lands anywhere, also inside a storage commit: a
    SQLite connection cut short there keeps the database locked, and the writes that label the
    trial then wait out the busy timeout (the likely reason a run once took minutes to stop).
    An error that a second Ctrl-C causes inside a library still counts as the interruption
    (:meth:`as_interrupt`)."""

    active: "_SigintSeen | None" = None  # the one of this process, while its block runs

    def __init__(self, announce: bool = True, stop: Any = None) -> None:
        self.announce = announce  # say on stderr that the first Ctrl-C was heard (the main process)
        self.stop = stop  # a multiprocessing Event by which the main process asks a worker to stop

    @property
    def requested(self) -> bool:
        """Whether a stop was asked: Ctrl-C here, or the main process's ``stop`` event."""
        return self.seen or (self.stop is not None and self.stop.is_set())

    def __enter__(self) -> "_SigintSeen":
        self.seen = False
        self._previous = signal.getsignal(signal.SIGINT)
        if self._previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._handler)
        _SigintSeen.active = self
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.seen:
            raise KeyboardInterrupt
        self.seen = True
        if self.announce:  # os.write: a print could re-enter a write to stderr that the signal cut into
            os.write(2, b"\nauxilearn-hpo tune: Ctrl-C: stopping after the running epoch "
                        b"(Ctrl-C again to stop at once)\n")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        _SigintSeen.active = None
        if self._previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self._previous)
        if exc_type is None and self.requested:
            raise KeyboardInterrupt

    @classmethod
    def watch(cls, progress: Callable[[int, Any, int], None] | None) -> Callable[[int, Any, int], None]:
        """A trial's per-epoch callback: raises ``KeyboardInterrupt`` after an epoch once Ctrl-C
        has been seen, then calls ``progress`` (if any)."""
        def watched(number: int, report: Any, epochs: int) -> None:
            if report is not None and cls.active is not None and cls.active.requested:
                raise KeyboardInterrupt
            if progress is not None:
                progress(number, report, epochs)
        return watched

    @contextlib.contextmanager
    def as_interrupt(self) -> Iterator[None]:
        """Re-raise any exception that follows a Ctrl-C as ``KeyboardInterrupt``."""
        try:
            yield
        except KeyboardInterrupt:
            raise
        except Exception as err:
            if self.seen:
                raise KeyboardInterrupt from err
            raise


def _first_error(source: Any) -> str:
    for t in getattr(source, "trials", None) or []:
        error = (getattr(t, "user_attrs", None) or {}).get("error")
        if error:
            return f" (first: {error})"
    return ""


def _shown_url(url: str) -> str:
    """``url`` with its password hidden (``***``): what run.json records and messages print."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: reported when the storage is opened
        return url


def _storage_url(out: Path, settings: dict[str, Any], given: str | None) -> str:
    """The URL of the run's study: ``--storage`` as given, else the recorded one, else
    ``sqlite:///<out>/study.db``."""
    if given:
        return given
    recorded = settings.get("storage")
    if not recorded:
        return f"sqlite:///{out / 'study.db'}"
    if "***" in recorded:
        raise UsageError(f"the run in {out} uses the database {recorded}, whose password run.json does not keep; "
                         "pass --storage with the full URL")
    return recorded


def _create_optuna_storage(url: str) -> None:
    """Open the study's database once, creating Optuna's tables if needed (under a lock: workers
    starting together on a new database would otherwise all create them, and one fails with
    'table already exists'); an unusable URL is a one-line UsageError naming --storage."""
    from auxilearn_hpo.integrations.optuna import _open_storage, resolve_storage

    try:
        _open_storage(resolve_storage(url))
    except ImportError as err:
        raise UsageError(f"--storage {_shown_url(url)}: its database driver is not installed ({err}); for "
                         "PostgreSQL: pip install auxilearn-hpo[postgres]") from None
    except Exception as err:  # SQLAlchemy: a bad URL, a server that cannot be reached, refused access
        detail = " ".join(str(err).split("\n")[0].split())[:200]
        raise UsageError(f"--storage {_shown_url(url)}: cannot open the database ({type(err).__name__}: {detail})") from None


def _run_optuna(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str, trials: int,
                *, worker: int | None = None):
    import optuna

    from auxilearn_hpo.integrations import optuna as aux_optuna

    # Optuna logs one line per finished trial; on a terminal, a line inside the running trial
    # shows its epochs (cleared before each of Optuna's lines).
    optuna.logging.set_verbosity(optuna.logging.WARNING if args.quiet else optuna.logging.INFO)
    space = aux_optuna.warm_space() if settings["space"] == "warm" else aux_optuna.default_space()
    space["weighting"] = aux_optuna.Categorical(tuple(settings["weightings"]))
    space["solver"] = aux_optuna.Categorical(tuple(settings["solvers"]))
    # Early epochs say little (every trial starts near chance): no pruning in the first third.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, fixed["epochs"] // 3))
    # Workers started together on a new study must not all draw the same first settings.
    sampler = None if worker is None else optuna.samplers.TPESampler(seed=worker + 1000 * args.stored_trials)
    shown = contextlib.nullcontext() if args.quiet else _Progress.on_stdout(
        args.metric_name, worker if args.workers > 1 else None)
    with shown as progress:
        _, study = aux_optuna.run(
            settings["benchmark"], n_trials=trials, space=space, fixed=fixed, storage=url,
            study_name=settings["study"] or settings["benchmark"], pruner=pruner, sampler=sampler,
            heartbeat_interval=args.heartbeat, progress=_SigintSeen.watch(progress),
            catch=(Exception,),  # a bad trial fails alone (one line, user_attrs["error"]); the study goes on
        )
    return study


class _Progress:
    """The running trial's progress as one line redrawn in place on a terminal::

        trial 3: epoch 17/60, accuracy 0.873, 12 s

    Drawn on stdout only when it is a terminal (:meth:`on_stdout` yields None otherwise), cleared
    when the trial ends and before each line Optuna logs. With ``--workers N`` every worker draws
    its own trials (prefixed ``worker i``) on the same line, each redraw one write."""

    def __init__(self, stream: Any, metric: str, worker: int | None = None) -> None:
        self.stream, self.metric, self.worker = stream, metric, worker
        self.started: dict[int, float] = {}
        self.shown = False

    @classmethod
    @contextlib.contextmanager
    def on_stdout(cls, metric: str, worker: int | None = None) -> Iterator["_Progress | None"]:
        """A progress line on stdout while the block runs, or None when stdout is not a terminal."""
        import logging

        try:
            tty = sys.stdout.isatty()
        except (AttributeError, ValueError):  # replaced or closed stdout
            tty = False
        if not tty:
            yield None
            return
        progress = cls(sys.stdout, metric, worker)
        handlers = logging.getLogger("optuna").handlers
        for handler in handlers:
            handler.addFilter(progress._before_log)
        try:
            yield progress
        finally:
            for handler in handlers:
                handler.removeFilter(progress._before_log)
            progress.clear()

    def __call__(self, number: int, report: Any, epochs: int) -> None:
        if report is None:  # the trial ended
            self.started.pop(number, None)
            self.clear()
            return
        now = time.perf_counter()
        started = self.started.setdefault(number, now - (report.seconds if math.isfinite(report.seconds) else 0.0))
        metric = f", {self.metric} {report.val_metric:.4g}" if math.isfinite(report.val_metric) else ""
        who = f"worker {self.worker}, " if self.worker is not None else ""
        text = f"{who}trial {number}: epoch {report.epoch}/{epochs}{metric}, {now - started:.0f} s"
        width = shutil.get_terminal_size((80, 24)).columns - 1  # never wrap: \r returns to this line only
        self._write("\r\033[K" + text[:max(width, 10)])
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self._write("\r\033[K")
            self.shown = False

    def _before_log(self, record: Any) -> bool:
        """A logging filter that passes every record: it clears the line first (any worker's)."""
        if self.worker is not None:
            self.shown = True  # another worker may have drawn it
        self.clear()
        return True

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: no more progress
            pass


def _optuna_worker(index: int, args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str,
                   trials: int, threads: int, stop: Any = None) -> None:
    """One of ``--workers`` processes (started with ``spawn``): run trials of the shared study."""
    import torch

    torch.set_num_threads(threads)
    try:
        with _SigintSeen(announce=False, stop=stop):  # the main process says it, and asks by `stop`
            _run_optuna(args, settings, fixed, url, trials, worker=index)
    except KeyboardInterrupt:
        sys.exit(_INTERRUPTED)
    except Exception as err:
        print(f"auxilearn-hpo tune: worker {index}: error: {type(err).__name__}: {' '.join(str(err).split())[:300]}",
              file=sys.stderr)
        sys.exit(1)


def _run_optuna_workers(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str,
                        trials: int):
    """``--workers N``: N processes on this machine run the study's trials; returns the study.

    Each process takes one place at a time (see ``integrations.optuna.run``); a worker that dies
    (``kill -9``, out of memory) leaves its trial RUNNING until its heartbeat is ``2 * --heartbeat``
    seconds old; the others then mark it failed and run its place again."""
    import multiprocessing.connection

    args.stored_trials, finished = _count_trials(url, settings)
    if finished >= trials:  # a rerun of a finished study: nothing to start
        return _stored_source(args.out_path, settings, url)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    threads = args.threads
    stop = context.Event()  # set on Ctrl-C here, for workers the signal did not reach (kill -INT <this pid>)
    procs = [context.Process(target=_optuna_worker, name=f"auxilearn-hpo-worker-{i}",
                             args=(i, args, settings, fixed, url, trials, threads, stop)) for i in range(args.workers)]
    for proc in procs:
        proc.start()
    try:
        while any(proc.is_alive() for proc in procs):
            multiprocessing.connection.wait([proc.sentinel for proc in procs if proc.is_alive()], timeout=0.5)
            if _SigintSeen.active is not None and _SigintSeen.active.seen:
                stop.set()
    except KeyboardInterrupt:  # a second Ctrl-C: give the workers a minute to stop their trials
        stop.set()
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        raise
    for i, proc in enumerate(procs):
        if proc.exitcode == _INTERRUPTED:
            raise KeyboardInterrupt
        if proc.exitcode:
            how = f"signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit status {proc.exitcode}"
            print(f"auxilearn-hpo tune: warning: worker {i} (pid {proc.pid}) ended with {how}; the other workers "
                  "ran its places", file=sys.stderr)
    return _stored_source(args.out_path, settings, url)


def _count_trials(url: str, settings: dict[str, Any]) -> tuple[int, int]:
    """(all trials, finished trials) of the run's study; (0, 0) when it does not exist yet."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=settings["study"] or settings["benchmark"], storage=url)
    except KeyError:  # no such study yet
        return 0, 0
    trials = study.get_trials(deepcopy=False)
    return len(trials), sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _run_ray(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], out: Path, trials: int):
    """Finish every stored experiment, then run the trials still missing as a new one (Ray Tune
    cannot add trials to a stored experiment); returns the list of their ResultGrids."""
    from auxilearn_hpo.integrations import ray_tune

    space = ray_tune.search_space(weightings=tuple(settings["weightings"]), solvers=tuple(settings["solvers"]))
    common = dict(param_space=space, fixed=fixed, storage_path=str(out), scheduler="asha", resume=True,
                  verbose=0 if args.quiet else 1)
    grids = []
    experiments = [e for e in _ray_experiments(out) if (e / "tuner.pkl").exists()]
    for exp in experiments:
        _, grid = ray_tune.run(settings["benchmark"], name=exp.name, num_samples=1, **common)
        grids.append(grid)
        if _unfinished(grid):  # Ctrl-C: Ray stopped the experiment and fit() returned
            return grids
    missing = trials - sum(len(g) for g in grids)
    if missing > 0:
        name = "ray" if not experiments else f"ray-{len(experiments) + 1}"
        # only the run's first experiment starts at the shipped defaults (a later one adds trials)
        _, grid = ray_tune.run(settings["benchmark"], name=name, num_samples=missing,
                               start_at_default=not experiments, **common)
        grids.append(grid)
    return grids


def _unfinished(grid: Any) -> bool:
    from auxilearn_hpo.integrations import ray_tune
    from auxilearn_hpo.results import trials_frame

    return bool(trials_frame(ray_tune.records(grid))["status"].isin(["interrupted", "not_started"]).any())


def _records(source: Any) -> Any:
    """Trial records of a study or of Ray result grids; records pass through unchanged."""
    if hasattr(source, "get_trials"):
        from auxilearn_hpo.integrations import optuna as aux_optuna

        return aux_optuna.records(source)
    if isinstance(source, list) and source and hasattr(source[0], "get_dataframe"):
        from auxilearn_hpo.integrations import ray_tune

        return ray_tune.records(source)
    return source


def _stored_source(out: Path, settings: dict[str, Any], url: str | None = None) -> Any:
    """What the study or the Ray experiments in ``out`` hold, read directly (no tables needed)."""
    if settings.get("backend") == "ray":
        from auxilearn_hpo.integrations import ray_tune

        found = [r for exp in _ray_experiments(out) if any(exp.rglob("result.json"))
                 or any(exp.glob("experiment_state-*.json")) for r in ray_tune.records(exp)]
        if not found:
            raise UsageError(f"{out} holds no Ray Tune trials yet")
        return found
    import optuna

    url = url or _storage_url(out, settings, None)
    if url == f"sqlite:///{out / 'study.db'}":
        _check_sqlite(out / "study.db")
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except ImportError as err:
        raise UsageError(f"cannot read {_shown_url(url)}: its database driver is not installed ({err})") from None
    except Exception as err:  # SQLAlchemy: server gone, access refused
        detail = " ".join(str(err).split("\n")[0].split())[:200]
        raise UsageError(f"cannot read {_shown_url(url)} ({type(err).__name__}: {detail})") from None
    name = settings.get("study") or settings.get("benchmark")
    where = out / "study.db" if url.startswith("sqlite:") else _shown_url(url)
    if name not in names:
        if len(names) != 1 or settings.get("storage"):
            raise UsageError(f"{where} holds no study named {name!r} (it holds {names})")
        name = names[0]
    return optuna.load_study(study_name=name, storage=storage)


# ------------------------------------------------------------------------------ report
def report(argv: list[str] | None = None) -> int:
    """Print the tables of a finished (or interrupted) ``tune`` run from its folder."""
    ap = argparse.ArgumentParser(prog="auxilearn-hpo report", description="print the tables of a tune run")
    ap.add_argument("dir", help="the --out folder of 'auxilearn-hpo tune'")
    args = ap.parse_args(argv)
    try:
        return _report(Path(args.dir))
    except UsageError as err:
        print(f"auxilearn-hpo report: error: {err}", file=sys.stderr)
        return 2


def _warn(message: str) -> None:
    print(f"auxilearn-hpo report: warning: {message}", file=sys.stderr)


def _report(path: Path) -> int:
    from auxilearn_hpo.results import TableError, read_tables, trials_frame

    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    meta: dict[str, Any] = {}
    if (path / "run.json").exists():
        try:
            meta = json.loads((path / "run.json").read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as err:
            _warn(f"{path / 'run.json'} is damaged ({type(err).__name__}); the run's settings are unknown")
            meta = {}
    backend = meta.get("backend") or ("ray" if _ray_experiments(path) else "optuna")
    if backend == "optuna":
        has_study = bool(meta.get("storage")) or (path / "study.db").exists()
    else:
        has_study = bool(_ray_experiments(path))
    stored = None
    if has_study:
        try:
            stored = trials_frame(_records(_stored_source(path, {**meta, "backend": backend})))
        except UsageError as err:
            _warn(f"cannot read the {'study' if backend == 'optuna' else 'Ray Tune experiments'}: {err}")
        except ImportError as err:
            _warn(f"cannot read the study without its backend installed ({err})")
    tables = None
    if (path / "reports.csv").exists():
        try:
            tables = read_tables(path)
        except TableError as err:
            if stored is None:
                raise UsageError(str(err)) from None
            _warn(f"{err}; showing the trials read from the study instead")
    if tables is None and stored is None:
        raise UsageError(f"{path} holds neither tables (reports.csv) nor a study or Ray Tune experiment to read")
    shown = stored if stored is not None else tables["trials"]
    if tables is not None:
        shown = _cross_check(path, tables, stored, trials_frame)
    if meta:
        try:
            fixed = f", every trial with {_shown('--set', meta['set'])}" if meta.get("set") else ""
            print(f"{meta['benchmark']} with {meta['backend']}: {meta['trials']} trials x {meta['epochs']} epochs "
                  f"({meta['metric']}, {'higher' if meta['mode'] == 'max' else 'lower'} is better){fixed}")
        except (KeyError, TypeError):
            _warn(f"{path / 'run.json'} lacks the run's settings")
    if not (path / "reports.csv").exists():
        print("(no tables written yet: the run was interrupted; read from the "
              f"{'study' if backend == 'optuna' else 'Ray Tune experiments'})")
    _print_tables(shown)
    return 0


def _cross_check(path: Path, tables: dict[str, Any], stored: Any, trials_frame: Any) -> Any:
    """Compare trials.csv with reports.csv and with the study; warn on each disagreement and return
    the most trustworthy trials table (the study's, else the one rebuilt from reports.csv)."""
    listed = tables["trials"]
    rebuilt = trials_frame(tables["reports"])

    def describe(frame: Any) -> dict[str, str]:
        return dict(zip(frame["trial_id"].astype(str), frame["status"].astype(str)))

    best = rebuilt
    a, b = describe(listed), describe(rebuilt)
    if a != b:
        _warn(f"trials.csv lists {len(a)} trials but reports.csv holds {len(b)}"
              f"{_difference(a, b)}; showing the trials rebuilt from reports.csv")
    if stored is not None:
        c = describe(stored)
        if c != b:
            _warn(f"the tables in {path} hold {len(b)} trials but the study holds {len(c)}{_difference(b, c)} "
                  "(rerun 'auxilearn-hpo tune' to rewrite them); showing the study's trials")
        best = stored
    return best


def _difference(a: dict[str, str], b: dict[str, str]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    parts = []
    if only_a:
        parts.append(f"only in the first: {', '.join(only_a[:5])}{' ...' if len(only_a) > 5 else ''}")
    if only_b:
        parts.append(f"only in the second: {', '.join(only_b[:5])}{' ...' if len(only_b) > 5 else ''}")
    if changed:
        parts.append(f"status differs for {', '.join(changed[:5])}")
    return f" ({'; '.join(parts)})" if parts else ""
