"""Tuning results as pandas DataFrames, whichever framework ran the trials.

Every builder accepts the same *sources*:

* an Optuna ``Study`` (or a list of its ``FrozenTrial`` objects): the objective of
  :mod:`auxilearn_hpo.integrations.optuna` stores ``user_attrs["reports"]`` (flattened
  per-epoch reports, NaN stored as ``None``) and ``user_attrs["config"]`` (the trial's outer
  settings). A trial without ``reports`` falls back to its intermediate values (``epoch`` and
  ``val_metric`` only, ``higher_is_better`` from the study's direction);
* a Ray Tune ``ResultGrid`` (or a list of its ``Result`` objects), read through each result's
  ``metrics_dataframe``, ``config`` and ``error``;
* a folder: an ``--out`` folder holding ``reports.csv`` (written by :func:`write_tables`), or
  a Ray Tune experiment folder (every ``result.json`` below it is one trial; no Ray needed);
* a list of ``(trial_id, config, reports)`` or ``(trial_id, config, reports, status)`` tuples
  from your own loop (``framework`` is then ``"custom"``; reports may be nested dicts);
* a DataFrame that already is a reports frame (e.g. read back from ``reports.csv``).

:func:`reports_frame` builds the canonical long table (one row per trial and epoch); the
others derive from it, so the columns are the same whichever framework ran the trials.
This module never imports Ray or Optuna: their objects are read by duck typing.

Trial status (column ``status``), the same words for every framework (:data:`STATUSES`):

* ``"completed"``: ran all its epochs;
* ``"pruned"``: stopped early by the pruner or scheduler (Optuna PRUNED; a Ray trial that
  ended without error before its configured epochs, ``config["epochs"]``, or when that is
  missing or ``None``, the most epochs any trial of the source ran);
* ``"failed"``: ended with an error (Optuna FAIL, Ray ERROR), or its last report holds a
  non-finite ``val_metric`` or ``weights/<task>`` (a diverged trial), whatever the framework said;
* ``"interrupted"``: started but never finished (Ctrl-C, a killed process; Optuna RUNNING or a
  FAIL marked ``user_attrs["interrupted"]``, Ray RUNNING or PAUSED);
* ``"not_started"``: queued but never run (Optuna WAITING, Ray PENDING without a report).

A rerun of the same search resumes interrupted and not-started trials.

.. note::
    Ray keeps ``error.txt`` in a trial folder after ``FailureConfig(max_failures=...)`` retried
    the trial successfully. Reading a folder, a trial therefore counts as failed only when its
    last report is not later than the last ``Failure # N (occurred at ...)`` in ``error.txt``
    (a folder with only ``error.pkl`` counts as failed). A ``ResultGrid`` knows this itself.

Plots need matplotlib (``pip install auxilearn-hpo[plot]``); they draw on the Agg canvas of a
stand-alone ``Figure`` and never touch pyplot's global state or backend.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "REPORT_COLUMNS", "TRIAL_COLUMNS", "WEIGHT_COLUMNS", "STATUSES",
    "reports_frame", "trials_frame", "weights_frame", "summary_frame", "best_trial",
    "plot_metric_vs_setting", "plot_weight_trajectories", "write_tables", "read_tables", "TableError",
]

#: Report columns of every reports frame, in order; ``task_losses/*``, ``weights/*`` and
#: ``coefficients/*`` (PCGrad's surgery coefficients, apart from the loss weights) stand for one
#: column per task (in the order the reports list the tasks). Other reported keys follow them.
REPORT_COLUMNS: tuple[str, ...] = (
    "epoch", "step", "val_metric", "train_loss", "task_losses/*", "weights/*", "coefficients/*", "hypersteps",
    "hypersteps_skipped", "hypergrad_norm", "solver_iterations", "residual", "seconds", "test_metric",
    "higher_is_better",
)
#: Columns of every trials frame, in order (``config/*``, ``weights/*``: one column per setting, task).
TRIAL_COLUMNS: tuple[str, ...] = (
    "trial_id", "framework", "status", "config/*", "final_metric", "best_metric", "test_metric", "epochs",
    "weights/*", "hypersteps", "hypersteps_skipped", "wall_time",
)
#: Columns of a weights frame.
WEIGHT_COLUMNS: tuple[str, ...] = ("trial_id", "epoch", "task", "weight")
#: The values of the ``status`` column.
STATUSES: tuple[str, ...] = ("completed", "pruned", "failed", "interrupted", "not_started")

_LEADING = ("trial_id", "framework", "status")
_PER_TASK = ("task_losses/", "weights/", "coefficients/")
_INT_KEYS = frozenset({"epoch", "step", "hypersteps", "hypersteps_skipped"})
_STANDARD = tuple(c for c in REPORT_COLUMNS if not c.endswith("/*"))
_FLOAT_KEYS = frozenset(_STANDARD) - _INT_KEYS
_OPTUNA_STATUS = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "interrupted",
                  "WAITING": "not_started"}
# Ray Tune's Trial.status values; TERMINATED is completed or pruned (by the epochs run).
_RAY_STATUS = {"ERROR": "failed", "RUNNING": "interrupted", "PAUSED": "interrupted", "PENDING": "not_started"}
# Keys Ray Tune adds to every report (ray.tune.result.AUTO_RESULT_KEYS and friends): not ours.
_RAY_KEYS = frozenset({
    "training_iteration", "time_total_s", "episodes_total", "timesteps_total", "node_ip", "hostname", "pid",
    "time_this_iter_s", "timestamp", "date", "time_since_restore", "timesteps_since_restore",
    "iterations_since_restore", "config", "checkpoint_dir_name", "done", "trial_id", "experiment_tag",
    "experiment_id", "should_checkpoint", "episodes_this_iter", "timesteps_this_iter", "logdir", "warmup_time",
})
_RAY_TRIAL_ID = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)")
_RAY_FAILURE = re.compile(r"Failure # \d+ \(occurred at ([^)]+)\)")
_PLOT_HINT = "pip install auxilearn-hpo[plot]"
_CSV_READ = {"keep_default_na": False, "na_values": [""]}  # pandas 3 parses floats exactly by default
_MAX_BOXES = 12  # a numeric setting with more distinct values is drawn as a scatter


class TableError(ValueError):
    """A table file (``reports.csv``, ``trials.csv``, ``weights.csv``) that cannot be read: empty,
    cut short, not CSV, or without the expected columns. The message is one line naming the file."""


# ------------------------------------------------------------------------------------ helpers
def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``"outer/inner"`` keys, as Ray Tune names its columns."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return isinstance(value, (float, np.floating)) and math.isnan(value)
    except TypeError:  # pragma: no cover - exotic float subclasses
        return False


def _plain(value: Any) -> Any:
    """A hashable, CSV-stable cell: numpy scalars -> Python, lists -> JSON text, null -> None."""
    if _is_null(value):
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    item = getattr(value, "item", None)
    if isinstance(value, np.generic) and callable(item):
        return item()
    return value


def _infer(values: pd.Series) -> pd.Series:
    """One dtype for a column of settings or extra metrics, from its values alone.

    bool (``boolean`` with missing values), int64 (only ints, none missing), float64 (numbers,
    some missing, or nothing present), else ``str``. The same values read back from CSV give the
    same dtype, so tables round-trip.
    """
    cells = [_plain(v) for v in values.tolist()]
    present = [v for v in cells if v is not None]
    index = values.index
    if not present:
        return pd.Series(np.nan, index=index, dtype="float64")
    complete = len(present) == len(cells)
    if all(isinstance(v, (bool, np.bool_)) or v in ("True", "False") for v in present):
        flags = [None if v is None else (v == "True" if isinstance(v, str) else bool(v)) for v in cells]
        return pd.Series(flags, index=index, dtype="bool" if complete else "boolean")
    if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in present):
        if complete and all(isinstance(v, numbers.Integral) for v in present):
            return pd.Series(cells, index=index, dtype="int64")
        return pd.Series([np.nan if v is None else float(v) for v in cells], index=index, dtype="float64")
    return pd.Series([np.nan if v is None else str(v) for v in cells], index=index, dtype="str")


def _as_str(values: pd.Series) -> pd.Series:
    return pd.Series([np.nan if _is_null(v) else str(v) for v in values.tolist()], index=values.index, dtype="str")


def _as_float(values: pd.Series) -> pd.Series:
    cells = [np.nan if _is_null(v) else v for v in values.tolist()]
    return pd.to_numeric(pd.Series(cells, index=values.index, dtype="object"), errors="coerce").astype("float64")


def _as_int(values: pd.Series, *, nullable: bool = True) -> pd.Series:
    numeric = _as_float(values)
    finite = numeric.dropna()
    if not (np.isfinite(finite).all() and (finite == finite.round()).all()):
        return numeric  # not counts after all: keep the numbers rather than lose them
    return numeric.astype("Int64" if nullable or numeric.isna().any() else "int64")


def _trial_order(ids: pd.Series) -> np.ndarray:
    """Position of each row's trial in order of first appearance."""
    return pd.Index(pd.unique(ids)).get_indexer(ids)


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "max", "min"):
        raise ValueError(f"mode must be None (from higher_is_better), 'max' or 'min', got {mode!r}")


