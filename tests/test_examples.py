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
