"""The searches behind ``tune``: Optuna in this process or in ``--workers`` processes, Ray Tune
experiment by experiment, and reading back what a run folder's study or experiments hold."""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from .errors import INTERRUPTED, UsageError
from .progress import Progress, SigintSeen, stdout_is_terminal
from .runfolder import check_sqlite, ray_experiments
from .settings import shown_url

__all__ = ["run_optuna", "run_optuna_workers", "optuna_worker", "count_trials", "run_ray", "unfinished", "records_of",
           "stored_source", "storage_url", "create_optuna_storage", "first_error"]


def optuna_worker(index: int, args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str,
                   trials: int, threads: int, stop: Any = None) -> None:
    """One of ``--workers`` processes (started with ``spawn``): run trials of the shared study.

    It starts with SIGINT ignored (:func:`run_optuna_workers`); once its imports are done, a Ctrl-C
    on the terminal reaches its trial as in a single process: the first stops it after its epoch,
    a second at once."""
    import torch

    from auxilearn_hpo.integrations import optuna as aux_optuna
    from auxilearn_hpo.integrations import trial  # noqa: F401 - imported while Ctrl-C is ignored

    aux_optuna.import_optuna()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(threads)
    try:
        with SigintSeen(announce=False, stop=stop):  # the main process says it, and asks by `stop`
            run_optuna(args, settings, fixed, url, trials, worker=index)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except Exception as err:
        print(f"auxilearn-hpo tune: worker {index}: error: {type(err).__name__}: {' '.join(str(err).split())[:300]}",
              file=sys.stderr)
        sys.exit(1)


def run_optuna_workers(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str,
                       trials: int):
    """``--workers N``: N processes on this machine run the study's trials; returns the study.

    Each process takes one place at a time (see ``integrations.optuna.run``); a worker that dies
    (``kill -9``, out of memory) leaves its trial RUNNING until its heartbeat is ``2 * --heartbeat``
    seconds old; the others then mark it failed and run its place again."""
    import multiprocessing.connection

    args.stored_trials, finished = count_trials(url, settings)
    if finished >= trials:  # a rerun of a finished study: nothing to start
        return stored_source(args.out_path, settings, url)
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    threads = args.threads
    stop = context.Event()  # set on Ctrl-C here, for workers the signal did not reach (kill -INT <this pid>)
    procs = [context.Process(target=optuna_worker, name=f"auxilearn-hpo-worker-{i}",
                             args=(i, args, settings, fixed, url, trials, threads, stop)) for i in range(args.workers)]
    # The workers start with SIGINT ignored (a Ctrl-C on the terminal reaches the whole process
    # group, and one landing while a worker imports torch prints a traceback or aborts it); each
    # hears Ctrl-C again once its imports are done. This process also asks them through `stop`.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for proc in procs:
            proc.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        while any(proc.is_alive() for proc in procs):
            multiprocessing.connection.wait([proc.sentinel for proc in procs if proc.is_alive()], timeout=0.5)
            if SigintSeen.active is not None and SigintSeen.active.seen:
                stop.set()
    except KeyboardInterrupt:  # a second Ctrl-C: give the workers a minute to end their epoch
        stop.set()
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.terminate()
        raise
    for i, proc in enumerate(procs):
        if proc.exitcode == INTERRUPTED:
            raise KeyboardInterrupt
        if proc.exitcode:
            how = f"signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit status {proc.exitcode}"
            print(f"auxilearn-hpo tune: warning: worker {i} (pid {proc.pid}) ended with {how}; the other workers "
                  "ran its places", file=sys.stderr)
    return stored_source(args.out_path, settings, url)


def count_trials(url: str, settings: dict[str, Any]) -> tuple[int, int]:
    """(all trials, finished trials) of the run's study; (0, 0) when it does not exist yet."""
    from auxilearn_hpo.integrations.optuna import import_optuna

    optuna = import_optuna()
    TrialState = optuna.trial.TrialState
    try:
        study = optuna.load_study(study_name=settings["study"] or settings["benchmark"], storage=url)
    except KeyError:  # no such study yet
        return 0, 0
    trials = study.get_trials(deepcopy=False)
    return len(trials), sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def run_ray(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], out: Path, trials: int):
    """Finish every stored experiment, then run the trials still missing as a new one (Ray Tune
    cannot add trials to a stored experiment); returns the list of their ResultGrids."""
    from auxilearn_hpo.integrations import ray_tune

    space = ray_tune.search_space(weightings=tuple(settings["weightings"]), solvers=tuple(settings["solvers"]))
    # Ray's status tables only on a terminal: on a pipe or in a file they are hundreds of lines.
    common = dict(param_space=space, fixed=fixed, storage_path=str(out), scheduler="asha", resume=True,
                  verbose=1 if not args.quiet and stdout_is_terminal() else 0)
    grids = []
    experiments = [e for e in ray_experiments(out) if (e / "tuner.pkl").exists()]
    for exp in experiments:
        _, grid = ray_tune.run(settings["benchmark"], name=exp.name, num_samples=1, **common)
        grids.append(grid)
        if unfinished(grid):  # Ctrl-C: Ray stopped the experiment and fit() returned
            return grids
    missing = trials - sum(len(g) for g in grids)
    if missing > 0:
        name = "ray" if not experiments else f"ray-{len(experiments) + 1}"
        # only the run's first experiment starts at the shipped defaults (a later one adds trials)
        _, grid = ray_tune.run(settings["benchmark"], name=name, num_samples=missing,
                               start_at_default=not experiments, **common)
        grids.append(grid)
    return grids


