"""The README's quick start runs as written and prints what the README says it prints."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_names_the_test_command_that_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    # CI runs exactly the test command the README prints.
    assert "python -m pytest -q" in README.read_text() and "python -m pytest -q" in ci


def test_quick_start_core_blocks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()
    namespace: dict = {}
    exec(blocks[0], namespace)
    # The MetaOptimizer block: 60 hypersteps and the harmful task's weight well below the others.
    assert namespace["meta"].steps_taken == 60
    w = namespace["weights"].detach()
    assert float(w[2]) < 0.5 * float(w[1])
    exec(blocks[1], namespace)
    printed = capsys.readouterr().out
    # The learner block prints the weights quoted in its comment.
    quoted = re.search(r"# (\{'main'.*\})", blocks[1]).group(1)
    assert quoted in printed
    exec(blocks[2], namespace)
    df = namespace["df"]
    assert len(df) == 4 and set(df["status"]) <= {"completed", "pruned"}
    printed = capsys.readouterr().out
    # Every selected column is printed: none hidden behind "...".
    assert "..." not in printed
    for column in ["trial_id", "status", "config/weighting", "config/solver", "best_metric", "weights/harmful"]:
        assert column in printed


@pytest.mark.ray
@pytest.mark.slow
def test_quick_start_ray_block(ray_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(python_blocks()[3], namespace)
    # Two trials of the registered trainable, both in the frame.
    assert len(namespace["df"]) == 2


def test_quick_start_prints_show_every_column():
    # pandas hides middle columns of a wide frame behind "..." unless the whole table is asked for.
    for block in python_blocks():
        for line in block.splitlines():
            if line.startswith("print(df["):
                assert line.rstrip().endswith(".to_string())"), line


def test_the_readme_is_a_short_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(((?:docs|examples)/[^)#]+)\)", text)
    assert {"docs/results.md", "docs/experiments.md", "docs/api.md", "docs/architecture.md", "docs/cli.md",
            "docs/cluster.md"} <= set(links)
    for link in links:
        assert (README.parent / link).is_file(), link
