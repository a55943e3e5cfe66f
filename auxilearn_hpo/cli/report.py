"""``auxilearn-hpo report DIR``: the tables of a finished or interrupted ``tune`` run, and the
tables ``tune`` prints at its end."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import backends
from .errors import USAGE, UsageError
from .runfolder import ray_experiments
from .settings import shown

__all__ = ["report", "print_tables", "SHOW"]

#: The columns of the best-trials table, those a run has.
SHOW = ["trial_id", "status", "config/weighting", "config/solver", "config/update_every", "config/steps",
        "config/aux_lr", "score", "best_metric", "test_metric", "epochs", "hypersteps", "wall_time"]


def print_tables(trials: Any, out: Path | None = None) -> None:
    """Print the best finished trials, the best one's learned weights and the score by weighting.

    Every "best" here is :func:`auxilearn_hpo.results.rank_trials`: finished trials by ``score``
    (an interrupted trial, however good its last epochs, is never shown as best)."""
    import pandas as pd

    from auxilearn_hpo.results import rank_trials, summary_frame

    ranked = rank_trials(trials)
    cols = [c for c in SHOW if c in ranked.columns]
    # --space warm: which trials held whose weights, at what gain
    held = ranked["config/held_from"].notna() if "config/held_from" in ranked.columns else None
    any_held = held is not None and bool(held.any())
    if any_held:
        at = cols.index("config/weighting") + 1 if "config/weighting" in cols else len(cols)
        cols[at:at] = [c for c in ("config/hold_gain", "config/held_from") if c in ranked.columns]
    wcols = [c for c in ranked.columns if c.startswith("weights/")]
    counts = trials["status"].value_counts().to_dict() if "status" in trials.columns else {}
    breakdown = ", ".join(f"{n} {s}" for s, n in counts.items())
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print(f"\nBest trials ({len(trials)} in total{': ' + breakdown if breakdown else ''}):")
        if ranked.empty:
            print("(no trial finished yet)")
        else:
            print(ranked[cols].head(5).to_string(index=False))
        if wcols and len(ranked):
            print("\nLearned effective weights of the best trial (relative to the main task's):")
            print(ranked[wcols].head(1).rename(columns=lambda c: c.split("/", 1)[1]).to_string(index=False))
        if "config/weighting" in ranked.columns and len(ranked):
            note = " (held: trials that trained another trial's weights held fixed, whatever weighting they drew)"
            print(f"\nScore by weighting, finished trials{note if any_held else ''}:")
            by = ranked.assign(**{"config/weighting": ranked["config/weighting"].where(~held, "held")}) \
                if any_held else ranked
            print(summary_frame(by, by="config/weighting", metric="score").to_string())
    if out is not None:
        print(f"\nTables in {out}: trials.csv, weights.csv, reports.csv")


def report(argv: list[str] | None = None) -> int:
    """Print the tables of a finished (or interrupted) ``tune`` run from its folder."""
    ap = argparse.ArgumentParser(prog="auxilearn-hpo report", description="print the tables of a tune run")
    ap.add_argument("dir", help="the --out folder of 'auxilearn-hpo tune'")
    args = ap.parse_args(argv)
    try:
        return _report(Path(args.dir))
    except UsageError as err:
        print(f"auxilearn-hpo report: error: {err}", file=sys.stderr)
        return USAGE


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
    backend = meta.get("backend") or ("ray" if ray_experiments(path) else "optuna")
    if backend == "optuna":
        has_study = bool(meta.get("storage")) or (path / "study.db").exists()
    else:
        has_study = bool(ray_experiments(path))
    stored = None
    if has_study:
        try:
            stored = trials_frame(backends.records_of(backends.stored_source(path, {**meta, "backend": backend})))
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
    trials = stored if stored is not None else tables["trials"]
    if tables is not None:
        trials = _cross_check(path, tables, stored, trials_frame)
    if meta:
        try:
            fixed = f", every trial with {shown('--set', meta['set'])}" if meta.get("set") else ""
            print(f"{meta['benchmark']} with {meta['backend']}: {meta['trials']} trials x {meta['epochs']} epochs "
                  f"({meta['metric']}, {'higher' if meta['mode'] == 'max' else 'lower'} is better){fixed}")
        except (KeyError, TypeError):
            _warn(f"{path / 'run.json'} lacks the run's settings")
    if not (path / "reports.csv").exists():
        print("(no tables written yet: the run was interrupted; read from the "
              f"{'study' if backend == 'optuna' else 'Ray Tune experiments'})")
    print_tables(trials)
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
