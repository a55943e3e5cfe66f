"""Tuning results as pandas DataFrames, from trial records of any backend.

Every builder accepts the same *sources*:

* a list of :class:`~auxilearn_hpo.records.TrialRecord` (the adapters make them:
  ``integrations.optuna.records(study)``, ``integrations.ray_tune.records(grid or folder)``);
* a list of ``(trial_id, config, reports)`` or ``(trial_id, config, reports, status)`` tuples
  from your own loop (``framework`` is then ``"custom"``; reports may be nested dicts);
* a reports DataFrame (e.g. read back from ``reports.csv``), or a folder holding ``reports.csv``
  (an ``auxilearn-hpo tune --out`` folder, or what :func:`write_tables` wrote).

:func:`reports_frame` builds the canonical long table (one row per trial and epoch); the
others derive from it, so the columns are the same whichever backend ran the trials. Trial
status (column ``status``) is one of :data:`~auxilearn_hpo.records.STATUSES`:

* ``"completed"``: ran all its epochs; ``"pruned"``: stopped early by a pruner or scheduler;
* ``"failed"``: ended with an error, or its last report holds a non-finite ``val_metric`` or
  ``weights/<task>`` (a diverged trial), whatever the backend said;
* ``"interrupted"``: started but never finished (Ctrl-C, a killed process);
* ``"not_started"``: queued but never run. A rerun of the same search resumes the last two.

"Best" means one thing everywhere: :func:`rank_trials`. Plots: :mod:`auxilearn_hpo.plots`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .columns import (REPORT_COLUMNS, TRIAL_COLUMNS, WEIGHT_COLUMNS, TableError, as_str, empty_reports, empty_trials,
                      normalize_reports, normalize_trials, plain, read_reports_csv, read_table, read_trials_csv,
                      read_weights_csv, relative_weights, resolve_column, trial_order, write_csvs)
from .records import FINISHED, STATUSES, TrialRecord, from_tuples, resolve_statuses, trial_score

__all__ = [
    "REPORT_COLUMNS", "TRIAL_COLUMNS", "WEIGHT_COLUMNS", "STATUSES",
    "reports_frame", "trials_frame", "weights_frame", "summary_frame", "best_trial", "rank_trials", "FINISHED",
    "write_tables", "read_tables", "TableError", "TrialRecord",
]


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "max", "min"):
        raise ValueError(f"mode must be None (from higher_is_better), 'max' or 'min', got {mode!r}")


def _source(source: Any) -> pd.DataFrame | list[TrialRecord]:
    """A reports DataFrame, or the trials of ``source`` as records with their statuses resolved."""
    if isinstance(source, pd.DataFrame):
        return normalize_reports(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such folder: {str(path)!r}")
        if path.is_file() and path.suffix == ".csv":
            return read_reports_csv(path)
        if (path / "reports.csv").is_file():
            return read_reports_csv(path / "reports.csv")
        raise FileNotFoundError(
            f"{str(path)!r} holds no reports.csv (written by write_tables or the CLI's --out); for a Ray Tune "
            "experiment folder pass auxilearn_hpo.integrations.ray_tune.records(path), for an Optuna study "
            "auxilearn_hpo.integrations.optuna.records(study)")
    if isinstance(source, Iterable) and not isinstance(source, (Mapping, str, bytes)):
        items = list(source)
        records = items if items and all(isinstance(r, TrialRecord) for r in items) else from_tuples(items)
        return resolve_statuses(records)
    raise TypeError(
        "source must be a list of TrialRecords (integrations.optuna.records(study), integrations.ray_tune.records("
        "grid)), a folder with reports.csv, a reports DataFrame, or a list of (trial_id, config, reports) tuples; "
        f"got {type(source).__name__}")


# ------------------------------------------------------------------------------ reports
def reports_frame(source: Any) -> pd.DataFrame:
    """The canonical table: one row per trial and epoch (**long** format).

    Every other table derives from this one. A trial that reported nothing (failed before its
    first epoch) keeps one row with ``epoch`` missing, so it is not lost. When a trial reported
    an epoch twice (Ray retried it from an older checkpoint), the last report wins.

    ===========================  ==========  ===========================================  ============
    column                       dtype       meaning                                      example
    ===========================  ==========  ===========================================  ============
    ``trial_id``                 str         Ray's trial id or Optuna's trial number      ``"3"``
    ``framework``                str         ``"ray"``, ``"optuna"`` or ``"custom"``      ``"optuna"``
    ``status``                   str         one of :data:`STATUSES`                      ``"pruned"``
    ``config/<setting>``         inferred    outer setting; nested dicts flattened        ``"linear"``
                                             (``config/weighting_options/x``), lists as
                                             JSON text, ``None`` as NaN; bool, int64,
                                             float64 or str from the values
    ``epoch``                    Int64       1-based epoch just finished                  ``2``
    ``step``                     Int64       training steps so far                        ``120``
    ``val_metric``               float64     main-task metric on validation data          ``0.91``
    ``train_loss``               float64     mean combined training loss of the epoch     ``0.35``
    ``task_losses/<task>``       float64     mean training loss of one task               ``0.12``
    ``weights/<task>``           float64     effective weight of one task after epoch     ``0.8``
    ``hypersteps``               Int64       hypersteps taken so far                      ``12``
    ``hypersteps_skipped``       Int64       hypersteps skipped so far (non-finite)       ``0``
    ``hypergrad_norm``           float64     mean hypergradient norm of the epoch         ``0.03``
    ``solver_iterations``        float64     mean solver iterations of the epoch          ``3.0``
    ``residual``                 float64     mean relative residual of the linear solve   ``0.01``
    ``seconds``                  float64     wall time of the epoch                       ``1.7``
    ``test_metric``              float64     test metric, NaN except at the final epoch   ``0.9``
    ``higher_is_better``         float64     1.0 when larger ``val_metric`` is better     ``1.0``
    ``learn_test_metric``        float64     a refit trial's learning run's test metric   ``0.88``
    ``refit_gain``               float64     auxiliary-weight gain the refit kept         ``3.0``
    *other reported keys*        inferred    kept as reported
    ===========================  ==========  ===========================================  ============

    Settings are sorted by name; tasks keep the order of the reports. Rows are ordered by trial
    (as the source lists them) then epoch.

    Args:
        source: trial records, ``(trial_id, config, reports[, status])`` tuples, a reports
            DataFrame or a folder with ``reports.csv`` (see the module docstring).

    Returns:
        The frame. An empty source (a study without trials) gives an empty frame with the
        leading and standard report columns.

    Raises:
        FileNotFoundError: a folder without ``reports.csv``.
        TypeError: a source of another kind.

    Example:
        >>> reports = [{"epoch": e, "val_metric": 0.5 + 0.1 * e, "weights": {"main": 1.0, "aux": 0.1 * e},
        ...             "seconds": 1.0, "higher_is_better": 1.0} for e in (1, 2)]
        >>> df = reports_frame([("a", {"weighting": "linear", "epochs": 2}, reports)])
        >>> len(df), df.filter(like="weights/").shape[1]  # 2 epochs; a weight column per task
        (2, 2)
        >>> df[["trial_id", "status", "config/weighting", "epoch", "weights/aux"]].values.tolist()
        [['a', 'completed', 'linear', 1, 0.1], ['a', 'completed', 'linear', 2, 0.2]]
    """
    found = _source(source)
    if isinstance(found, pd.DataFrame):
        return found
    rows: list[dict[str, Any]] = []
    for record in found:
        lead = {"trial_id": record.trial_id, "framework": record.framework, "status": record.status,
                "reason": record.reason}
        if not record.reports:
            rows.append({**lead, **{f"config/{k}": plain(v) for k, v in record.config.items()}})
        for i, report in enumerate(record.reports):
            config = record.configs[i] if record.configs else record.config
            rows.append({**lead, **{f"config/{k}": plain(v) for k, v in config.items()},
                         **{k: plain(v) for k, v in report.items()}})
    if not rows:
        return empty_reports()
    frame = pd.DataFrame(rows)
    if "epoch" not in frame.columns:  # only trials that reported nothing
        frame["epoch"] = pd.NA
    return normalize_reports(frame)


# ------------------------------------------------------------------------------- trials
def _higher(mode: str | None, metric: str, ran: pd.DataFrame) -> bool | None:
    if mode is not None:
        return mode == "max"
    if metric != "val_metric":
        raise ValueError(f"pass mode='max' or 'min' to rank {metric!r}: higher_is_better only describes val_metric")
    flags = ran["higher_is_better"].dropna()
    return None if flags.empty else bool(flags.iloc[-1] >= 0.5)


def trials_frame(source: Any, *, mode: str | None = None, metric: str = "val_metric",
                 main_task: str | None = None) -> pd.DataFrame:
    """One row per trial (**wide** format), sorted best first.

    ===========================  ==========  ===========================================  ============
    column                       dtype       meaning                                      example
    ===========================  ==========  ===========================================  ============
    ``trial_id``                 str         Ray's trial id or Optuna's trial number      ``"3"``
    ``framework``                str         ``"ray"``, ``"optuna"`` or ``"custom"``      ``"ray"``
    ``status``                   str         one of :data:`STATUSES`                      ``"completed"``
    ``reason``                   str         why a failed trial failed (null if unknown)  ``"killed: ..."``
    ``config/<setting>``         inferred    outer setting at the trial's last report     ``10``
                                             (as in :func:`reports_frame`)
    ``final_metric``             float64     ``metric`` at the last epoch run             ``0.90``
    ``best_metric``              float64     best ``metric`` over the epochs run          ``0.92``
    ``score``                    float64     the trial's score (:func:`~auxilearn_hpo.    ``0.91``
                                             records.trial_score`); rows ranked by it
    ``test_metric``              float64     last non-NaN test metric (NaN if none)       ``0.89``
    ``epochs``                   int64       last epoch run (0: reported nothing)         ``10``
    ``weights/<task>``           float64     effective weight after the last epoch,       ``0.7``
                                             **relative to the main task's** (the main
                                             task's column is 1.0; NaN when its weight
                                             is 0 or not finite)
    ``hypersteps``               Int64       hypersteps taken (``<NA>``: no report)       ``40``
    ``hypersteps_skipped``       Int64       hypersteps skipped (non-finite)              ``0``
    ``wall_time``                float64     sum of the epochs' ``seconds``               ``17.2``
    ===========================  ==========  ===========================================  ============

    Rows are sorted by ``score``, best first, ties in source order, NaN last: the same definition
    of best as the Optuna objective's value and the Ray trainable's ``score`` metric; every trial
    is listed, so the top row may be one that never finished (:func:`rank_trials` keeps the
    finished ones). Weights are relative to the main task's because trials may scale them
    differently (a searched normalisation): only their ratios compare across trials; the raw
    values stay in :func:`reports_frame` and :func:`weights_frame`. The columns are the same
    whichever framework ran the trials.

    Args:
        source: anything :func:`reports_frame` takes (a reports frame included).
        mode: ``"max"`` or ``"min"`` ranks ``metric`` that way; ``None`` reads each trial's
            ``higher_is_better`` (a ValueError asks for ``mode`` when trials disagree or a
            trial with a finite metric carries none).
        metric: the report column ranked (``"val_metric"``; any other needs ``mode``).
        main_task: the task whose weight the others are divided by; ``None``: the first task
            reported (the main task of every shipped benchmark, and of a ``Task`` by default).

    Returns:
        The frame. An empty source gives an empty frame with the columns above except the
        per-setting and per-task ones.

    Example:
        >>> reports = [{"epoch": e, "val_metric": v, "weights": {"main": 1.0, "aux": w},
        ...             "higher_is_better": 1.0} for e, v, w in ((1, 0.6, 0.2), (2, 0.5, 0.3))]
        >>> df = trials_frame([("a", {"weighting": "linear"}, reports),
        ...                    ("b", {"weighting": "equal"}, reports[:1], "pruned")])
        >>> df.shape  # 2 trials; 4 leading + 1 setting + 5 metrics + 2 weights + 3 counters
        (2, 15)
        >>> df[["trial_id", "status", "final_metric", "best_metric", "score", "epochs"]].values.tolist()
        [['b', 'pruned', 0.6, 0.6, 0.6, 1], ['a', 'completed', 0.5, 0.6, 0.55, 2]]
    """
    _check_mode(mode)
    reports = reports_frame(source)
    if reports.empty:
        return empty_trials()
    if metric not in reports.columns:
        raise ValueError(f"unknown metric column {metric!r}; report columns: {list(map(str, reports.columns))}")
    config_columns = [c for c in reports.columns if c.startswith("config/")]
    weight_columns = [c for c in reports.columns if c.startswith("weights/")]
    main = f"weights/{main_task}" if main_task is not None else (weight_columns[0] if weight_columns else None)
    if main is not None and main not in weight_columns:
        raise ValueError(f"unknown main_task {main_task!r}; tasks with weights: "
                         f"{[c[len('weights/'):] for c in weight_columns]}")
    rows, directions = [], []
    for trial_id, group in reports.groupby("trial_id", sort=False):
        ran = group[group["epoch"].notna()]
        last = ran.iloc[-1] if len(ran) else group.iloc[-1]
        values = ran[metric].to_numpy(dtype="float64", na_value=np.nan)
        finite = values[~np.isnan(values)]
        higher = _higher(mode, metric, ran)
        if finite.size and higher is None:
            raise ValueError(f"trial {trial_id!r} reports no higher_is_better, so it is unknown whether a larger "
                             f"{metric} is better; pass mode='max' or mode='min'")
        if finite.size:
            directions.append(higher)
        tests = ran["test_metric"].dropna()
        row = {
            "trial_id": trial_id, "framework": last["framework"], "status": last["status"], "reason": last["reason"],
            **{c: last[c] for c in config_columns},
            "final_metric": values[-1] if values.size else np.nan,
            "best_metric": (finite.max() if higher else finite.min()) if finite.size else np.nan,
            "score": trial_score(values.tolist(), last.get("refit_score") if metric == "val_metric" and len(ran)
                                 else None) if values.size else np.nan,
            "test_metric": tests.iloc[-1] if len(tests) else np.nan,
            "epochs": int(ran["epoch"].max()) if len(ran) else 0,
            **relative_weights({c: last[c] for c in weight_columns} if len(ran) else {}, weight_columns, main),
            "hypersteps": last["hypersteps"] if len(ran) else pd.NA,
            "hypersteps_skipped": last["hypersteps_skipped"] if len(ran) else pd.NA,
            "wall_time": float(ran["seconds"].sum()) if len(ran) else 0.0,
        }
        rows.append(row)
    frame = normalize_trials(pd.DataFrame(rows))
    if len(set(directions)) > 1:
        raise ValueError("trials disagree on higher_is_better, so they cannot be ranked together; "
                         "pass mode='max' or mode='min'")
    if directions:
        frame = frame.sort_values("score", ascending=not directions[0], kind="stable", na_position="last")
    return frame.reset_index(drop=True)


def rank_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials of a trials frame, best first: the one ranking behind every "best".

    Completed trials by ``score``, then pruned ones (:data:`FINISHED`: a pruned trial's score
    covers only early epochs; Optuna's ``study.best_trial`` passes them over). Failed, interrupted
    and not-started trials are left out. Within a status the frame's order is kept (by ``score``,
    NaN last, as :func:`trials_frame` sorts). :func:`best_trial` and the CLI's tables use it.

    Args:
        trials: a trials frame (:func:`trials_frame`, or ``trials.csv`` read back).

    Returns:
        A frame with the same columns, its index reset; empty when no trial finished.

    Example:
        >>> reports = [{"epoch": 1, "val_metric": 0.5, "higher_is_better": 1.0}]
        >>> frame = trials_frame([("a", {}, reports, "interrupted"), ("b", {}, reports, "pruned"),
        ...                       ("c", {}, [{**reports[0], "val_metric": 0.2}], "completed")])
        >>> rank_trials(frame)["trial_id"].tolist()
        ['c', 'b']
    """
    if "status" not in trials.columns:
        return trials.reset_index(drop=True)
    tier = trials["status"].map({s: i for i, s in enumerate(FINISHED)})
    kept = tier.notna().to_numpy()
    order = np.argsort(tier[kept].to_numpy(dtype="float64"), kind="stable")
    return trials[kept].iloc[order].reset_index(drop=True)


def best_trial(source: Any, *, mode: str | None = None) -> dict[str, Any]:
    """The best finished trial as a dict of plain Python values (the top row of :func:`rank_trials`).

    A completed trial when there is one (best ``score``), else the best pruned one; failed,
    interrupted and not-started trials never. A trials frame is taken in its given order (the
    order :func:`trials_frame` sorts); any other source goes through :func:`trials_frame`.

    Raises:
        ValueError: no completed or pruned trial.

    Example:
        >>> reports = [{"epoch": 1, "val_metric": 0.1, "higher_is_better": 0.0}]
        >>> best_trial([("a", {}, reports), ("b", {}, [{**reports[0], "val_metric": 0.2}])])["trial_id"]
        'a'
    """
    is_trials = isinstance(source, pd.DataFrame) and "best_metric" in source.columns
    trials = source if is_trials else trials_frame(source, mode=mode)
    eligible = rank_trials(trials)
    if eligible.empty:
        statuses = trials["status"].value_counts().to_dict() if "status" in trials.columns else {}
        raise ValueError(f"no completed or pruned trial among {len(trials)} trials (statuses: {statuses})")
    row = eligible.iloc[0]
    return {str(k): (None if v is pd.NA else v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


# ------------------------------------------------------------------------------ weights
def weights_frame(source: Any) -> pd.DataFrame:
    """Learned weight trajectories, one row per trial, epoch and task (**long** format).

    ==============  =======  ============================================  ==========
    column          dtype    meaning                                       example
    ==============  =======  ============================================  ==========
    ``trial_id``    str      the trial (as in :func:`trials_frame`)        ``"3"``
    ``epoch``       int64    1-based epoch just finished                   ``2``
    ``task``        str      task name (``weights/<task>`` of the report)  ``"aux"``
    ``weight``      float64  effective weight of the task after the epoch  ``0.41``
    ==============  =======  ============================================  ==========

    Rows are ordered by trial, epoch, then task as the reports list them. Tasks a trial never
    reported are left out; a NaN weight of a reported task is kept. Join settings with
    ``weights.merge(trials_frame(source)[["trial_id", "config/weighting"]], on="trial_id")``.

    Returns:
        The frame; an empty source (or one without ``weights/*``) gives an empty frame with the
        four columns.

    Example:
        >>> reports = [{"epoch": e, "weights": {"main": 1.0, "aux": 0.1 * e}} for e in (1, 2, 3)]
        >>> df = weights_frame([("a", {}, reports)])
        >>> df.shape  # 3 epochs x 2 tasks
        (6, 4)
        >>> df.to_dict("records")[3]
        {'trial_id': 'a', 'epoch': 2, 'task': 'aux', 'weight': 0.2}
    """
    reports = reports_frame(source)
    columns = [c for c in reports.columns if c.startswith("weights/")]
    ran = reports[reports["epoch"].notna()]
    if not columns or ran.empty:
        return pd.DataFrame({"trial_id": pd.Series(dtype="str"), "epoch": pd.Series(dtype="int64"),
                             "task": pd.Series(dtype="str"), "weight": pd.Series(dtype="float64")})
    ran = ran.assign(_order=trial_order(ran["trial_id"]))
    long = ran.melt(id_vars=["_order", "trial_id", "epoch"], value_vars=columns, var_name="task", value_name="weight")
    long["_task"] = pd.Index(columns).get_indexer(long["task"])
    reported = long.groupby(["trial_id", "task"], sort=False)["weight"].transform(lambda w: w.notna().any())
    long = long[reported.astype(bool)].sort_values(["_order", "epoch", "_task"], kind="stable")
    return pd.DataFrame({
        "trial_id": as_str(long["trial_id"]),
        "epoch": long["epoch"].astype("int64"),
        "task": pd.Series([t[len("weights/"):] for t in long["task"]], index=long.index, dtype="str"),
        "weight": long["weight"].astype("float64"),
    }).reset_index(drop=True)


# ------------------------------------------------------------------------------ summary
def summary_frame(df: Any, by: str | Sequence[str] = "config/weighting", metric: str = "best_metric", *,
                  mode: str | None = None) -> pd.DataFrame:
    """Statistics of ``metric`` per value of one or several outer settings (**wide** format).

    =====================  ========  ===========================================  ==========
    column                 dtype     meaning                                      example
    =====================  ========  ===========================================  ==========
    *each of* ``by``       as in df  the group's setting value (NaN: ``None``)    ``"linear"``
    ``trials``             int64     trials in the group                          ``5``
    ``count``              int64     trials with a non-NaN ``metric``             ``4``
    ``mean``               float64   mean of ``metric``                           ``0.91``
    ``std``                float64   sample standard deviation (ddof=1; NaN for   ``0.02``
                                     a single value)
    ``min``                float64   smallest ``metric``                          ``0.88``
    ``max``                float64   largest ``metric``                           ``0.93``
    =====================  ========  ===========================================  ==========

    Args:
        df: a trials frame (or any source, which goes through :func:`trials_frame`).
        by: a column or a list of columns; a setting may be named without its ``config/``
            prefix (``"weighting"``).
        metric: the column summarised.
        mode: ``None`` keeps the groups sorted by value; ``"max"``/``"min"`` sorts by ``mean``,
            best first.

    Returns:
        One row per group. An empty ``df`` gives an empty frame with these columns.

    Raises:
        ValueError: an unknown column (the message lists the available ones), or a
            non-numeric ``metric``.

    Example:
        >>> trials = pd.DataFrame({"config/weighting": ["a", "a", "b"], "best_metric": [1.0, 3.0, 5.0]})
        >>> summary = summary_frame(trials, by="weighting")
        >>> summary.shape
        (2, 7)
        >>> summary["mean"].tolist()
        [2.0, 5.0]
    """
    _check_mode(mode)
    if not isinstance(df, pd.DataFrame) or ("best_metric" not in df.columns and "epoch" in df.columns):
        df = trials_frame(df)
    names = [by] if isinstance(by, str) else list(by)
    if not names:
        raise ValueError("by must name at least one column")
    keys = [resolve_column(df, name, "by") for name in names]
    column = resolve_column(df, metric, "metric")
    values = df[column]
    if not (pd.api.types.is_numeric_dtype(values) or values.isna().all()) or pd.api.types.is_bool_dtype(values):
        raise ValueError(f"metric column {column!r} must be numeric, it has dtype {values.dtype}")
    data = df[keys].assign(_metric=values.astype("float64"))
    grouped = data.groupby(keys, dropna=False, sort=True)["_metric"]
    summary = grouped.agg(["size", "count", "mean", "std", "min", "max"]).rename(columns={"size": "trials"})
    summary = summary.reset_index()
    summary[["trials", "count"]] = summary[["trials", "count"]].astype("int64")
    if mode is not None:
        summary = summary.sort_values("mean", ascending=mode == "min", kind="stable", na_position="last")
    return summary.reset_index(drop=True)


# --------------------------------------------------------------------------- write/read
def write_tables(source: Any, out_dir: str | os.PathLike, *, plots: bool = True,
                 mode: str | None = None) -> dict[str, Path]:
    """Write ``reports.csv``, ``trials.csv`` and ``weights.csv`` (and PNG plots) into ``out_dir``.

    Plots (only with ``plots=True`` and matplotlib installed, else left out; ask
    :func:`auxilearn_hpo.plots.available`): :func:`auxilearn_hpo.plots.write_plots`. CSV files hold NaN as an empty field;
    :func:`read_tables` reads them back with the same dtypes.

    Args:
        source: anything :func:`reports_frame` takes.
        out_dir: the folder (created if missing).
        plots: also draw the plots.
        mode: passed to :func:`trials_frame`.

    Returns:
        ``{"reports": path, "trials": path, "weights": path, "plot_metric_vs_<setting>": path, ...,
        "plot_weights": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = reports_frame(source)
    trials = trials_frame(reports, mode=mode)
    weights = weights_frame(reports)
    paths = {"reports": out / "reports.csv", "trials": out / "trials.csv", "weights": out / "weights.csv"}
    write_csvs({paths[name]: frame for name, frame in (("reports", reports), ("trials", trials),
                                                      ("weights", weights))})
    if plots:
        from .plots import write_plots

        try:
            paths.update(write_plots(trials, weights, out))
        except ImportError:  # no matplotlib: the tables alone (plots.available() tells callers)
            pass
    return paths


def read_tables(out_dir: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Read what :func:`write_tables` wrote: ``{"reports", "trials", "weights"}`` frames.

    Dtypes are restored (``trial_id`` stays text, counts are integers), so
    ``trials_frame(tables["reports"])`` equals ``tables["trials"]`` when ``write_tables`` ran
    with the default ``mode``. A missing ``trials.csv`` or ``weights.csv`` is recomputed from
    ``reports.csv``.

    Raises:
        FileNotFoundError: no ``reports.csv`` in ``out_dir``.
        TableError: a table that is empty, cut short, not text or lacks its columns.
    """
    out = Path(out_dir)
    if not (out / "reports.csv").is_file():
        raise FileNotFoundError(f"no reports.csv in {str(out)!r}; write it with write_tables(source, out_dir) "
                                "(the CLI's --out folder holds one)")
    reports = read_table(out / "reports.csv", read_reports_csv)
    trials = read_table(out / "trials.csv", read_trials_csv) if (out / "trials.csv").is_file() \
        else trials_frame(reports)
    weights = read_table(out / "weights.csv", read_weights_csv) if (out / "weights.csv").is_file() \
        else weights_frame(reports)
    return {"reports": reports, "trials": trials, "weights": weights}


