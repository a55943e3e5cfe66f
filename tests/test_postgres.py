"""A real PostgreSQL server: ``auxilearn-hpo tune --workers N --storage postgresql://...``, a
worker killed mid-trial, and a rerun. ``.ci/run`` starts a server on loopback and exports its URL
as ``AUXILEARN_TEST_POSTGRES_URL``; without one these tests skip and say so.

Each test gets a database of its own (created on the server, dropped afterwards).
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

URL = os.environ.get("AUXILEARN_TEST_POSTGRES_URL")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _admin(url):
    """A psycopg connection string for the server's maintenance database ``postgres``."""
    from sqlalchemy.engine import make_url

    u = make_url(url).set(drivername="postgresql", database="postgres")
    return u.render_as_string(hide_password=False)


@pytest.fixture
def pg_url():
    if not URL:
        pytest.skip("no PostgreSQL server: set AUXILEARN_TEST_POSTGRES_URL (bash .ci/run starts one)")
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install auxilearn-hpo[postgres]")
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(_admin(URL), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL server at {make_url(URL).render_as_string()} is not reachable: {err}")
    url = make_url(URL).set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    yield url
    with psycopg.connect(_admin(URL), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tune(*args, timeout=600):
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli", "tune", "--benchmark", "toy", "--backend", "optuna", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _study(url, name="toy"):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


def _states(study):
    return [t.state.name for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def test_four_workers_finish_exactly_the_trials_and_a_rerun_adds_none(pg_url, tmp_path):
    out = tmp_path / "run"
    args = ["--trials", "8", "--workers", "4", "--epochs", "2", "--storage", pg_url, "--out", str(out),
            "--no-plots", "--quiet"]
    first = _tune(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    trials = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    reports = pd.read_csv(out / "reports.csv", dtype={"trial_id": str})
    # exactly 8 trials, numbered 0..7, all finished: the places were taken under the server's lock
    assert sorted(trials["trial_id"], key=int) == [str(i) for i in range(8)]
    assert set(trials["status"]) <= {"completed", "pruned"}
    states = _states(_study(pg_url))
    assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"}
    # every trial's epochs are in reports.csv, once each
    assert reports.groupby("trial_id")["epoch"].apply(list).to_dict() == {
        t: list(range(1, e + 1)) for t, e in zip(trials["trial_id"], trials["epochs"])}
    # run.json records the storage (no password in it) and the four workers shared the study
    assert json.loads((out / "run.json").read_text())["storage"] == pg_url
    pids = {t.user_attrs["worker"]["pid"] for t in _study(pg_url).trials}
    assert 2 <= len(pids) <= 4

    again = _tune(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    # the rerun adds none: the same 8 trials in the study and in the tables
    assert len(_study(pg_url).trials) == 8
    rerun = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    pd.testing.assert_frame_equal(rerun.sort_values("trial_id").reset_index(drop=True),
                                  trials.sort_values("trial_id").reset_index(drop=True))


def test_a_worker_killed_mid_trial_is_failed_by_heartbeat_and_its_place_run_again(pg_url, tmp_path):
    import optuna
    from optuna.trial import TrialState

    out = tmp_path / "run"
    n_trials = 40  # 4 workers x 10 short trials
    # a 2 s heartbeat (stale after 4 s): with 1 s, a live worker's trial was once failed as stale
    # on a machine loaded several times beyond its 2 cores
    cmd = [sys.executable, "-m", "auxilearn_hpo.cli", "tune", "--benchmark", "toy", "--backend", "optuna",
           "--trials", str(n_trials), "--workers", "4", "--epochs", "20", "--heartbeat", "2", "--storage", pg_url,
           "--out", str(out), "--no-plots", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    victim = None
    try:
        deadline = time.time() + 300
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                study = _study(pg_url)
            except (KeyError, Exception):  # not created yet
                continue
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                # mid-trial: it has reported an epoch and has many to go (an epoch takes ~0.1 s), so the
                # kill lands well before the trial could end
                if t.number >= 4 and 1 <= len(t.intermediate_values) <= 5 and "worker" in t.user_attrs:
                    victim = t.user_attrs["worker"]["pid"]
                    os.kill(victim, signal.SIGKILL)
                    break
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no trial was caught mid-run"
    pid = victim
    assert proc.returncode == 0, stderr[-3000:]
    assert f"(pid {pid}) ended with signal 9" in stderr

    study = _study(pg_url)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    # nothing duplicated: numbers 0..n-1 once each; nothing left RUNNING or WAITING
    assert [t.number for t in trials] == list(range(len(trials)))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # exactly the requested number finished; the killed worker's trial is the one failure (not
    # lost), marked by the heartbeat (no error of its own), cut short before its 20 epochs
    assert len(finished) == n_trials
    assert len(failed) == 1 and len(trials) == n_trials + 1
    number = failed[0].number
    assert failed[0].user_attrs["worker"]["pid"] == pid and "error" not in failed[0].user_attrs
    assert len(failed[0].intermediate_values) < 20
    # the killed worker ran nothing after it
    assert all(t.user_attrs["worker"]["pid"] != pid for t in trials if t.number > number)
    # the tables hold every trial: the killed one as failed, with the epoch it reported
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str}).set_index("trial_id")
    reports = pd.read_csv(out / "reports.csv", dtype={"trial_id": str})
    assert sorted(table.index, key=int) == [str(t.number) for t in trials]
    assert table.loc[str(number), "status"] == "failed"
    assert (table.drop(index=str(number))["status"].isin(["completed", "pruned"])).all()
    assert set(reports["trial_id"]) == set(table.index)
    reached = sorted(failed[0].intermediate_values)
    assert reports[reports["trial_id"] == str(number)]["epoch"].tolist() == reached
