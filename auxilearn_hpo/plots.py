"""Plots of the results tables (PNG files; needs matplotlib: ``pip install auxilearn-hpo[plot]``).

Each plot draws on the Agg canvas of a stand-alone ``Figure`` and never touches pyplot's global
state or backend. Plots take the frames of :mod:`auxilearn_hpo.results` (``trials_frame``,
``weights_frame``); this module imports nothing of it (``results.write_tables`` draws through
:func:`write_plots`).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .columns import WEIGHT_COLUMNS, is_null, resolve_column

__all__ = ["plot_metric_vs_setting", "plot_weight_trajectories", "write_plots", "available", "new_figure",
           "safe_name"]

#: What to install for plots, as the one-line notes say it.
INSTALL = "pip install auxilearn-hpo[plot]"

_MAX_BOXES = 12  # a numeric setting with more distinct values is drawn as a scatter


def safe_name(column: str) -> str:
    """A file-name stem for a column: ``config/aux_lr`` -> ``aux_lr``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", _label(column)).strip("_") or "setting"


def available() -> bool:
    """Whether matplotlib can be imported (the ``plot`` extra is installed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(**kwargs: Any) -> Any:
    """A stand-alone matplotlib Figure on the Agg canvas (pyplot and its backend untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"plots need matplotlib; install it with `{INSTALL}`") from err
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    return path


def _label(column: str) -> str:
    return column[len("config/"):] if column.startswith("config/") else column


