"""The analysis example runs as written with a tiny budget (the others are run in
test_ray_tune.py and test_optuna.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.slow
def test_analyse_results_example(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "analyse_results.py"), "--out", str(tmp_path), "--smoke"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # It picked a best trial, rebuilt it from its checkpoint and scored it, and wrote the plot.
    assert "best trial" in proc.stdout and "test" in proc.stdout
    assert (tmp_path / "weights.png").stat().st_size > 0


@pytest.mark.slow
def test_learned_aux_labels_example(tmp_path):
    import optuna

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "learned_aux_labels.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # three finished trials in the study, each with the learned-label settings it searched
    study = optuna.load_study(study_name="learned_aux_labels", storage=f"sqlite:///{tmp_path / 'learned_aux_labels.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    assert all({"psi", "generator_width", "generator_depth", "aux_weight", "weighting"} <= set(t.params) for t in done)
    assert all(0.0 <= t.value <= 1.0 for t in done)
    assert "best trial" in proc.stdout and "config/psi" in proc.stdout


def test_the_ray_example_ranks_trials_by_score():
    import ast

    tree = ast.parse((ROOT / "examples" / "ray_tune_own_model.py").read_text())
    metrics = [kw.value.value for node in ast.walk(tree) if isinstance(node, ast.Call)
               for kw in node.keywords if kw.arg == "metric" and isinstance(kw.value, ast.Constant)]
    # Tune ranks by the trainable's `score`, the one definition of best the tables and Optuna use.
    assert metrics == ["score"]
