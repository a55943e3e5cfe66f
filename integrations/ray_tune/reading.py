"""Reading experiments: a Ray Tune experiment (grid, results or folder) as trial records."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from auxilearn_hpo.columns import is_null
from auxilearn_hpo.records import TrialRecord, diverged, flatten

__all__ = ["records"]

# ---------------------------------------------------------------------- reading experiments
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


def _status(ray_status: str | None, error: bool, reported: bool) -> str | None:
    """Our status from Ray's ``Trial.status``; ``None`` (completed or pruned, by the epochs run) when
    Ray says TERMINATED or nothing. An error always makes the trial failed."""
    known = _RAY_STATUS.get(str(ray_status or "").upper())
    if error:
        return "failed"
    if known == "not_started" and reported:
        return "interrupted"  # restored with a checkpoint, waiting to go on
    return known


def records(source: Any) -> list[TrialRecord]:
    """The trials of a Ray Tune experiment as trial records, for :mod:`auxilearn_hpo.results`
    (``results.trials_frame(records(grid))``).

    ``source``: a ``ResultGrid`` (or several), a ``Result`` or a list of them, an
    ``ExperimentAnalysis``, or an experiment folder on disk (every ``result.json`` below it is a
    trial; Ray need not be running). Ray's statuses map to ours: ERROR failed, RUNNING and PAUSED
    interrupted, PENDING not_started (interrupted when it has reports: restored from a checkpoint),
    TERMINATED completed or pruned by the epochs run.

    .. note::
        Ray keeps ``error.txt`` in a trial folder after ``FailureConfig(max_failures=...)`` retried
        the trial successfully. Reading a folder, a trial therefore counts as failed only when its
        last report is not later than the last ``Failure # N (occurred at ...)`` in ``error.txt``.
        After a retry Ray 2.60 can drop the crashed attempt's rows from ``result.json`` while
        ``progress.csv`` keeps them: the longer of the two is read.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"no such folder: {str(root)!r}")
        found = _ray_folder_records(root)
        if not found and not any(root.rglob("experiment_state-*.json")):
            raise FileNotFoundError(f"{str(root)!r} holds no Ray Tune experiment (no result.json below it)")
        return found
    if hasattr(source, "get_dataframe"):  # a ResultGrid
        return _ray_result_records(source, _ray_grid_statuses(source))
    if hasattr(source, "metrics_dataframe"):  # one Result
        return _ray_result_records([source])
    if hasattr(source, "experiment_path"):  # e.g. ExperimentAnalysis
        return records(str(source.experiment_path))
    items = list(source)
    if items and all(hasattr(g, "get_dataframe") for g in items):  # several experiments
        return [r for grid in items for r in _ray_result_records(grid, _ray_grid_statuses(grid))]
    return _ray_result_records(items)


def _ray_report(row: Mapping[str, Any]) -> dict[str, Any]:
    report = {k: v for k, v in row.items() if k not in _RAY_KEYS and not k.startswith("config/")}
    if is_null(report.get("epoch")) and not is_null(row.get("training_iteration")):
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
                        ) -> list[TrialRecord]:
    import pandas as pd

    statuses = statuses or {}
    found = []
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
        config = flatten(dict(getattr(result, "config", None) or {}))
        reports, configs = [], []
        for row in rows:
            row_config = {k[len("config/"):]: v for k, v in row.items() if k.startswith("config/")}
            configs.append(flatten(row_config) if row_config else config)
            reports.append(_ray_report(row))
        ids = [row.get("trial_id") for row in rows if not is_null(row.get("trial_id"))]
        metrics = getattr(result, "metrics", None) or {}
        trial_id = (ids[0] if ids else None) or metrics.get("trial_id") or _ray_id_from_path(
            getattr(result, "path", None)) or str(i)
        known = statuses.get(str(trial_id), {})
        if not config and known.get("config"):  # a trial that never reported
            config = flatten(dict(known["config"]))
        error = getattr(result, "error", None) is not None
        found.append(TrialRecord(str(trial_id), "ray", configs[-1] if configs else config, reports,
                                   configs=configs or None, error=error,
                                   status=_status(known.get("status"), error, bool(reports)),
                                   reason=_reason(error, str(getattr(result, "error", "") or ""), reports)))
    return found


def _reason(error: bool, text: str, reports: list[dict[str, Any]]) -> str | None:
    """One line saying why a trial failed: the last line of its error ``text`` (``Exception:
    message``, from Ray's traceback), or the epoch at which it diverged; ``None`` when it did not fail."""
    if error:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:500] if lines else "failed (Ray reports an error without a message)"
    if diverged(reports):
        return f"diverged at epoch {reports[-1].get('epoch')}: val_metric or weights not finite"
    return None


def _ray_folder_error(trial_dir: Path) -> str:
    try:
        return (trial_dir / "error.txt").read_text(errors="replace")
    except OSError:
        return ""


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


def _ray_folder_records(root: Path) -> list[TrialRecord]:
    found = []
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
        config = flatten(params if isinstance(params, Mapping) else {})
        configs = [flatten(line["config"]) if isinstance(line.get("config"), Mapping) else config for line in lines]
        ids = [line["trial_id"] for line in lines if line.get("trial_id")]
        trial_id = ids[0] if ids else (_ray_id_from_path(trial_dir) or trial_dir.name)
        known = states.pop(str(trial_id), {})
        error = _ray_folder_failed(trial_dir, lines)
        reports = [_ray_report(line) for line in lines]
        found.append(TrialRecord(str(trial_id), "ray", configs[-1] if configs else config,
                                   reports, configs=configs or None, error=error,
                                   status=_status(known.get("status"), error, bool(lines)),
                                   reason=_reason(error, _ray_folder_error(trial_dir) if error else "", reports)))
    for trial_id, known in states.items():  # listed by Ray, never wrote a result.json: not started
        status = known["status"] or "PENDING"
        error = status.upper() == "ERROR"
        found.append(TrialRecord(trial_id, "ray", flatten(known["config"]), [], error=error,
                                   status=_status(status, error, False), reason=_reason(error, "", [])))
    return found
