"""Beyond one machine: the paths of examples/cluster.md, exercised on this machine.

* Ray Tune against an existing multi-node cluster (``ray_tune.connect(address)`` then
  ``ray_tune.run``), on a 2-node ``ray.cluster_utils.Cluster``. It runs in a subprocess: the rest
  of the test session shares one local Ray runtime (``ray_session`` in conftest.py), and a
  process can be connected to only one Ray.
* Optuna with one shared storage (JournalStorage file, SQLite) and two worker processes calling
  ``optuna.run`` on the same study, as two machines would.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytestmark = [pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RAY_CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from auxilearn_hpo.integrations import ray_tune

    os.environ.update(ray_tune.QUIET_ENV)  # before any node starts: nodes inherit it
    import ray
    from ray.cluster_utils import Cluster

    storage = sys.argv[1]
    # head: no CPU, so no trial can run where the driver is; one worker node with 2 CPUs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        connected = ray_tune.connect(cluster.address, logging_level="ERROR", log_to_driver=False)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        head = ray.get_runtime_context().get_node_id()
        cpu_nodes = [n["NodeID"] for n in nodes if n["Resources"].get("CPU", 0) > 0]
        frame, grid = ray_tune.run(
            "toy", param_space={"weighting": "linear", "update_every": 1, "aux_lr": 0.05},
            fixed={"epochs": 2, "seed": 0}, num_samples=2, scheduler=None, storage_path=storage,
            name="multi-node", resources={"cpu": 1},
        )
        rows = grid.get_dataframe()
        histories = [ray_tune.checkpoint_history(r) for r in grid]
        print("RESULT " + json.dumps({
            "connected": connected, "n_nodes": len(nodes), "head_is_cpu_node": head in cpu_nodes,
            "n_cpu_nodes": len(cpu_nodes), "frame_rows": len(frame),
            "frame_trials": sorted(str(t) for t in frame["trial_id"]) if "trial_id" in frame else None,
            "grid_trials": sorted(str(t) for t in rows["trial_id"]),
            "errors": [str(r.error) for r in grid if r.error],
            "epochs": [h["epoch"].tolist() for h in histories],
            "val_finite": [bool(h["val_metric"].notna().all()) for h in histories],
            "storage_entries": sorted(os.listdir(os.path.join(storage, "multi-node"))),
        }), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    """
)


@pytest.mark.ray
def test_ray_tune_runs_on_a_two_node_cluster(tmp_path):
    pytest.importorskip("ray")
    storage = str(tmp_path / "ray_results")  # on a real cluster: shared storage (NFS, s3://...)
    # The Cluster writes its address to $RAY_TMPDIR/ray/ray_current_cluster, where any plain
    # ray.init() on this machine would find and join it; a private (short: socket paths are
    # limited to ~100 characters) temp dir keeps other Ray users here out of it.
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run([sys.executable, "-c", RAY_CLUSTER_SCRIPT, storage], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["connected"] is True
    # two nodes; the driver's (head) node has no CPU, so both trials ran on the other node
    assert result["n_nodes"] == 2 and result["n_cpu_nodes"] == 1 and result["head_is_cpu_node"] is False
    assert result["errors"] == []
    # every trial's rows reach the tables, once each
    assert len(result["grid_trials"]) == 2 and len(set(result["grid_trials"])) == 2
    assert result["frame_rows"] == 2
    if result["frame_trials"] is not None:
        assert result["frame_trials"] == result["grid_trials"]
    # and each trial's every epoch, read back from its checkpoint in the shared storage
    assert result["epochs"] == [[1, 2], [1, 2]]
    assert result["val_finite"] == [True, True]
    assert sum(e.startswith("trainable_") for e in result["storage_entries"]) == 2


OPTUNA_WORKER_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import optuna
    from optuna.storages.journal import JournalFileBackend
    from auxilearn_hpo.integrations.optuna import run

    path, index, n_trials, barrier = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    # as Optuna users write it: a URL for SQLite, a storage object for a journal file
    storage = optuna.storages.JournalStorage(JournalFileBackend(path)) if path.endswith(".log") else f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    open(os.path.join(barrier, f"ready{index}"), "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:  # start together, as a cluster would
        time.sleep(0.01)
    run("toy", n_trials=n_trials, storage=storage, study_name="shared", fixed={"epochs": 2, "seed": 0},
        sampler=optuna.samplers.TPESampler(seed=index), pruner=optuna.pruners.NopPruner())
    print("DONE", os.getpid(), flush=True)
    """
)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_optuna_workers_share_one_study(tmp_path, kind):
    optuna = pytest.importorskip("optuna")
    from optuna.trial import TrialState

    from optuna.storages.journal import JournalFileBackend

    n_trials = 8
    storage = str(tmp_path / ("study.log" if kind == "journal" else "study.db"))

    def resolve_storage(path):
        return optuna.storages.JournalStorage(JournalFileBackend(path)) if kind == "journal" else f"sqlite:///{path}"

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    if kind == "sqlite":
        # as examples/cluster.md says: create an RDB study once, before the workers start (two
        # processes creating the schema of a new database at the same moment collide)
        optuna.create_study(study_name="shared", storage=resolve_storage(storage), direction="minimize")
    workers = [
        subprocess.Popen([sys.executable, "-c", OPTUNA_WORKER_SCRIPT, storage, str(i), str(n_trials), str(barrier)],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outputs = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=180)
            outputs.append((w.returncode, out, err))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for code, out, err in outputs:
        assert code == 0 and "DONE" in out, err[-3000:]
    pids = {int(out.split("DONE", 1)[1].split()[0]) for _, out, _ in outputs}

    study = optuna.load_study(study_name="shared", storage=resolve_storage(storage))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    # nothing duplicated: trial numbers are 0..n-1, each once
    assert sorted(numbers) == list(range(len(trials)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # nothing lost and nothing extra: exactly n_trials finished; SQLite shares the workers' lock
    # on its file, so no trial is started beyond n_trials; a journal file has no shared lock, and
    # a trial started in the race for the last place fails at once, before training, as surplus
    assert len(complete) == n_trials
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.FAIL)
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("surplus") is True and "reports" not in t.user_attrs
    if kind == "sqlite":
        assert len(trials) == n_trials
    # every finished trial's reports are complete and agree with its value
    for t in complete:
        reports = t.user_attrs["reports"]
        assert [r["epoch"] for r in reports] == [1, 2]
        # the value is the trial's score: the mean val_metric of its final model's (here two)
        # epochs, the refit's, which the last report records
        assert t.value == pytest.approx(reports[-1]["refit_score"]) and math.isfinite(t.value)
        assert t.user_attrs["epochs"] == 2 and t.user_attrs["config"]["epochs"] == 2
        assert t.user_attrs["worker"]["pid"] in pids
    # both workers took part
    assert {t.user_attrs["worker"]["pid"] for t in complete} == pids
