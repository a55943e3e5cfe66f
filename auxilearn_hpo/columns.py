"""The columns of every results table and their dtypes, kept stable through CSV.

:mod:`auxilearn_hpo.results` builds the tables; this module fixes their column order and
dtypes (:func:`normalize_reports`, :func:`normalize_trials`) and reads them back from CSV.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .report import REPORT_COLUMNS, EpochReport

#: Columns of every trials frame, in order (``config/*``, ``weights/*``: one column per setting, task).
TRIAL_COLUMNS: tuple[str, ...] = (
    "trial_id", "framework", "status", "reason", "config/*", "final_metric", "best_metric", "score", "test_metric", "epochs",
    "weights/*", "hypersteps", "hypersteps_skipped", "wall_time",
)
#: Columns of a weights frame.
WEIGHT_COLUMNS: tuple[str, ...] = ("trial_id", "epoch", "task", "weight")

#: The text columns that lead every reports and trials frame; ``reason``: why a failed trial
#: failed, where its backend says (:attr:`~auxilearn_hpo.records.TrialRecord.reason`), else empty.
LEADING = ("trial_id", "framework", "status", "reason")
PER_TASK = tuple(c[:-1] for c in REPORT_COLUMNS if c.endswith("/*"))
INT_KEYS = frozenset(f.name for f in dataclasses.fields(EpochReport) if f.type == "int")
STANDARD = tuple(c for c in REPORT_COLUMNS if not c.endswith("/*"))
FLOAT_KEYS = frozenset(STANDARD) - INT_KEYS
CSV_READ = {"keep_default_na": False, "na_values": [""]}  # pandas 3 parses floats exactly by default


class TableError(ValueError):
    """A table file (``reports.csv``, ``trials.csv``, ``weights.csv``) that cannot be read: empty,
    cut short, not CSV, or without the expected columns. The message is one line naming the file."""


# ------------------------------------------------------------------------------------ helpers
def is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    try:
        return isinstance(value, (float, np.floating)) and math.isnan(value)
    except TypeError:  # pragma: no cover - exotic float subclasses
        return False


def plain(value: Any) -> Any:
    """A hashable, CSV-stable cell: numpy scalars -> Python, lists -> JSON text, null -> None."""
    if is_null(value):
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


def infer(values: pd.Series) -> pd.Series:
    """One dtype for a column of settings or extra metrics, from its values alone.

    bool (``boolean`` with missing values), int64 (only ints, none missing), float64 (numbers,
    some missing, or nothing present), else ``str``. The same values read back from CSV give the
    same dtype, so tables round-trip.
    """
    cells = [plain(v) for v in values.tolist()]
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


def resolve_column(df: pd.DataFrame, name: str, what: str) -> str:
    """``name`` or ``config/<name>``; a ValueError naming it and listing the columns otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a column name (str), got {type(name).__name__}")
    for candidate in (name, f"config/{name}"):
        if candidate in df.columns:
            return candidate
    raise ValueError(f"unknown {what} column {name!r} (also tried 'config/{name}'); available columns: "
                     f"{list(map(str, df.columns))}")


def relative_weights(last: dict[str, Any], columns: list[str], main: str | None) -> dict[str, float]:
    """The ``weights/*`` of a trial's last report divided by the ``main`` one (all NaN when that
    weight is 0 or not finite, or the trial reported nothing)."""
    scale = float(last[main]) if last and main is not None and not is_null(last[main]) else math.nan
    if not math.isfinite(scale) or scale == 0:
        return {c: math.nan for c in columns}
    return {c: math.nan if is_null(last[c]) else float(last[c]) / scale for c in columns}


def as_str(values: pd.Series) -> pd.Series:
    return pd.Series([np.nan if is_null(v) else str(v) for v in values.tolist()], index=values.index, dtype="str")