def _resolve_column(df: pd.DataFrame, name: str, what: str) -> str:
    """``name`` or ``config/<name>``; a ValueError naming it and listing the columns otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a column name (str), got {type(name).__name__}")
    for candidate in (name, f"config/{name}"):
        if candidate in df.columns:
            return candidate
    raise ValueError(f"unknown {what} column {name!r} (also tried 'config/{name}'); available columns: "
                     f"{list(map(str, df.columns))}")


# ------------------------------------------------------------------------------ sources
@dataclass
class _Record:
    """One trial as read from any source, before it becomes rows."""

    trial_id: str
    framework: str
    config: dict[str, Any]  # flat settings
    reports: list[dict[str, Any]]  # flat reports
    configs: list[dict[str, Any]] | None = None  # per report (Ray: PBT may change a trial's config)
    status: str | None = None  # None: derive from ``error`` and the epochs run
    error: bool = False
    framework_status: str | None = None  # Ray's Trial.status when known (TERMINATED, RUNNING, ...)


def _last_epoch(reports: Sequence[Mapping[str, Any]]) -> float | None:
    epochs = [float(r["epoch"]) for r in reports if isinstance(r.get("epoch"), numbers.Real)
              and not isinstance(r.get("epoch"), bool) and math.isfinite(float(r["epoch"]))]
    return max(epochs) if epochs else None


def _configured_epochs(record: _Record) -> float | None:
    config = record.configs[-1] if record.configs else record.config
    value = config.get("epochs")
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _not_finite(value: Any) -> bool:
    """None (Optuna's JSON for NaN) or a non-finite number."""
    if value is None:
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return not math.isfinite(float(value))
    return False


def _diverged(reports: Sequence[Mapping[str, Any]]) -> bool:
    """The last report's ``val_metric`` or one of its ``weights/<task>`` is NaN or infinite."""
    if not reports:
        return False
    last = reports[-1]
    keys = [k for k in last if k == "val_metric" or k.startswith("weights/")]
    return any(_not_finite(last[k]) for k in keys)


def _resolve_statuses(records: list[_Record]) -> None:
    """Ray and custom trials: failed on error, pruned when short of their epochs, else completed;
    Ray's own status says interrupted / not started. Any trial that diverged is failed."""
    ends = [_last_epoch(r.reports) for r in records]
    most = max((e for e in ends if e is not None), default=None)
    for record, end in zip(records, ends):
        if record.status is None:
            known = _RAY_STATUS.get(str(record.framework_status or "").upper())
            if record.error:
                record.status = "failed"
            elif known == "not_started" and record.reports:
                record.status = "interrupted"  # restored with a checkpoint, waiting to go on
            elif known is not None:
                record.status = known
            else:
                target = _configured_epochs(record)
                target = most if target is None else target
                short = end is None or (target is not None and end < target)
                record.status = "pruned" if short else "completed"
        if record.status in ("completed", "pruned") and _diverged(record.reports):
            record.status = "failed"


def _is_optuna_trial(obj: Any) -> bool:
    return all(hasattr(obj, a) for a in ("number", "state", "params", "user_attrs"))


def _study_higher(study: Any) -> float | None:
    try:
        name = getattr(study.direction, "name", str(study.direction))
    except (AttributeError, RuntimeError, ValueError):  # no study, or several objectives
        return None
    return {"MAXIMIZE": 1.0, "MINIMIZE": 0.0}.get(str(name).upper())


def _optuna_records(trials: Iterable[Any], study: Any = None) -> list[_Record]:
    higher = _study_higher(study)
    records = []
    for i, trial in enumerate(trials):
        attrs = dict(trial.user_attrs or {})
        config = attrs.get("config")
        config = dict(config) if isinstance(config, Mapping) else dict(trial.params or {})
        reports = attrs.get("reports")
        if isinstance(reports, list) and all(isinstance(r, Mapping) for r in reports):
            reports = [_flatten(r) for r in reports]
        else:  # someone else's objective: its intermediate values are all there is
            steps = sorted((getattr(trial, "intermediate_values", None) or {}).items())
            reports = [{"epoch": int(step), "val_metric": value} for step, value in steps]
            if higher is not None:
                for report in reports:
                    report["higher_is_better"] = higher
        state = str(getattr(trial.state, "name", trial.state)).upper()
        status = _OPTUNA_STATUS.get(state, state.lower())
        if status == "failed" and attrs.get("interrupted"):  # Optuna marks a trial stopped by Ctrl-C FAIL
            status = "interrupted"
        number = getattr(trial, "number", None)
        records.append(_Record(str(i if number is None else number), "optuna", _flatten(config), reports,
                               status=status))
    return records


def _ray_report(row: Mapping[str, Any]) -> dict[str, Any]:
    report = {k: v for k, v in row.items() if k not in _RAY_KEYS and not k.startswith("config/")}
    if _is_null(report.get("epoch")) and not _is_null(row.get("training_iteration")):
        report["epoch"] = row["training_iteration"]  # a trainable that does not report epochs
    return report


def _ray_id_from_path(path: Any) -> str | None:
    if not path:
        return None
    match = _RAY_TRIAL_ID.search(Path(str(path)).name)
    return match.group(1) if match else None


def _ray_grid_statuses(grid: Any) -> dict[str, dict[str, Any]]:
    """``{trial_id: {"status": Trial.status, "config": ...}}`` of a Ray ``ResultGrid`` (read by
    duck typing; empty when unknown). The config serves trials that never reported (their
    ``Result`` has none).

    The experiment state Ray saved on disk wins over the grid's live trials: after Ctrl-C, Ray
    saves the state (unfinished trials RUNNING or PENDING, which is what a restore resumes) and
    then stops the live trials, which end up TERMINATED in memory as if they had finished.
    """
    statuses: dict[str, dict[str, Any]] = {}
    analysis = getattr(grid, "_experiment_analysis", None)
    for trial in getattr(analysis, "trials", None) or ():
        trial_id, status = getattr(trial, "trial_id", None), getattr(trial, "status", None)
        if trial_id is not None and status is not None:
            config = getattr(trial, "config", None)
            statuses[str(trial_id)] = {"status": str(status), "config": config if isinstance(config, Mapping) else {}}
    try:
        path = getattr(grid, "experiment_path", None)
    except Exception:  # noqa: BLE001 - a duck-typed grid may not know its path
        path = None
    if isinstance(path, (str, os.PathLike)) and "://" not in str(path) and Path(path).is_dir():
        for trial_id, known in _ray_experiment_state(Path(path), recursive=False).items():
            if known["status"]:
                before = statuses.get(trial_id, {})
                statuses[trial_id] = {"status": known["status"], "config": known["config"] or before.get("config", {})}
    return statuses


def _ray_result_records(results: Iterable[Any], statuses: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> list[_Record]:
    statuses = statuses or {}
    records = []
    for i, result in enumerate(results):
        frame = getattr(result, "metrics_dataframe", None)
        # After a retry Ray 2.60 can drop the crashed attempt's rows from result.json (which
        # metrics_dataframe reads) while progress.csv keeps every report: take the longer one.
        progress = Path(str(getattr(result, "path", "") or "")) / "progress.csv"
        if getattr(result, "path", None) and progress.is_file():
            try:
                logged = pd.read_csv(progress)
            except (OSError, ValueError, pd.errors.ParserError):
                logged = None
            if logged is not None and (frame is None or len(logged) > len(frame)):
                frame = logged
        rows = [] if frame is None else frame.to_dict("records")
        config = _flatten(dict(getattr(result, "config", None) or {}))
        reports, configs = [], []
        for row in rows:
            row_config = {k[len("config/"):]: v for k, v in row.items() if k.startswith("config/")}
            configs.append(_flatten(row_config) if row_config else config)
            reports.append(_ray_report(row))
        ids = [row.get("trial_id") for row in rows if not _is_null(row.get("trial_id"))]
        metrics = getattr(result, "metrics", None) or {}
        trial_id = (ids[0] if ids else None) or metrics.get("trial_id") or _ray_id_from_path(
            getattr(result, "path", None)) or str(i)
        known = statuses.get(str(trial_id), {})
        if not config and known.get("config"):  # a trial that never reported
            config = _flatten(dict(known["config"]))
        records.append(_Record(str(trial_id), "ray", configs[-1] if configs else config, reports,
                               configs=configs or None, error=getattr(result, "error", None) is not None,
                               framework_status=known.get("status")))
    return records


def _ray_folder_failed(trial_dir: Path, lines: list[dict[str, Any]]) -> bool:
    error_txt, error_pkl = trial_dir / "error.txt", trial_dir / "error.pkl"
    if not error_txt.exists():
        return error_pkl.exists()
    failures = _RAY_FAILURE.findall(error_txt.read_text(errors="replace"))
    last_date = lines[-1].get("date") if lines else None
    # Reported after the last failure: Ray retried the trial and it went on (see the module note).
    recovered = bool(failures) and isinstance(last_date, str) and last_date > failures[-1].strip()
    return not recovered


def _ray_experiment_state(root: Path, *, recursive: bool = True) -> dict[str, dict[str, Any]]:
    """Every trial Ray's latest ``experiment_state-*.json`` of each experiment below ``root`` lists:
    ``{trial_id: {"status", "config", "logdir"}}``. A file that does not parse (cut short) is
    skipped: the trial folders still hold what was reported."""
    latest: dict[Path, Path] = {}
    for state_file in sorted((root.rglob if recursive else root.glob)("experiment_state-*.json")):
        latest[state_file.parent] = state_file  # names hold the start time: the last sorts last
    trials: dict[str, dict[str, Any]] = {}
    for state_file in latest.values():
        try:
            state = json.loads(state_file.read_text())
            entries = state["trial_data"]
            for entry in entries:
                data = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
                config = data.get("config")
                trials[str(data["trial_id"])] = {
                    "status": str(data.get("status") or ""),
                    "config": config if isinstance(config, Mapping) else {},
                    "logdir": state_file.parent / str(data.get("relative_logdir") or ""),
                }
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return trials


def _ray_folder_records(root: Path) -> list[_Record]:
    records = []
    states = _ray_experiment_state(root)
    for result_file in sorted(root.rglob("result.json")):
        trial_dir = result_file.parent
        lines = []
        for text in result_file.read_text(errors="replace").splitlines():
            if text.strip():
                try:
                    lines.append(json.loads(text))
                except json.JSONDecodeError:  # a line cut short when the run was interrupted
                    continue
        params_file = trial_dir / "params.json"
        params = json.loads(params_file.read_text()) if params_file.exists() else {}
        config = _flatten(params if isinstance(params, Mapping) else {})
        configs = [_flatten(line["config"]) if isinstance(line.get("config"), Mapping) else config for line in lines]
        ids = [line["trial_id"] for line in lines if line.get("trial_id")]
        trial_id = ids[0] if ids else (_ray_id_from_path(trial_dir) or trial_dir.name)
        known = states.pop(str(trial_id), {})
        records.append(_Record(str(trial_id), "ray", configs[-1] if configs else config,
                               [_ray_report(line) for line in lines], configs=configs or None,
                               error=_ray_folder_failed(trial_dir, lines), framework_status=known.get("status")))
    for trial_id, known in states.items():  # listed by Ray, never wrote a result.json: not started
        status = known["status"] or "PENDING"
        records.append(_Record(trial_id, "ray", _flatten(known["config"]), [],
                               error=status.upper() == "ERROR", framework_status=status))
    return records


def _custom_records(items: Sequence[Any]) -> list[_Record]:
    records = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise TypeError("a list source must hold (trial_id, config, reports) or (trial_id, config, reports, "
                            f"status) tuples, got {item!r:.80}")
        trial_id, config, reports, *status = item
        if status and status[0] not in STATUSES:
            raise ValueError(f"status of trial {trial_id!r} must be one of {STATUSES}, got {status[0]!r}")
        records.append(_Record(str(trial_id), "custom", _flatten(dict(config or {})),
                               [_flatten(dict(r)) for r in reports], status=status[0] if status else None))
    return records


def _read_reports_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={c: "str" for c in _LEADING}, **_CSV_READ)
    return _normalize_reports(frame)


def _folder_source(path: Path) -> pd.DataFrame | list[_Record]:
    if path.is_file() and path.suffix == ".csv":
        return _read_reports_csv(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such folder: {str(path)!r}")
    if (path / "reports.csv").is_file():
        return _read_reports_csv(path / "reports.csv")
    records = _ray_folder_records(path)
    if not records and not any(path.rglob("experiment_state-*.json")):
        raise FileNotFoundError(
            f"{str(path)!r} holds neither reports.csv (written by write_tables or the CLI's --out) nor a Ray Tune "
            "experiment (no result.json below it); for an Optuna study in a database, load it with "
            "optuna.load_study(...) and pass the Study")
    return records


def _source(source: Any) -> pd.DataFrame | list[_Record]:
    """A reports DataFrame, or the trials of ``source`` as records with their statuses resolved."""
    if isinstance(source, pd.DataFrame):
        return _normalize_reports(source)
    if isinstance(source, (str, os.PathLike)):
        found = _folder_source(Path(source))
    elif hasattr(source, "get_dataframe"):  # a Ray ResultGrid
        found = _ray_result_records(source, _ray_grid_statuses(source))
    elif hasattr(source, "metrics_dataframe"):  # one Ray Result
        found = _ray_result_records([source])
    elif hasattr(source, "get_trials") or (hasattr(source, "trials") and hasattr(source, "study_name")):
        trials = source.get_trials(deepcopy=False) if hasattr(source, "get_trials") else source.trials
        found = _optuna_records(trials, source)
    elif hasattr(source, "experiment_path"):  # e.g. Ray's ExperimentAnalysis
        found = _folder_source(Path(str(source.experiment_path)))
    elif isinstance(source, Iterable) and not isinstance(source, Mapping):
        items = list(source)
        if items and all(_is_optuna_trial(t) for t in items):
            found = _optuna_records(items)
        elif items and all(hasattr(g, "get_dataframe") for g in items):  # several Ray experiments
            found = [r for grid in items for r in _ray_result_records(grid, _ray_grid_statuses(grid))]
        elif items and all(hasattr(r, "metrics_dataframe") for r in items):
            found = _ray_result_records(items)
        else:
            found = _custom_records(items)
    else:
        raise TypeError(
            "source must be an Optuna Study, a Ray Tune ResultGrid, a folder (with reports.csv or a Ray "
            "experiment), a reports DataFrame, or a list of (trial_id, config, reports) tuples; got "
            f"{type(source).__name__}")
    if isinstance(found, pd.DataFrame):
        return found
    _resolve_statuses(found)
    return found


# ------------------------------------------------------------------------------ reports
def _empty_reports() -> pd.DataFrame:
    columns: dict[str, pd.Series] = {c: pd.Series(dtype="str") for c in _LEADING}
    for key in _STANDARD:
        columns[key] = pd.Series(dtype="Int64" if key in _INT_KEYS else "float64")
    return pd.DataFrame(columns)


def _normalize_reports(df: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes, one row per (trial, epoch) (the last report wins), rows by trial then epoch."""
    if "trial_id" not in df.columns or "epoch" not in df.columns:
        raise ValueError("a reports DataFrame needs 'trial_id' and 'epoch' columns (see reports_frame); "
                         f"got columns {list(map(str, df.columns))}")
    if df.empty:
        extra = [c for c in df.columns if c not in _LEADING and c not in _STANDARD]
        return pd.concat([_empty_reports(), pd.DataFrame({c: pd.Series(dtype="float64") for c in extra})], axis=1)
    df = df.reset_index(drop=True)
    out: dict[str, pd.Series] = {
        "trial_id": _as_str(df["trial_id"]),
        "framework": _as_str(df["framework"]) if "framework" in df else pd.Series("custom", index=df.index,
                                                                                 dtype="str"),
        "status": _as_str(df["status"]) if "status" in df else pd.Series("completed", index=df.index, dtype="str"),
    }
    for column in sorted(c for c in df.columns if c.startswith("config/")):
        out[column] = _infer(df[column])
    per_task = {p: [c for c in df.columns if c.startswith(p)] for p in _PER_TASK}
    for key in REPORT_COLUMNS:
        if key.endswith("/*"):
            for column in per_task[key[:-1]]:
                out[column] = _as_float(df[column])
        elif key in df.columns:
            out[key] = _as_int(df[key]) if key in _INT_KEYS else _as_float(df[key])
        else:
            out[key] = pd.Series(pd.NA if key in _INT_KEYS else np.nan, index=df.index,
                                 dtype="Int64" if key in _INT_KEYS else "float64")
    for column in df.columns:
        if column not in out:
            out[column] = _infer(df[column])
    frame = pd.DataFrame(out)
    # One row per (trial, epoch): a retried or restored trial may report an epoch twice.
    has_epoch = frame["epoch"].notna()
    repeated = frame.duplicated(["trial_id", "epoch"], keep="last") & has_epoch
    # A row without epoch only stands for a trial that reported nothing.
    reported = frame.loc[has_epoch, "trial_id"].unique()
    placeholder = ~has_epoch & frame["trial_id"].isin(reported)
    frame = frame[~(repeated | placeholder)]
    order = _trial_order(frame["trial_id"])
    frame = frame.assign(_order=order).sort_values(["_order", "epoch"], kind="stable", na_position="first")
    return frame.drop(columns="_order").reset_index(drop=True)


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
    *other reported keys*        inferred    kept as reported (Ray's own columns such as
                                             ``training_iteration`` are dropped)
    ===========================  ==========  ===========================================  ============

    Settings are sorted by name; tasks keep the order of the reports. Rows are ordered by trial
    (as the source lists them) then epoch.

    Args:
        source: an Optuna ``Study``, a Ray ``ResultGrid``, a folder (``reports.csv`` or a Ray
            experiment), a reports DataFrame, or ``(trial_id, config, reports[, status])`` tuples
            (see the module docstring).

    Returns:
        The frame. An empty source (a study without trials) gives an empty frame with the
        leading and standard report columns.

    Raises:
        FileNotFoundError: a folder with neither ``reports.csv`` nor ``result.json`` files.
        TypeError: a source of another kind.

    Example:
        >>> reports = [{"epoch": e, "val_metric": 0.5 + 0.1 * e, "weights": {"main": 1.0, "aux": 0.1 * e},
        ...             "seconds": 1.0, "higher_is_better": 1.0} for e in (1, 2)]
        >>> df = reports_frame([("a", {"weighting": "linear", "epochs": 2}, reports)])
        >>> df.shape  # 2 epochs; 3 leading + 2 settings + 12 standard + 2 weight columns
        (2, 19)
        >>> df[["trial_id", "status", "config/weighting", "epoch", "weights/aux"]].values.tolist()
        [['a', 'completed', 'linear', 1, 0.1], ['a', 'completed', 'linear', 2, 0.2]]
    """
    found = _source(source)
    if isinstance(found, pd.DataFrame):
        return found
    rows: list[dict[str, Any]] = []
    for record in found:
        lead = {"trial_id": record.trial_id, "framework": record.framework, "status": record.status}
        if not record.reports:
            rows.append({**lead, **{f"config/{k}": _plain(v) for k, v in record.config.items()}})
        for i, report in enumerate(record.reports):
            config = record.configs[i] if record.configs else record.config
            rows.append({**lead, **{f"config/{k}": _plain(v) for k, v in config.items()},
                         **{k: _plain(v) for k, v in report.items()}})
    if not rows:
        return _empty_reports()
    frame = pd.DataFrame(rows)
    if "epoch" not in frame.columns:  # only trials that reported nothing
        frame["epoch"] = pd.NA
    return _normalize_reports(frame)


# ------------------------------------------------------------------------------- trials
_TRIAL_FLOATS = ("final_metric", "best_metric", "test_metric")


def _empty_trials() -> pd.DataFrame:
    columns: dict[str, pd.Series] = {c: pd.Series(dtype="str") for c in _LEADING}
    for key in _TRIAL_FLOATS:
        columns[key] = pd.Series(dtype="float64")
    columns["epochs"] = pd.Series(dtype="int64")
    columns["hypersteps"] = pd.Series(dtype="Int64")
    columns["hypersteps_skipped"] = pd.Series(dtype="Int64")
    columns["wall_time"] = pd.Series(dtype="float64")
    return pd.DataFrame(columns)


def _normalize_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of a trials frame (built here or read back from CSV)."""
    if df.empty:
        frame = _empty_trials()
        extra = [c for c in df.columns if c not in frame.columns]
        return pd.concat([frame, pd.DataFrame({c: pd.Series(dtype="float64") for c in extra})], axis=1)
    df = df.reset_index(drop=True)
    out: dict[str, pd.Series] = {c: _as_str(df[c]) for c in _LEADING}
    for column in sorted(c for c in df.columns if c.startswith("config/")):
        out[column] = _infer(df[column])
    for key in _TRIAL_FLOATS:
        out[key] = _as_float(df[key])
    out["epochs"] = _as_int(df["epochs"], nullable=False)
    for column in (c for c in df.columns if c.startswith("weights/")):
        out[column] = _as_float(df[column])
    out["hypersteps"] = _as_int(df["hypersteps"])
    out["hypersteps_skipped"] = _as_int(df["hypersteps_skipped"])
    out["wall_time"] = _as_float(df["wall_time"])
    for column in df.columns:
        if column not in out:
            out[column] = _infer(df[column])
    return pd.DataFrame(out)


def _higher(mode: str | None, metric: str, ran: pd.DataFrame) -> bool | None:
    if mode is not None:
        return mode == "max"
    if metric != "val_metric":
        raise ValueError(f"pass mode='max' or 'min' to rank {metric!r}: higher_is_better only describes val_metric")
    flags = ran["higher_is_better"].dropna()
    return None if flags.empty else bool(flags.iloc[-1] >= 0.5)


def trials_frame(source: Any, *, mode: str | None = None, metric: str = "val_metric") -> pd.DataFrame:
    """One row per trial (**wide** format), sorted best first.

    ===========================  ==========  ===========================================  ============
    column                       dtype       meaning                                      example
    ===========================  ==========  ===========================================  ============
    ``trial_id``                 str         Ray's trial id or Optuna's trial number      ``"3"``
    ``framework``                str         ``"ray"``, ``"optuna"`` or ``"custom"``      ``"ray"``
    ``status``                   str         one of :data:`STATUSES`                      ``"completed"``
    ``config/<setting>``         inferred    outer setting at the trial's last report     ``10``
                                             (as in :func:`reports_frame`)
    ``final_metric``             float64     ``metric`` at the last epoch run             ``0.90``
    ``best_metric``              float64     best ``metric`` over the epochs run          ``0.92``
    ``test_metric``              float64     last non-NaN test metric (NaN if none)       ``0.89``
    ``epochs``                   int64       last epoch run (0: reported nothing)         ``10``
    ``weights/<task>``           float64     effective weight after the last epoch        ``0.7``
    ``hypersteps``               Int64       hypersteps taken (``<NA>``: no report)       ``40``
    ``hypersteps_skipped``       Int64       hypersteps skipped (non-finite)              ``0``
    ``wall_time``                float64     sum of the epochs' ``seconds``               ``17.2``
    ===========================  ==========  ===========================================  ============

    Rows are sorted by ``best_metric``, best first, ties in source order, NaN last. The columns
    are the same whichever framework ran the trials.

    Args:
        source: anything :func:`reports_frame` takes (a reports frame included).
        mode: ``"max"`` or ``"min"`` ranks ``metric`` that way; ``None`` reads each trial's
            ``higher_is_better`` (a ValueError asks for ``mode`` when trials disagree or a
            trial with a finite metric carries none).
        metric: the report column ranked (``"val_metric"``; any other needs ``mode``).

    Returns:
        The frame. An empty source gives an empty frame with the columns above except the
        per-setting and per-task ones.

    Example:
        >>> reports = [{"epoch": e, "val_metric": v, "weights": {"main": 1.0, "aux": w},
        ...             "higher_is_better": 1.0} for e, v, w in ((1, 0.6, 0.2), (2, 0.5, 0.3))]
        >>> df = trials_frame([("a", {"weighting": "linear"}, reports),
        ...                    ("b", {"weighting": "equal"}, reports[:1], "pruned")])
        >>> df.shape  # 2 trials; 3 leading + 1 setting + 4 metrics + 2 weights + 3 counters
        (2, 13)
        >>> df[["trial_id", "status", "final_metric", "best_metric", "epochs"]].values.tolist()
        [['a', 'completed', 0.5, 0.6, 2], ['b', 'pruned', 0.6, 0.6, 1]]
    """
    _check_mode(mode)
    reports = reports_frame(source)
    if reports.empty:
        return _empty_trials()
    if metric not in reports.columns:
        raise ValueError(f"unknown metric column {metric!r}; report columns: {list(map(str, reports.columns))}")
    config_columns = [c for c in reports.columns if c.startswith("config/")]
    weight_columns = [c for c in reports.columns if c.startswith("weights/")]
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
            "trial_id": trial_id, "framework": last["framework"], "status": last["status"],
            **{c: last[c] for c in config_columns},
            "final_metric": values[-1] if values.size else np.nan,
            "best_metric": (finite.max() if higher else finite.min()) if finite.size else np.nan,
            "test_metric": tests.iloc[-1] if len(tests) else np.nan,
            "epochs": int(ran["epoch"].max()) if len(ran) else 0,
            **{c: last[c] if len(ran) else np.nan for c in weight_columns},
            "hypersteps": last["hypersteps"] if len(ran) else pd.NA,
            "hypersteps_skipped": last["hypersteps_skipped"] if len(ran) else pd.NA,
            "wall_time": float(ran["seconds"].sum()) if len(ran) else 0.0,
        }
        rows.append(row)
    frame = _normalize_trials(pd.DataFrame(rows))
    if len(set(directions)) > 1:
        raise ValueError("trials disagree on higher_is_better, so they cannot be ranked together; "
                         "pass mode='max' or mode='min'")
    if directions:
        frame = frame.sort_values("best_metric", ascending=not directions[0], kind="stable", na_position="last")
    return frame.reset_index(drop=True)


def best_trial(source: Any, *, mode: str | None = None) -> dict[str, Any]:
    """The best finished trial as a dict of plain Python values (a trials frame's top row).

    Failed, interrupted and not-started trials are passed over, as Optuna's ``study.best_trial`` does; pruned
    trials compete with what they reached. A trials frame is taken in its given order (the
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
    eligible = trials[trials["status"].isin(["completed", "pruned"])] if "status" in trials.columns else trials
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
    ran = ran.assign(_order=_trial_order(ran["trial_id"]))
    long = ran.melt(id_vars=["_order", "trial_id", "epoch"], value_vars=columns, var_name="task", value_name="weight")
    long["_task"] = pd.Index(columns).get_indexer(long["task"])
    reported = long.groupby(["trial_id", "task"], sort=False)["weight"].transform(lambda w: w.notna().any())
    long = long[reported.astype(bool)].sort_values(["_order", "epoch", "_task"], kind="stable")
    return pd.DataFrame({
        "trial_id": _as_str(long["trial_id"]),
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
    keys = [_resolve_column(df, name, "by") for name in names]
    column = _resolve_column(df, metric, "metric")
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


# -------------------------------------------------------------------------------- plots
def _figure(**kwargs: Any) -> Any:
    """A stand-alone matplotlib Figure on the Agg canvas (pyplot and its backend untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"plots need matplotlib; install it with `{_PLOT_HINT}`") from err
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
        df: a trials frame (or any source, which goes through :func:`trials_frame`).
        setting: a column, with or without its ``config/`` prefix.
        path: the PNG to write (folders are created).
        metric: the column on the vertical axis.

    Raises:
        ImportError: matplotlib is missing (``pip install auxilearn-hpo[plot]``).
        ValueError: an unknown column, or no finite ``metric`` to draw.
    """
    if not isinstance(df, pd.DataFrame) or ("best_metric" not in df.columns and "epoch" in df.columns):
        df = trials_frame(df)
    column = _resolve_column(df, setting, "setting")
    value_column = _resolve_column(df, metric, "metric")
    data = pd.DataFrame({"x": df[column].astype("object"), "y": pd.to_numeric(df[value_column], errors="coerce")})
    data = data[np.isfinite(data["y"].to_numpy(dtype="float64", na_value=np.nan))]
    if data.empty:
        raise ValueError(f"no finite values of {value_column!r} to plot")
    figure = _figure(figsize=(6.4, 4.0))
    axes = figure.add_subplot()
    x_values = data["x"].tolist()
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) and not _is_null(v) for v in x_values)
    rng = np.random.default_rng(0)
    if numeric and len(set(x_values)) > _MAX_BOXES:
        x = np.asarray(x_values, dtype="float64")
        axes.scatter(x, data["y"], s=18, alpha=0.7)
        if (x > 0).all() and x.max() / x.min() > 100:
            axes.set_xscale("log")
    else:
        groups: dict[Any, list[float]] = {}
        for x, y in zip(x_values, data["y"]):
            groups.setdefault("None" if _is_null(x) else x, []).append(float(y))
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
        weights_df: a weights frame (or any source, which goes through :func:`weights_frame`).
        path: the PNG to write (folders are created).
        trial_id: a trial to show alone (compared as text, so Optuna's ``3`` or ``"3"``).

    Raises:
        ImportError: matplotlib is missing (``pip install auxilearn-hpo[plot]``).
        ValueError: no weights, or an unknown ``trial_id`` (the message lists some).
    """
    if not (isinstance(weights_df, pd.DataFrame) and set(WEIGHT_COLUMNS) <= set(weights_df.columns)):
        weights_df = weights_frame(weights_df)
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
        figure = _figure(figsize=(6.4, 4.0))
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
    figure = _figure(figsize=(4.0 * columns, 3.2 * rows))
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


def _epoch_axis(axes: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("weight")
    axes.grid(alpha=0.3)


# --------------------------------------------------------------------------- write/read
def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "setting"


def write_tables(source: Any, out_dir: str | os.PathLike, *, plots: bool = True,
                 mode: str | None = None) -> dict[str, Path]:
    """Write ``reports.csv``, ``trials.csv`` and ``weights.csv`` (and PNG plots) into ``out_dir``.

    Plots (only with ``plots=True`` and matplotlib installed; otherwise silently left out):
    ``metric_vs_<setting>.png`` for every outer setting that takes more than one value among
    the trials (when some trial has a finite ``best_metric``) and ``weights.png`` (all
    trajectories, when there are weights). CSV files hold NaN as an empty field;
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
    # Each table goes to a temporary file in the same folder, then replaces the old one in one
    # step (os.replace): an interrupted or failed write never leaves a truncated table behind.
    staged: list[tuple[Path, Path]] = []
    try:
        for name, frame in (("reports", reports), ("trials", trials), ("weights", weights)):
            tmp = out / f".{paths[name].name}.{os.getpid()}.tmp"
            staged.append((tmp, paths[name]))
            frame.to_csv(tmp, index=False)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
    if not plots:
        return paths
    try:
        _figure()
    except ImportError:
        return paths
    if trials["best_metric"].notna().any():
        for column in (c for c in trials.columns if c.startswith("config/")):
            if trials[column].nunique(dropna=False) > 1:
                name = _safe_name(_label(column))
                paths[f"plot_metric_vs_{name}"] = plot_metric_vs_setting(trials, column, out / f"metric_vs_{name}.png")
    if not weights.empty:
        paths["plot_weights"] = plot_weight_trajectories(weights, out / "weights.png")
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
    reports = _read_table(out / "reports.csv", _read_reports_csv)
    if (out / "trials.csv").is_file():
        trials = _read_table(out / "trials.csv", lambda p: _normalize_trials(
            pd.read_csv(p, dtype={c: "str" for c in _LEADING}, **_CSV_READ)))
    else:
        trials = trials_frame(reports)
    if (out / "weights.csv").is_file():
        def weights_csv(path: Path) -> pd.DataFrame:
            raw = pd.read_csv(path, dtype={"trial_id": "str", "task": "str"}, **_CSV_READ)
            return pd.DataFrame({"trial_id": _as_str(raw["trial_id"]), "epoch": raw["epoch"].astype("int64"),
                                 "task": _as_str(raw["task"]), "weight": _as_float(raw["weight"])})

        weights = _read_table(out / "weights.csv", weights_csv)
    else:
        weights = weights_frame(reports)
    return {"reports": reports, "trials": trials, "weights": weights}


def _read_table(path: Path, read: Any) -> pd.DataFrame:
    """``read(path)``, with any failure to parse turned into a one-line :class:`TableError`."""
    try:
        head = path.read_bytes()[:4096]
    except OSError as err:
        raise TableError(f"{path} cannot be read: {err.strerror or err}") from None
    if not head.strip():
        raise TableError(f"{path} is empty (the run was interrupted while writing it?); rerun the same "
                         "'auxilearn-hpo tune' command to write it again") from None
    if b"\x00" in head:
        raise TableError(f"{path} is not a CSV table (it holds binary data)") from None
    try:
        return read(path)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as err:
        detail = " ".join(str(err).split())[:160]
        raise TableError(f"{path} is not a readable {path.stem} table ({type(err).__name__}: {detail})") from None
