"""The settings of a ``tune`` run: the command line over the recorded run over the defaults,
checked once before anything is written."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import UsageError, one_line

__all__ = ["RECORDED", "DEFAULTS", "parse_fixed", "merge", "shown", "shown_url", "check_args", "validate"]

#: Settings recorded in run.json that a rerun must not change (flag, run.json key).
RECORDED = (("--benchmark", "benchmark"), ("--backend", "backend"), ("--epochs", "epochs"), ("--seed", "seed"),
            ("--weightings", "weightings"), ("--solvers", "solvers"), ("--set", "set"), ("--storage", "storage"),
            ("--study", "study"), ("--space", "space"))
#: What a new run takes for the settings left out.
DEFAULTS: dict[str, Any] = {"benchmark": "fewshot_digits", "backend": "optuna", "seed": 0, "weightings": ["linear", "nonlinear"],
                            "solvers": ["neumann", "cg"], "set": {}, "space": "default"}
#: LearnerConfig fields that ``--set`` cannot fix: the search's own flags name them.
NOT_SETTABLE = {"solver": "--solvers"}


def parse_fixed(items: list[str]) -> dict[str, Any] | None:
    """``--set`` items as one dict of LearnerConfig fields (``None`` when none is given), parsed
    and checked field by field once (``LearnerConfig.from_dict``); a one-line UsageError if bad.
    :func:`validate` checks that they combine with every weighting and solver searched."""
    from auxilearn_hpo.bench import parse_set

    if not items:
        return None
    try:
        fixed = parse_set(items)
    except ValueError as err:
        raise UsageError(str(err)) from None
    for key, flag in NOT_SETTABLE.items():
        if key in fixed:
            raise UsageError(f"--set {key}=... : use {flag} to choose it")
    from auxilearn_hpo.learner import LearnerConfig

    try:
        LearnerConfig.from_dict(fixed)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--set: {one_line(err)}") from None
    return fixed


def check_args(args: argparse.Namespace) -> None:
    """The flags that need neither the run folder nor torch: checked before anything is written."""
    for flag, value, least in (("--trials", args.trials, 1), ("--epochs", args.epochs, 1),
                               ("--workers", args.workers, 1), ("--threads", args.threads, 1),
                               ("--heartbeat", args.heartbeat, 1)):
        if value is not None and value < least:
            unit = " (seconds)" if flag == "--heartbeat" else ""
            raise UsageError(f"{flag} must be >= {least}{unit}, got {value}")
    if args.storage is not None and "://" not in args.storage:
        raise UsageError(f"--storage must be a database URL such as postgresql+psycopg://user@host:5432/db or "
                         f"sqlite:///path/study.db, got {args.storage!r}")


def merge(args: argparse.Namespace, fixed: dict[str, Any] | None, recorded: dict[str, Any] | None,
          out: Path) -> dict[str, Any]:
    """The run's settings: the command line over the recorded run over the defaults; a setting given
    on the command line that differs from the recorded one is a UsageError naming both."""
    given = {"benchmark": args.benchmark, "backend": args.backend, "epochs": args.epochs, "seed": args.seed,
             "weightings": args.weightings, "solvers": args.solvers, "set": fixed,
             "storage": shown_url(args.storage) if args.storage else None, "study": args.study,
             "space": args.space}
    if recorded is not None:
        for flag, key in RECORDED:
            mine, theirs = given[key], recorded.get(key)
            if key == "set" and mine is not None and theirs is None:
                theirs = {}  # a run recorded before --set existed fixed nothing
            if key == "space" and theirs is None:
                theirs = "default"  # a run recorded before --space existed searched the default space
            if mine is not None and theirs is not None and mine != theirs:
                was = shown(flag, theirs)
                again = f"with {was} (or without {flag})" if theirs != {} else f"without {flag}"
                raise UsageError(
                    f"{shown(flag, mine)} conflicts with the run recorded in {out} "
                    f"({was if theirs != {} else 'no --set'}); rerun {again} to resume it, or pass --restart "
                    "to move the recorded run aside and start a new one")
        given = {k: (v if v is not None else recorded.get(k)) for k, v in given.items()}
    return {k: (v if v is not None else DEFAULTS.get(k)) for k, v in given.items()}


def shown(flag: str, value: Any) -> str:
    """A setting as it is written on the command line: ``--solvers neumann cg``, ``--set steps=0 --set ...``."""
    if isinstance(value, dict):
        return " ".join(f"{flag} {k}={json.dumps(v)}" for k, v in value.items())
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def shown_url(url: str) -> str:
    """``url`` with its password hidden (``***``): what run.json records and messages print."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse (or no SQLAlchemy): reported when the storage is opened
        return url


def validate(settings: dict[str, Any], trials: int) -> Any:
    """Check the merged settings before anything is written; returns the benchmark's task."""
    from auxilearn_hpo.registry import weighting_names
    from auxilearn_hpo.tasks import make_task, names

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
    if settings["space"] == "warm" and settings["backend"] != "optuna":
        raise UsageError("--space warm applies to --backend optuna (Ray Tune's ASHA would stop held trials by "
                         "their early epochs)")
    try:
        task = make_task(settings["benchmark"], seed=settings["seed"])
    except ImportError as err:  # a benchmark's own library (the shipped ones are known to extras.py)
        raise UsageError(f"--benchmark {settings['benchmark']}: {one_line(err)}") from None
    except (ValueError, TypeError) as err:
        raise UsageError(f"--benchmark {settings['benchmark']} --seed {settings['seed']}: {err}") from None
    _check_weightings(task, settings["weightings"])
    _check_fixed(task, settings)
    return task


def _check_fixed(task: Any, settings: dict[str, Any]) -> None:
    """``--set`` (its fields checked by :func:`parse_fixed`, or recorded) must build a trial with
    every weighting and solver searched (``steps=0`` is no CG iteration count, ``compile`` not for
    gradient alignment). The trials are built on the task already made: no data is loaded again."""
    from auxilearn_hpo.integrations.trial import Trial

    fixed = settings["set"]
    if not fixed:
        return
    for weighting in settings["weightings"]:
        for solver in settings["solvers"]:
            config = {**fixed, "weighting": weighting, "solver": solver, "epochs": 1, "seed": settings["seed"]}
            try:
                Trial(lambda _config: task, config)
            except (ValueError, TypeError) as err:
                raise UsageError(f"{shown('--set', fixed)} does not combine with --weightings {weighting} "
                                 f"--solvers {solver}: {one_line(err)}") from None


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