def unfinished(grid: Any) -> bool:
    from auxilearn_hpo.integrations import ray_tune
    from auxilearn_hpo.results import trials_frame

    return bool(trials_frame(ray_tune.records(grid))["status"].isin(["interrupted", "not_started"]).any())


def records_of(source: Any) -> Any:
    """Trial records of a study or of Ray result grids; records pass through unchanged."""
    if hasattr(source, "get_trials"):
        from auxilearn_hpo.integrations import optuna as aux_optuna

        return aux_optuna.records(source)
    if isinstance(source, list) and source and hasattr(source[0], "get_dataframe"):
        from auxilearn_hpo.integrations import ray_tune

        return ray_tune.records(source)
    return source


def stored_source(out: Path, settings: dict[str, Any], url: str | None = None) -> Any:
    """What the study or the Ray experiments in ``out`` hold, read directly (no tables needed)."""
    if settings.get("backend") == "ray":
        from auxilearn_hpo.integrations import ray_tune

        found = [r for exp in ray_experiments(out) if any(exp.rglob("result.json"))
                 or any(exp.glob("experiment_state-*.json")) for r in ray_tune.records(exp)]
        if not found:
            raise UsageError(f"{out} holds no Ray Tune trials yet")
        return found
    from auxilearn_hpo.integrations.optuna import import_optuna

    optuna = import_optuna()
    url = url or storage_url(out, settings, None)
    if url == f"sqlite:///{out / 'study.db'}":
        check_sqlite(out / "study.db")
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    except ImportError as err:
        raise UsageError(f"cannot read {shown_url(url)}: its database driver is not installed ({err})") from None
    except Exception as err:  # SQLAlchemy: server gone, access refused
        detail = " ".join(str(err).split("\n")[0].split())[:200]
        raise UsageError(f"cannot read {shown_url(url)} ({type(err).__name__}: {detail})") from None
    name = settings.get("study") or settings.get("benchmark")
    where = out / "study.db" if url.startswith("sqlite:") else shown_url(url)
    if name not in names:
        if len(names) != 1 or settings.get("storage"):
            raise UsageError(f"{where} holds no study named {name!r} (it holds {names})")
        name = names[0]
    return optuna.load_study(study_name=name, storage=storage)


def first_error(source: Any) -> str:
    for t in getattr(source, "trials", None) or []:
        error = (getattr(t, "user_attrs", None) or {}).get("error")
        if error:
            return f" (first: {error})"
    return ""


def storage_url(out: Path, settings: dict[str, Any], given: str | None) -> str:
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


def create_optuna_storage(url: str) -> None:
    """Open the study's database once, creating Optuna's tables if needed (under a lock: workers
    starting together on a new database would otherwise all create them, and one fails with
    'table already exists'); an unusable URL is a one-line UsageError naming --storage."""
    from auxilearn_hpo.integrations.optuna import open_storage, resolve_storage

    try:
        open_storage(resolve_storage(url))
    except ImportError as err:
        raise UsageError(f"--storage {shown_url(url)}: its database driver is not installed ({err}); for "
                         "PostgreSQL: pip install auxilearn-hpo[postgres]") from None
    except Exception as err:  # SQLAlchemy: a bad URL, a server that cannot be reached, refused access
        detail = " ".join(str(err).split("\n")[0].split())[:200]
        raise UsageError(f"--storage {shown_url(url)}: cannot open the database ({type(err).__name__}: {detail})") from None


def run_optuna(args: argparse.Namespace, settings: dict[str, Any], fixed: dict[str, Any], url: str, trials: int,
               *, worker: int | None = None):
    """Run the study's trials in this process until it holds ``trials`` finished ones; returns the study."""
    from auxilearn_hpo.integrations import optuna as aux_optuna

    optuna = aux_optuna.import_optuna()

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
    shown = contextlib.nullcontext() if args.quiet else Progress.on_stdout(
        args.metric_name, worker if args.workers > 1 else None)
    with shown as progress:
        _, study = aux_optuna.run(
            settings["benchmark"], n_trials=trials, space=space, fixed=fixed, storage=url,
            study_name=settings["study"] or settings["benchmark"], pruner=pruner, sampler=sampler,
            heartbeat_interval=args.heartbeat, progress=SigintSeen.watch(progress),
            catch=(Exception,),  # a bad trial fails alone (one line, user_attrs["error"]); the study goes on
        )
    return study