def _text(df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` as text, or a column of nulls when ``df`` has none (a table written before it)."""
    return as_str(df[column]) if column in df else pd.Series(np.nan, index=df.index, dtype="str")


def as_float(values: pd.Series) -> pd.Series:
    cells = [np.nan if is_null(v) else v for v in values.tolist()]
    return pd.to_numeric(pd.Series(cells, index=values.index, dtype="object"), errors="coerce").astype("float64")


def as_int(values: pd.Series, *, nullable: bool = True) -> pd.Series:
    numeric = as_float(values)
    finite = numeric.dropna()
    if not (np.isfinite(finite).all() and (finite == finite.round()).all()):
        return numeric  # not counts after all: keep the numbers rather than lose them
    return numeric.astype("Int64" if nullable or numeric.isna().any() else "int64")


def trial_order(ids: pd.Series) -> np.ndarray:
    """Position of each row's trial in order of first appearance."""
    return pd.Index(pd.unique(ids)).get_indexer(ids)


def read_reports_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={c: "str" for c in LEADING}, **CSV_READ)
    return normalize_reports(frame)


def read_trials_csv(path: Path) -> pd.DataFrame:
    return normalize_trials(pd.read_csv(path, dtype={c: "str" for c in LEADING}, **CSV_READ))


def read_weights_csv(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype={"trial_id": "str", "task": "str"}, **CSV_READ)
    return pd.DataFrame({"trial_id": as_str(raw["trial_id"]), "epoch": raw["epoch"].astype("int64"),
                         "task": as_str(raw["task"]), "weight": as_float(raw["weight"])})


def write_csvs(frames: dict[Path, pd.DataFrame]) -> None:
    """Write each frame to its path (no index) so that no reader ever sees a table cut short.

    Each table goes to a temporary file in the same folder, then replaces the old one in one
    step (``os.replace``): an interrupted or failed write leaves the previous tables intact."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, frame in frames.items():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            staged.append((tmp, path))
            frame.to_csv(tmp, index=False)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()


def empty_reports() -> pd.DataFrame:
    columns: dict[str, pd.Series] = {c: pd.Series(dtype="str") for c in LEADING}
    for key in STANDARD:
        columns[key] = pd.Series(dtype="Int64" if key in INT_KEYS else "float64")
    return pd.DataFrame(columns)


def normalize_reports(df: pd.DataFrame) -> pd.DataFrame:
    """Column order, dtypes, one row per (trial, epoch) (the last report wins), rows by trial then epoch."""
    if "trial_id" not in df.columns or "epoch" not in df.columns:
        raise ValueError("a reports DataFrame needs 'trial_id' and 'epoch' columns (see reports_frame); "
                         f"got columns {list(map(str, df.columns))}")
    if df.empty:
        extra = [c for c in df.columns if c not in LEADING and c not in STANDARD]
        return pd.concat([empty_reports(), pd.DataFrame({c: pd.Series(dtype="float64") for c in extra})], axis=1)
    df = df.reset_index(drop=True)
    out: dict[str, pd.Series] = {
        "trial_id": as_str(df["trial_id"]),
        "framework": as_str(df["framework"]) if "framework" in df else pd.Series("custom", index=df.index,
                                                                                 dtype="str"),
        "status": as_str(df["status"]) if "status" in df else pd.Series("completed", index=df.index, dtype="str"),
        "reason": _text(df, "reason"),
    }
    for column in sorted(c for c in df.columns if c.startswith("config/")):
        out[column] = infer(df[column])
    per_task = {p: [c for c in df.columns if c.startswith(p)] for p in PER_TASK}
    for key in REPORT_COLUMNS:
        if key.endswith("/*"):
            for column in per_task[key[:-1]]:
                out[column] = as_float(df[column])
        elif key in df.columns:
            out[key] = as_int(df[key]) if key in INT_KEYS else as_float(df[key])
        else:
            out[key] = pd.Series(pd.NA if key in INT_KEYS else np.nan, index=df.index,
                                 dtype="Int64" if key in INT_KEYS else "float64")
    for column in df.columns:
        if column not in out:
            out[column] = infer(df[column])
    frame = pd.DataFrame(out)
    # One row per (trial, epoch): a retried or restored trial may report an epoch twice.
    has_epoch = frame["epoch"].notna()
    repeated = frame.duplicated(["trial_id", "epoch"], keep="last") & has_epoch
    # A row without epoch only stands for a trial that reported nothing.
    reported = frame.loc[has_epoch, "trial_id"].unique()
    placeholder = ~has_epoch & frame["trial_id"].isin(reported)
    frame = frame[~(repeated | placeholder)]
    order = trial_order(frame["trial_id"])
    frame = frame.assign(_order=order).sort_values(["_order", "epoch"], kind="stable", na_position="first")
    return frame.drop(columns="_order").reset_index(drop=True)


TRIAL_FLOATS = ("final_metric", "best_metric", "score", "test_metric")


def empty_trials() -> pd.DataFrame:
    columns: dict[str, pd.Series] = {c: pd.Series(dtype="str") for c in LEADING}
    for key in TRIAL_FLOATS:
        columns[key] = pd.Series(dtype="float64")
    columns["epochs"] = pd.Series(dtype="int64")
    columns["hypersteps"] = pd.Series(dtype="Int64")
    columns["hypersteps_skipped"] = pd.Series(dtype="Int64")
    columns["wall_time"] = pd.Series(dtype="float64")
    return pd.DataFrame(columns)


def normalize_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of a trials frame (built here or read back from CSV)."""
    if df.empty:
        frame = empty_trials()
        extra = [c for c in df.columns if c not in frame.columns]
        return pd.concat([frame, pd.DataFrame({c: pd.Series(dtype="float64") for c in extra})], axis=1)
    df = df.reset_index(drop=True)
    out: dict[str, pd.Series] = {c: _text(df, c) for c in LEADING}
    for column in sorted(c for c in df.columns if c.startswith("config/")):
        out[column] = infer(df[column])
    for key in TRIAL_FLOATS:
        out[key] = as_float(df[key])
    out["epochs"] = as_int(df["epochs"], nullable=False)
    for column in (c for c in df.columns if c.startswith("weights/")):
        out[column] = as_float(df[column])
    out["hypersteps"] = as_int(df["hypersteps"])
    out["hypersteps_skipped"] = as_int(df["hypersteps_skipped"])
    out["wall_time"] = as_float(df["wall_time"])
    for column in df.columns:
        if column not in out:
            out[column] = infer(df[column])
    return pd.DataFrame(out)


def read_table(path: Path, read: Any) -> pd.DataFrame:
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
