"""optuna-dashboard opens the study ``auxilearn-hpo tune`` writes: trials, parameters,
intermediate values and the learned weights (user attributes), checked in a headless Chromium.

Needs ``optuna-dashboard`` and ``selenium`` (``pip install auxilearn-hpo[dev]``) and Debian's
``chromium`` and ``chromium-driver`` (``bash .ci/run`` installs them); skips, saying which is
missing, otherwise.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from auxilearn_hpo.cli import main

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            pytest.skip(f"no {path}: install the Debian package {package} (apt-get install {package})")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def dashboard(tmp_path):
    """``optuna-dashboard sqlite:///<out>/study.db`` on a loopback port, for a study the CLI wrote."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed: pip install optuna-dashboard")
    out = tmp_path / "run"
    assert main(["tune", "--benchmark", "toy", "--backend", "optuna", "--trials", "3", "--epochs", "2", "--out",
                 str(out), "--no-plots", "--quiet"]) == 0
    port = _free_port()
    # the command the README gives, from this environment
    command = os.path.join(os.path.dirname(sys.executable), "optuna-dashboard")
    proc = subprocess.Popen([command if os.path.exists(command) else "optuna-dashboard", f"sqlite:///{out / 'study.db'}",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as r:
                    studies = json.load(r)["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"optuna-dashboard did not start: {proc.stderr.read()[-2000:]}")
                time.sleep(0.3)
        yield base, studies, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_dashboard_shows_trials_parameters_intermediate_values_and_learned_weights(dashboard, browser,
                                                                                       tmp_path):
    import optuna
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, studies, out = dashboard
    # one study, named after the benchmark
    assert [(s["study_id"], s["study_name"]) for s in studies] == [(1, "toy")]
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}")

    browser.get(f"{base}/dashboard/studies/1/trials")
    WebDriverWait(browser, 30).until(lambda d: "Intermediate Values" in d.find_element(By.TAG_NAME, "body").text)
    text = browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(tmp_path / "dashboard.png"))
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
    lines = text.splitlines()
    # the trial list: three trials, each by number
    assert "3 Trials" in lines and {"Trial 0", "Trial 1", "Trial 2"} <= set(lines)
    # the selected trial's parameters: names and values as the study holds them
    (shown,) = [re.fullmatch(r"Trial (\d+) \(trial_id=\d+\)", line) for line in lines
                if re.fullmatch(r"Trial (\d+) \(trial_id=\d+\)", line)]
    trial = study.trials[int(shown.group(1))]
    for name in ("update_every", "steps", "solver", "weighting", "aux_lr"):
        assert f"{name} {trial.params[name]}" in lines
    # its intermediate values, one per epoch
    for epoch, value in trial.intermediate_values.items():
        assert f"{epoch} {value}" in lines
    # the learned weights, as a user attribute
    weights = [line for line in lines if line.startswith("weights {")]
    assert len(weights) == 1
    assert json.loads(weights[0][len("weights "):]) == pytest.approx(trial.user_attrs["weights"])
