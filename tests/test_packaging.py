"""Packaging: every package ships in a regular (non-editable) install, the licence exists, help is plain text."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from auxilearn_hpo.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for init in (ROOT / "auxilearn_hpo").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        found.add(".".join(rel.parts))
    for init in (ROOT / "integrations").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT / "integrations")
        found.add(".".join(("auxilearn_hpo", "integrations") + rel.parts))
    return found


def test_pyproject_lists_every_package_on_disk():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    # auxilearn_hpo.bench was missing once: `pip install .` then `bench hypergrad` failed.
    assert _packages_on_disk() <= listed, sorted(_packages_on_disk() - listed)
    assert {"auxilearn_hpo.bench", "auxilearn_hpo.tasks", "auxilearn_hpo.integrations"} <= listed
    assert config["tool"]["setuptools"]["package-dir"]["auxilearn_hpo.integrations"] == "integrations"


def test_license_file_matches_the_declared_licence():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


@pytest.mark.slow
def test_built_wheel_holds_every_module(tmp_path):
    pytest.importorskip("setuptools")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("auxilearn_hpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"auxilearn_hpo/{p.relative_to(ROOT / 'auxilearn_hpo').as_posix()}"
                for p in (ROOT / "auxilearn_hpo").rglob("*.py")}
    expected |= {f"auxilearn_hpo/integrations/{p.name}" for p in (ROOT / "integrations").glob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert any(n.endswith("licenses/LICENSE") for n in names)


@pytest.mark.parametrize("command", [["tune"], ["report"], ["bench", "hypergrad"], ["bench", "quality"],
                                     ["bench", "overhead"], ["bench", "search"], ["bench", "storage"]])
def test_help_is_plain_text(command, capsys):
    assert main(command + ["--help"]) == 0
    out = capsys.readouterr().out
    # Help shows no reStructuredText markup (it once printed the module docstring with ``backticks``).
    assert out.startswith("usage: auxilearn-hpo") and "``" not in out


def test_readme_first_command_installs_what_the_second_needs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in section.split("```bash\n")[1:]]
    first, second = (b.split("```")[0].strip() for b in blocks[:2])
    assert second == "python -m pytest -q"
    # pytest comes with the dev extra; the first command must install it.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = first.split('pip install -e ".[', 1)[1].split("]", 1)[0]
    assert any(d.startswith("pytest") for d in config["project"]["optional-dependencies"][extra])


def test_results_hyperstep_table_has_no_garbled_rows():
    lines = (ROOT / "docs" / "results.md").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| model | solver | K |"):
            width = line.count("|")
            j = i + 1
            while j < len(lines) and lines[j].startswith("|"):
                assert lines[j].count("|") == width and "time_ratio" not in lines[j], lines[j]
                j += 1
            break
    else:
        pytest.fail("hyperstep table not found")


def test_ci_also_tests_the_installed_wheel_from_outside_the_checkout():
    ci = (ROOT / ".ci" / "run").read_text()
    second = ci.split("python -m pytest -q", 1)[1]
    # After the tests: a wheel, a second fresh venv (torch first), a non-editable install, then the
    # commands and the README quick start from another folder.
    assert "pip wheel" in second and "python3 -m venv" in second and "pip install -q torch==2.13.0" in second
    assert 'pip install -q "$WHEEL[all]"' in second and "-e " not in second
    assert 'cd "$WORK/outside"' in second and "--help" in second and "```python" in second


def test_a_bench_that_returns_its_table_exits_0(capsys):
    # `bench overhead` returns a DataFrame; the command's exit status is 0 and the last line is its verdict
    assert main(["bench", "overhead", "--benchmarks", "toy", "--repeats", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("overhead: worst median ratio ") and last.endswith("(toy)")


def test_only_the_adapters_import_ray_or_optuna():
    """The core and the benchmarks reach Ray and Optuna through ``integrations/`` alone."""
    import ast

    offenders = []
    for path in (ROOT / "auxilearn_hpo").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("ray", "optuna")]
    assert offenders == []


def test_the_front_door_exports_the_learner_the_solvers_and_the_factories():
    from auxilearn_hpo import (CG, AuxiliaryLearner, Exact, LearnerConfig, MetaOptimizer, Neumann, Task,
                               hypergradient, make_task, make_weighting)
    from auxilearn_hpo.learner import AuxiliaryLearner as from_learner

    # the same objects as in their own modules, not copies
    assert AuxiliaryLearner is from_learner and LearnerConfig().solver == "neumann"
    assert {CG, Exact, Neumann, MetaOptimizer, Task} and callable(hypergradient) and callable(make_task)
    assert type(make_weighting("linear", 2)).__name__ == "LinearCombiner"


def test_importing_the_package_does_not_import_torch():
    # `auxilearn-hpo --help` must answer fast: the front door's names load on first use
    code = "import sys, auxilearn_hpo; print('torch' in sys.modules, 'AuxiliaryLearner' in dir(auxilearn_hpo))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("old, new", [
    ("weighting", "weightings"), ("combiners", "weightings"), ("baselines", "weightings"),
    ("registry", "weightings"), ("alignment", "weightings"), ("label_generation", "weightings"),
    ("functional", "hypergrad.functional"),
])
def test_the_old_module_paths_re_export_the_same_objects(old, new):
    # code written against the flat modules keeps working: the same names, the same objects
    import importlib

    module, home = (importlib.import_module(f"auxilearn_hpo.{m}") for m in (old, new))
    assert module.__all__
    assert all(getattr(module, name) is getattr(home, name) for name in module.__all__)
