"""``auxilearn-hpo bench storage``: trials per minute of one Optuna study shared by several worker
processes, on PostgreSQL, SQLite and a journal file side by side.

Every worker runs the shipped :func:`auxilearn_hpo.integrations.optuna.run` on the same study,
as ``auxilearn-hpo tune --workers N`` does (heartbeat on the RDB storages; the journal file has
none in Optuna 5). The clock runs from the moment all workers are ready (each has imported torch
and Optuna and opened the storage) to the moment the last one returns, so process start-up is
left out; trials per minute = finished trials / that time. Trials are short on purpose
(``toy``, one epoch): the figure measures what the storage costs, not training.

    auxilearn-hpo bench storage --postgres postgresql+psycopg://postgres@127.0.0.1:5432/bench
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["measure", "main"]


def _storage(kind: str, where: str) -> Any:
    from .studies import journal_storage

    return journal_storage(where) if kind == "journal" else where


def _worker(kind: str, where: str, study: str, trials: int, epochs: int, index: int, ready: Any, go: Any) -> None:
    import torch

    from auxilearn_hpo.integrations import optuna as aux_optuna

    from .studies import no_pruner, quiet, tpe_sampler

    torch.set_num_threads(1)
    quiet()
    heartbeat = None if kind == "journal" else 10
    ready.wait()  # every worker is up (imports done)
    go.wait()
    aux_optuna.run("toy", n_trials=trials, storage=_storage(kind, where), study_name=study,
                   fixed={"epochs": epochs, "seed": 0}, sampler=tpe_sampler(index),
                   pruner=no_pruner(), direction="minimize", heartbeat_interval=heartbeat)


def measure(kind: str, where: str, *, workers: int = 4, trials: int = 8, epochs: int = 1) -> dict[str, Any]:
    """Run one study of ``trials`` trials with ``workers`` processes on one storage; returns a row.

    ``kind`` is ``"postgresql"``, ``"sqlite"`` (``where``: a URL) or ``"journal"`` (``where``: a file).
    """
    import multiprocessing

    from auxilearn_hpo.integrations.optuna import open_storage, resolve_storage

    from .studies import count_finished

    study = f"bench-{kind}-{os.getpid()}-{time.time_ns()}"
    if kind != "journal":
        open_storage(resolve_storage(where))  # tables created once, before the clock starts
    context = multiprocessing.get_context("spawn")
    ready, go = context.Barrier(workers + 1), context.Barrier(workers + 1)
    procs = [context.Process(target=_worker, args=(kind, where, study, trials, epochs, i, ready, go))
             for i in range(workers)]
    for proc in procs:
        proc.start()
    ready.wait()
    start = time.perf_counter()
    go.wait()
    for proc in procs:
        proc.join()
    seconds = time.perf_counter() - start
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{kind}: {len(failed)} worker(s) failed (exit status {failed})")
    done = count_finished(study, _storage(kind, where))
    return {"storage": kind, "workers": workers, "trials": done, "seconds": round(seconds, 2),
            "trials_per_min": round(60 * done / seconds, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    ap = argparse.ArgumentParser(prog="auxilearn-hpo bench storage", description="Trials per minute of one Optuna study shared by several worker processes, on PostgreSQL, SQLite and a journal file side by side.")
    ap.add_argument("--postgres", default=os.environ.get("AUXILEARN_TEST_POSTGRES_URL"), metavar="URL",
                    help="PostgreSQL database URL (default: $AUXILEARN_TEST_POSTGRES_URL; left out when neither)")
    ap.add_argument("--workers", type=int, default=4, help="worker processes per study (default 4)")
    ap.add_argument("--trials", type=int, default=16, help="trials per study (default 16)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per toy trial (default 1)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    for flag in ("workers", "trials", "epochs"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="auxilearn-storage-bench-") as tmp:
        if args.postgres:
            rows.append(measure("postgresql", args.postgres, workers=args.workers, trials=args.trials,
                                epochs=args.epochs))
        else:
            print("(PostgreSQL left out: pass --postgres URL or set AUXILEARN_TEST_POSTGRES_URL)")
        rows.append(measure("sqlite", f"sqlite:///{tmp}/study.db", workers=args.workers, trials=args.trials,
                            epochs=args.epochs))
        rows.append(measure("journal", f"{tmp}/study.log", workers=args.workers, trials=args.trials,
                            epochs=args.epochs))
    print(f"\nOne study, {args.workers} worker processes, toy trials of {args.epochs} epoch(s); "
          f"{os.cpu_count()} cores:")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
