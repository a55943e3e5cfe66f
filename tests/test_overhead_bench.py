"""The overhead benchmark times the code users run and reports the ratio it prints."""
import pytest

from auxilearn_hpo.bench import overhead


def test_ratio_is_learned_over_equal_per_repeat(monkeypatch, capsys):
    fake = {("toy", "equal"): 2.0, ("toy", "linear"): 3.0, ("digits", "equal"): 1.0, ("digits", "linear"): 4.0}
    monkeypatch.setattr(overhead, "train_seconds", lambda b, m, seed=0, config=None: (fake[(b, m)] * (1 + seed), 7))
    table = overhead.main(["--benchmarks", "toy", "digits", "--repeats", "3"])
    assert table.set_index("benchmark").loc["toy", "ratio_median"] == pytest.approx(1.5)
    assert table.set_index("benchmark").loc["digits", "equal_s"] == pytest.approx(2.0)  # median of 1, 2, 3
    assert capsys.readouterr().out.rstrip().endswith("overhead: worst median ratio 4.00 (digits)")


def test_train_seconds_counts_the_hypersteps_of_the_real_loop():
    seconds, hypersteps = overhead.train_seconds("toy", "linear")
    # toy: 48 training samples in batches of 16 for 60 epochs, a hyperstep every 16 steps
    assert seconds > 0 and hypersteps == 60 * 3 // 16
    assert overhead.train_seconds("toy", "equal")[1] == 0


def test_bad_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        overhead.main(["--weighting", "magic"])
    assert "--weighting must be one of" in capsys.readouterr().err


def test_set_passes_learner_settings_to_the_timed_learner(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(overhead, "train_seconds", lambda b, m, seed=0, config=None: (seen.append(config), (1.0, 0))[1])
    overhead.main(["--benchmarks", "toy", "--repeats", "1", "--set", "update_every=3", "--set", "aux_lr=0.05",
                   "--set", "solver=cg"])
    assert seen == [None, {"update_every": 3, "aux_lr": 0.05, "solver": "cg"}]  # equal, then the learned one
    assert "linear at update_every=3, aux_lr=0.05, solver='cg' vs equal" in capsys.readouterr().out


def test_set_counts_hypersteps_at_the_given_interval():
    assert overhead.train_seconds("toy", "linear", config={"update_every": 3})[1] == 60 * 3 // 3


@pytest.mark.parametrize("item, match", [("update_every", "KEY=VALUE"), ("bogus=1", "bogus"),
                                         ("update_every=0", "update_every")])
def test_bad_set_is_a_usage_error(item, match, capsys):
    with pytest.raises(SystemExit):
        overhead.main(["--benchmarks", "toy", "--set", item])
    assert match in capsys.readouterr().err


def test_compare_times_a_second_setting_in_the_same_repeats(monkeypatch, capsys):
    calls = []

    def fake(b, m, seed=0, config=None):
        calls.append((m, seed, config))
        seconds = {"equal": 2.0, "linear": 3.0}[m] if not config else 2.5
        return seconds * (1 + seed), 9 if config else 7

    monkeypatch.setattr(overhead, "train_seconds", fake)
    table = overhead.main(["--benchmarks", "toy", "--repeats", "2", "--compare", "steps=0", "--compare", "fused=true"])
    # each repeat: equal, the default, the compared setting, interleaved
    cheap = {"steps": 0, "fused": True}
    assert calls == [("equal", 0, None), ("linear", 0, None), ("linear", 0, cheap),
                     ("equal", 1, None), ("linear", 1, None), ("linear", 1, cheap)]
    row = table.set_index("benchmark").loc["toy"]
    assert row["ratio_median"] == pytest.approx(1.5) and row["compare_ratio_median"] == pytest.approx(1.25)
    assert row["compare_hypersteps"] == 9 and row["hypersteps"] == 7
    out = capsys.readouterr().out.rstrip().splitlines()
    # the acceptance line stays last and belongs to the --set (here default) run
    assert out[-2] == "with steps=0, fused=True: worst median ratio 1.25 (toy)"
    assert out[-1] == "overhead: worst median ratio 1.50 (toy)"


def test_compare_goes_over_set_and_is_checked_with_it(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(overhead, "train_seconds", lambda b, m, seed=0, config=None: (seen.append(config), (1.0, 0))[1])
    overhead.main(["--benchmarks", "toy", "--repeats", "1", "--set", "update_every=3", "--compare", "steps=0"])
    assert seen == [None, {"update_every": 3}, {"update_every": 3, "steps": 0}]
    with pytest.raises(SystemExit):
        overhead.main(["--benchmarks", "toy", "--set", "train_batches=2", "--compare", "fused=true"])
    assert "--compare over --set: fused=True" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        overhead.main(["--benchmarks", "toy", "--compare", "steps"])
    assert "--compare must be KEY=VALUE" in capsys.readouterr().err


def test_floor_ratio_adds_the_irreducible_parts_per_training_step():
    # 1 + (0.5 + 0.25 + 0.25) / (8 * 0.5)
    assert overhead.floor_ratio(0.5, 0.5, 0.25, 0.25, 8) == pytest.approx(1.25)


def test_floor_times_the_learners_own_parts(monkeypatch, capsys):
    timed = []

    def fake_ms(fn, calls, blocks=5):
        fn()  # the part really runs on the learner
        timed.append(fn.__name__)
        return {"aux_grad": 0.4, "mixed": 0.2, "update": 0.2}[fn.__name__]

    monkeypatch.setattr(overhead, "_ms", fake_ms)
    # toy: 60 epochs of 3 steps, so 0.18 s of equal-weights training is 1 ms a step
    monkeypatch.setattr(overhead, "train_seconds", lambda b, m, seed=0, config=None: (0.18, 0))
    table = overhead.main(["--benchmarks", "toy", "--repeats", "1", "--floor", "--set", "update_every=4"])
    assert timed == ["aux_grad", "mixed", "update"]
    out = capsys.readouterr().out
    assert "floor: worst lower bound 1.20 (toy)" in out  # 1 + 0.8 / (4 * 1.0)
    assert out.rstrip().splitlines()[-1] == "overhead: worst median ratio 1.00 (toy)"
    assert list(table.columns)[:2] == ["benchmark", "equal_s"]


def test_floor_needs_a_weighting_with_hypersteps(capsys):
    with pytest.raises(SystemExit):
        overhead.main(["--benchmarks", "toy", "--floor", "--weighting", "equal"])
    assert "weighting 'equal' learns no weights by hypergradients" in capsys.readouterr().err


def test_the_compute_bound_row_is_a_million_parameter_model_at_batch_128():
    task = overhead.compute_bound_task(seed=0)
    assert sum(p.numel() for p in task.model.parameters()) >= 1_000_000
    assert task.train_loader.batch_size == 128 and len(task.train_loader.dataset) == 1400
    assert task.name == overhead.COMPUTE_BOUND and task.defaults.epochs == 16
    # the same data as digits' task with 150 shots per class: only the model is wider
    losses = task.loss_fn(task.model, next(iter(task.train_loader)))
    assert losses.shape == (128, task.n_tasks)
