"""The overhead benchmark times the code users run and reports the ratio it prints."""
import pytest

from auxilearn_hpo.bench import overhead


def test_ratio_is_learned_over_equal_per_repeat(monkeypatch, capsys):
    fake = {("toy", "equal"): 2.0, ("toy", "linear"): 3.0, ("digits", "equal"): 1.0, ("digits", "linear"): 4.0}
    monkeypatch.setattr(overhead, "train_seconds", lambda b, m, seed=0: (fake[(b, m)] * (1 + seed), 7))
    table = overhead.main(["--benchmarks", "toy", "digits", "--repeats", "3"])
    assert table.set_index("benchmark").loc["toy", "ratio_median"] == pytest.approx(1.5)
    assert table.set_index("benchmark").loc["digits", "equal_s"] == pytest.approx(2.0)  # median of 1, 2, 3
    assert capsys.readouterr().out.rstrip().endswith("overhead: worst median ratio 4.00 (digits)")


def test_train_seconds_counts_the_hypersteps_of_the_real_loop():
    seconds, hypersteps = overhead.train_seconds("toy", "linear")
    # toy: 48 training samples in batches of 16 for 60 epochs, a hyperstep every 3 steps
    assert seconds > 0 and hypersteps == 60 * 3 // 8
    assert overhead.train_seconds("toy", "equal")[1] == 0


def test_bad_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        overhead.main(["--weighting", "magic"])
    assert "--weighting must be one of" in capsys.readouterr().err