def plot_metric_vs_setting(df: Any, setting: str, path: str | os.PathLike, metric: str = "best_metric") -> Path:
    """Save a PNG of ``metric`` against one outer setting and return its path.

    A box plot with every trial as a jittered point per setting value; a numeric setting with
    more than 12 distinct values is drawn as a scatter instead (log axis when its positive
    values span more than two decades). ``None`` settings form their own group, ``"None"``.

    Args:
        df: a trials frame (:func:`auxilearn_hpo.results.trials_frame`).
        setting: a column, with or without its ``config/`` prefix.
        path: the PNG to write (folders are created).
        metric: the column on the vertical axis.

    Raises:
        ImportError: matplotlib is missing (``pip install auxilearn-hpo[plot]``).
        TypeError: ``df`` is not a DataFrame.
        ValueError: an unknown column, or no finite ``metric`` to draw.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a trials frame (auxilearn_hpo.results.trials_frame(source)), got "
                        f"{type(df).__name__}")
    column = resolve_column(df, setting, "setting")
    value_column = resolve_column(df, metric, "metric")
    data = pd.DataFrame({"x": df[column].astype("object"), "y": pd.to_numeric(df[value_column], errors="coerce")})
    data = data[np.isfinite(data["y"].to_numpy(dtype="float64", na_value=np.nan))]
    if data.empty:
        raise ValueError(f"no finite values of {value_column!r} to plot")
    figure = new_figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    x_values = data["x"].tolist()
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and not is_null(v) for v in x_values)
    rng = np.random.default_rng(0)
    if numeric and len(set(x_values)) > _MAX_BOXES:
        x = np.asarray(x_values, dtype="float64")
        axes.scatter(x, data["y"], s=18, alpha=0.7)
        if (x > 0).all() and x.max() / x.min() > 100:
            axes.set_xscale("log")
    else:
        groups: dict[Any, list[float]] = {}
        for x, y in zip(x_values, data["y"]):
            groups.setdefault("None" if is_null(x) else x, []).append(float(y))
        keys = sorted(groups, key=lambda k: (k == "None", not isinstance(k, numbers.Real), k if isinstance(
            k, numbers.Real) else 0, str(k)))
        series = [groups[k] for k in keys]
        axes.boxplot(series, positions=range(1, len(keys) + 1), widths=0.5, showfliers=False)
        for position, ys in enumerate(series, start=1):
            axes.scatter(position + rng.uniform(-0.12, 0.12, len(ys)), ys, s=14, alpha=0.7, zorder=3)
        axes.set_xticks(range(1, len(keys) + 1), [str(k) for k in keys], rotation=30 if len(keys) > 5 else 0)
    axes.set_xlabel(_label(column))
    axes.set_ylabel(value_column)
    axes.set_title(f"{value_column} by {_label(column)} ({len(data)} trials)")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_weight_trajectories(weights_df: Any, path: str | os.PathLike, trial_id: Any = None) -> Path:
    """Save a PNG of learned weights against epoch and return its path.

    With ``trial_id`` one axes shows that trial, one line per task; without it one panel per
    task shows every trial as a thin line.

    Args:
        weights_df: a weights frame (:func:`auxilearn_hpo.results.weights_frame`).
        path: the PNG to write (folders are created).
        trial_id: a trial to show alone (compared as text, so Optuna's ``3`` or ``"3"``).

    Raises:
        ImportError: matplotlib is missing (``pip install auxilearn-hpo[plot]``).
        TypeError: ``weights_df`` is not a weights frame.
        ValueError: no weights, or an unknown ``trial_id`` (the message lists some).
    """
    if not (isinstance(weights_df, pd.DataFrame) and set(WEIGHT_COLUMNS) <= set(weights_df.columns)):
        raise TypeError(f"weights_df must be a weights frame with columns {list(WEIGHT_COLUMNS)} "
                        "(auxilearn_hpo.results.weights_frame(source))")
    data = weights_df
    if trial_id is not None:
        data = data[data["trial_id"].astype("str") == str(trial_id)]
        if data.empty:
            known = list(pd.unique(weights_df["trial_id"].astype("str")))
            raise ValueError(f"no weights of trial_id {str(trial_id)!r}; trials with weights: {known[:20]}"
                             f"{' ...' if len(known) > 20 else ''}")
    if data.empty:
        raise ValueError("no weights to plot (the reports carry no weights/<task> values)")
    tasks = list(pd.unique(data["task"]))
    if trial_id is not None:
        figure = new_figure(figsize=(6.4, 4.0))
        axes = figure.add_subplot()
        for task in tasks:
            part = data[data["task"] == task]
            axes.plot(part["epoch"], part["weight"], marker="o", markersize=3, label=str(task))
        axes.set_title(f"learned weights of trial {trial_id}")
        _epoch_axis(axes)
        axes.legend(title="task", fontsize="small")
        return _save(figure, path)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure = new_figure(figsize=(4.0 * columns, 3.2 * rows))
    trial_ids = list(pd.unique(data["trial_id"]))
    colours = {t: f"C{i % 10}" for i, t in enumerate(trial_ids)}  # one colour per trial in every panel
    for i, task in enumerate(tasks, start=1):
        axes = figure.add_subplot(rows, columns, i)
        part = data[data["task"] == task]
        for trial, rows_ in part.groupby("trial_id", sort=False):
            axes.plot(rows_["epoch"], rows_["weight"], linewidth=1, alpha=0.7, color=colours[trial], label=str(trial))
        axes.set_title(f"{task} ({part['trial_id'].nunique()} trials)")
        _epoch_axis(axes)
        if i == 1 and len(trial_ids) <= 10:
            axes.legend(title="trial", fontsize="x-small", title_fontsize="x-small")
    return _save(figure, path)


def write_plots(trials: pd.DataFrame, weights: pd.DataFrame, out: str | os.PathLike) -> dict[str, Path]:
    """Draw the plots of a run into ``out``: ``metric_vs_<setting>.png`` for every outer setting
    that takes more than one value (when some trial has a finite ``best_metric``) and
    ``weights.png`` (every trajectory, when there are weights).

    Returns:
        ``{"plot_metric_vs_<setting>": path, ..., "plot_weights": path}``.

    Raises:
        ImportError: matplotlib is missing (``pip install auxilearn-hpo[plot]``).
    """
    new_figure()  # the ImportError naming the extra, before anything is drawn
    out = Path(out)
    paths: dict[str, Path] = {}
    if trials["best_metric"].notna().any():
        for column in (c for c in trials.columns if c.startswith("config/")):
            if trials[column].nunique(dropna=False) > 1:
                name = safe_name(column)
                paths[f"plot_metric_vs_{name}"] = plot_metric_vs_setting(trials, column, out / f"metric_vs_{name}.png")
    if not weights.empty:
        paths["plot_weights"] = plot_weight_trajectories(weights, out / "weights.png")
    return paths


def _epoch_axis(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("weight")
    axes.grid(alpha=0.3)
