"""The final-data protocol: the loader of train ∪ auxiliary set, learned weightings held fixed,
the refit of a trial, cross-fitting folds — each against a run or a value built by hand."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset, WeightedRandomSampler

from auxilearn_hpo.baselines import FixedWeights
from auxilearn_hpo.combiners import LinearCombiner, NonlinearCombiner
from auxilearn_hpo.integrations.trial import Trial
from auxilearn_hpo.learner import AuxiliaryLearner
from auxilearn_hpo.refit import (FrozenWeighting, choose_gain, chunk_loaders, final_loader, fixed_weighting, fold_tasks,
                                 mean_log_weights)
from auxilearn_hpo.tasks import make_task


def _loaders(sampler_kind):
    train = TensorDataset(torch.arange(30.0)[:, None])
    aux = TensorDataset(torch.arange(100.0, 110.0)[:, None])
    g = torch.Generator().manual_seed(5)
    if sampler_kind == "replacement":
        loader = DataLoader(train, batch_size=4, sampler=RandomSampler(train, replacement=True, num_samples=12,
                                                                        generator=g))
    elif sampler_kind == "shuffle":
        loader = DataLoader(train, batch_size=4, shuffle=True, generator=g, drop_last=True)
    else:
        loader = DataLoader(train, batch_size=4)
    return loader, DataLoader(aux, batch_size=5)


class _Task:
    def __init__(self, train, aux, final=None):
        self.train_loader, self.aux_loader, self.final_loader = train, aux, final


@pytest.mark.parametrize("kind", ["sequential", "shuffle", "replacement"])
def test_final_loader_covers_train_and_auxiliary_set_like_the_training_loader(kind):
    train, aux = _loaders(kind)
    before = train.sampler.generator.get_state() if kind != "sequential" else None
    loader = final_loader(_Task(train, aux))
    assert loader.batch_size == 4 and loader.drop_last == train.drop_last
    assert type(loader.sampler) is type(train.sampler)
    values = torch.cat([b[0] for b in loader]).flatten()
    if kind == "sequential":
        assert values.tolist() == [*range(30), *range(100, 110)]
    elif kind == "shuffle":  # without replacement: every example once per epoch (the last short batch dropped)
        assert len(values) == 40 and len(set(values.tolist())) == 40
    else:  # with replacement: num_samples grows with the data, 12 * 40 / 30
        assert loader.sampler.replacement and len(loader.sampler) == 16 and len(values) == 16
        assert set(values.tolist()) <= {*map(float, range(30)), *map(float, range(100, 110))}
    if before is not None:  # the learning run's generator is copied, never advanced
        assert torch.equal(train.sampler.generator.get_state(), before)
        again = torch.cat([b[0] for b in final_loader(_Task(train, aux))]).flatten()
        assert torch.equal(values, again)


def test_a_task_may_pass_its_own_final_loader_and_a_custom_sampler_asks_for_one():
    train, aux = _loaders("sequential")
    own = DataLoader(TensorDataset(torch.zeros(3, 1)))
    assert final_loader(_Task(train, aux, own)) is own
    weighted = DataLoader(train.dataset, batch_size=4, sampler=WeightedRandomSampler(torch.ones(30), 30))
    with pytest.raises(ValueError, match=r"WeightedRandomSampler.*Task\(final_loader=\.\.\.\)"):
        final_loader(_Task(weighted, aux))


def test_fixed_weighting_holds_the_learned_weights_on_the_raw_losses_without_the_ramp():
    torch.manual_seed(0)
    combiner = LinearCombiner(3, positive="exp", normalize="main", scale_losses=True, init_total=0.45, ramp=0.25)
    losses = torch.rand(8, 3) + 0.5
    combiner.calibrate(losses)
    with torch.no_grad():
        combiner.weight.add_(torch.tensor([0.0, 1.0, -2.0]))
    combiner.progress(0.05)  # mid-ramp: the refit holds the end-of-ramp weights
    fixed = fixed_weighting(combiner)
    assert isinstance(fixed, FixedWeights) and not fixed.learnable
    combiner.progress(1.0)
    assert torch.allclose(fixed(losses).double(), combiner(losses).double(), rtol=1e-6)
    assert fixed.task_weights().tolist() == pytest.approx(combiner.task_weights().tolist())


def test_frozen_weighting_computes_the_learned_combination_and_learns_nothing():
    torch.manual_seed(0)
    combiner = NonlinearCombiner(3)
    frozen = fixed_weighting(combiner)
    assert isinstance(frozen, FrozenWeighting) and not frozen.learnable
    assert not any(p.requires_grad for p in frozen.parameters())
    losses = torch.rand(5, 3)
    assert torch.equal(frozen(losses), combiner(losses))
    with torch.no_grad():  # a copy: later changes to the learned combiner do not reach it
        next(combiner.parameters()).add_(1.0)
    assert not torch.equal(frozen(losses), combiner(losses))


def _hand_run(task, weighting, loader):
    learner = AuxiliaryLearner(task.model, task.loss_fn, weighting, loader, None,
                               torch.optim.Adam(task.model.parameters(), lr=task.defaults.lr))
    for _ in learner.fit(task.defaults.epochs):
        pass
    return float(task.metric_fn(task.model, task.test_loader))


def test_a_fixed_weighting_trains_on_all_labelled_data_directly():
    trial = Trial("toy", {"weighting": "single_task", "seed": 3})
    report = list(trial.reports())[-1]
    task = make_task("toy", seed=3)  # the same run by hand: single-task on train ∪ auxiliary set
    weighting = FixedWeights(task.n_tasks, weights=[1.0] + [0.0] * (task.n_tasks - 1))
    assert len(trial.learner.train_loader.dataset) == 64
    assert report.test_metric == pytest.approx(_hand_run(task, weighting, final_loader(task)), rel=1e-6)
    assert math.isnan(report.learn_test_metric)
    split = list(Trial("toy", {"weighting": "single_task", "seed": 3, "final_data": "train"}).reports())[-1]
    assert split.test_metric != report.test_metric


def test_a_learned_weighting_refits_a_fresh_model_on_all_labelled_data_with_its_weights():
    trial = Trial("toy", {"weighting": "linear", "seed": 0, "epochs": 20, "folds": 1, "refit_gains": [1]})
    reports = list(trial.reports())
    learned = trial.learner.weighting.effective_weights()
    # the learning run's own test metric, and the refit's against one built by hand from the seed's model
    assert reports[-1].learn_test_metric == pytest.approx(trial.test_metric(trial.learner))
    task = make_task("toy", seed=0)
    task.defaults.epochs = 20
    by_hand = _hand_run(task, FixedWeights(task.n_tasks, task.main_task, task.task_names, weights=learned),
                        final_loader(task))
    assert reports[-1].test_metric == pytest.approx(by_hand, rel=1e-5)
    assert trial.final is not trial.learner and trial.final.meta is None
    assert all(math.isnan(r.test_metric) for r in reports[:-1])


def test_a_refit_trial_is_scored_by_its_final_model_in_the_study_and_the_tables():
    optuna = pytest.importorskip("optuna")
    from auxilearn_hpo.integrations import optuna as aux_optuna
    from auxilearn_hpo.records import selection_score
    from auxilearn_hpo.results import trials_frame

    config = {"weighting": "linear", "seed": 0, "epochs": 20, "folds": 1, "refit_gains": [1]}
    trial = Trial("toy", config)
    reports = list(trial.reports())
    learned = trial.learner.weighting.effective_weights()
    task = make_task("toy", seed=0)  # the refit by hand, its validation metric at the last three epochs
    weighting = FixedWeights(task.n_tasks, task.main_task, task.task_names, weights=learned)
    learner = AuxiliaryLearner(task.model, task.loss_fn, weighting, final_loader(task), None,
                               torch.optim.Adam(task.model.parameters(), lr=task.defaults.lr))
    last = [float(task.metric_fn(task.model, task.val_loader)) for r in learner.fit(20) if r.epoch > 17]
    assert reports[-1].refit_score == pytest.approx(sum(last) / 3, rel=1e-6)
    assert reports[-1].refit_score != selection_score([r.val_metric for r in reports])  # not the learning run's
    study = optuna.create_study(direction="minimize")
    study.optimize(aux_optuna.objective("toy", {}, fixed=config), n_trials=1)
    assert study.best_value == pytest.approx(reports[-1].refit_score, rel=1e-9)
    assert study.best_trial.intermediate_values[20] == pytest.approx(study.best_value, rel=1e-9)
    assert trials_frame(aux_optuna.records(study))["score"].iloc[0] == pytest.approx(study.best_value, rel=1e-9)


def test_bad_final_data_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"final_data must be one of \['all', 'train'\], got 'both'"):
        Trial("toy", {"final_data": "both"})


def test_cross_fitting_folds_hold_out_disjoint_labelled_examples_of_the_same_data():
    task = make_task("fewshot_digits", seed=4)
    folds = fold_tasks(task, 4, seed=4)
    assert folds[0] is task and len(folds) == 3  # 40 labelled training images: two more folds of 20
    held = []
    for fold in folds:
        data = torch.cat([b[0] for b in DataLoader(fold.aux_loader.dataset, batch_size=1000)])
        labels = torch.cat([b[1] for b in DataLoader(fold.aux_loader.dataset, batch_size=1000)])
        everything = torch.cat([b[0] for b in DataLoader(fold.train_loader.dataset, batch_size=1000)])
        assert len(data) == 20 and (labels >= 0).all()  # never an example without a main label
        assert len(everything) + len(data) == 600  # each fold trains on the rest of train ∪ auxiliary set
        held.append({tuple(r.tolist()) for r in data})
    assert all(not (held[i] & held[j]) for i in range(3) for j in range(i + 1, 3))


def test_mean_log_weights_is_the_geometric_mean_relative_to_the_main_task():
    out = mean_log_weights([{"main": 2.0, "a": 0.2, "b": 1.0}, {"main": 1.0, "a": 1.0, "b": 0.0}], "main")
    assert out == pytest.approx({"main": 1.0, "a": math.sqrt(0.1 * 1.0), "b": 0.0})


def _learned_weights(task, epochs):
    learner = AuxiliaryLearner.from_task(task, "linear")
    for _ in learner.fit(epochs):
        pass
    return learner.weighting.effective_weights()


def test_cross_fitting_averages_the_weights_of_one_learner_per_fold_in_log_space():
    trial = Trial("toy", {"weighting": "linear", "seed": 2, "epochs": 6, "folds": 3, "refit_gains": [1]})
    list(trial.reports())
    assert trial.folds_used == 3
    by_hand = []  # each fold's learner built by hand from the seed's task
    for k in range(3):
        task = make_task("toy", seed=2)
        fold = fold_tasks(task, 3, seed=2)[k]
        torch.manual_seed(2)
        by_hand.append(_learned_weights(fold, 6))
    expected = mean_log_weights(by_hand, "main")
    held = dict(zip(trial.task.task_names, trial.final.weighting.task_weights().tolist()))
    assert held == pytest.approx(expected, rel=1e-4)


def test_the_refit_keeps_the_gain_with_the_best_validation_metric():
    trial = Trial("toy", {"weighting": "linear", "seed": 1, "epochs": 8, "folds": 1, "refit_gains": [1, 30]})
    report = list(trial.reports())[-1]
    task = make_task("toy", seed=1)
    task.defaults.epochs = 8
    torch.manual_seed(1)
    learned = _learned_weights(task, 8)
    scores = {}
    for gain in (1, 30):  # both refits by hand: validation decides, test only reports
        fresh = make_task("toy", seed=1)
        fresh.defaults.epochs = 8
        weights = {k: (w if k == "main" else w * gain) for k, w in learned.items()}
        test = _hand_run(fresh, FixedWeights(3, 0, fresh.task_names, weights=weights), final_loader(fresh))
        scores[gain] = (fresh.metric_fn(fresh.model, fresh.val_loader), test)
    best = min(scores, key=lambda g: scores[g][0])  # mse: lower is better
    assert report.refit_gain == best and report.test_metric == pytest.approx(scores[best][1], rel=1e-5)


def test_choose_gain_keeps_a_gain_only_when_it_beats_gain_zero_by_more_than_the_margin():
    zero = [0.0, 0.0, 0.0, 0.0]
    # differences to gain 0: mean 0.2, sample std 0.1155, standard error 0.0577 (3.46 s.e.)
    scores = {0.0: zero, 1.0: [0.1, 0.1, 0.3, 0.3], 3.0: [0.0, 0.1, 0.0, 0.1]}
    assert choose_gain(scores, 0.0) == 1.0 and choose_gain(scores, 3.4) == 1.0
    assert choose_gain(scores, 3.5) == 0.0
    assert choose_gain({1.0: [0.1, 0.3], 3.0: [0.2, 0.2]}, 5.0) == 1.0  # no gain 0: the first best mean
    assert choose_gain({0.0: [0.5], 1.0: [0.6]}, 1.0) == 1.0  # one score each: no standard error, no margin
    assert choose_gain({0.0: zero, 1.0: [math.nan] * 4, 3.0: [-1.0] * 4}, 1.0) == 0.0  # non-finite never wins
    assert choose_gain({0.0: [0.2, 0.2], 1.0: [0.2, 0.2]}, 0.0) == 0.0  # ties: the first


def test_chunk_loaders_split_the_validation_data_into_disjoint_parts_of_the_same_kind():
    data = TensorDataset(torch.arange(23.0), torch.arange(23))
    parts = chunk_loaders(DataLoader(data, batch_size=4), 5, seed=3)
    assert len(parts) == 5 and all(isinstance(p.dataset, TensorDataset) for p in parts)
    seen = sorted(int(v) for p in parts for v in p.dataset.tensors[1])
    assert seen == list(range(23)) and sorted(len(p.dataset) for p in parts) == [4, 4, 5, 5, 5]
    again = chunk_loaders(DataLoader(data, batch_size=4), 5, seed=3)
    assert [p.dataset.tensors[1].tolist() for p in parts] == [p.dataset.tensors[1].tolist() for p in again]
    assert chunk_loaders(DataLoader(data), 12) is None  # fewer than two examples per part


def test_the_refit_margin_keeps_single_task_unless_validation_shows_the_auxiliaries_help():
    # toy, seed 1, gains 0 and 1: the two refits' per-part validation scores decide, margin or not
    runs = {m: Trial("toy", {"weighting": "linear", "seed": 1, "epochs": 8, "folds": 1, "refit_gains": [0, 1],
                             "refit_margin": m}) for m in (0.0, 1e6)}
    reports = {m: list(t.reports())[-1] for m, t in runs.items()}
    task = make_task("toy", seed=1)
    parts = chunk_loaders(task.val_loader, 10, seed=1)
    scores = {}
    for gain in (0.0, 1.0):
        trial = Trial("toy", {"weighting": "linear", "seed": 1, "epochs": 8, "folds": 1, "refit_gains": [gain]})
        list(trial.reports())
        scores[gain] = [-trial.task.metric_fn(trial.final.model, p) for p in parts]
    assert reports[0.0].refit_gain == choose_gain(scores, 0.0)
    assert reports[1e6].refit_gain == 0.0  # no advantage is that many standard errors
    assert runs[0.0].refit_scores == pytest.approx({g: sum(v) / 10 for g, v in scores.items()}, rel=1e-6)


def test_a_metric_that_cannot_take_a_part_of_the_validation_data_chooses_on_the_whole_set():
    task = make_task("toy", seed=2)
    own = {id(task.val_loader), id(task.test_loader), id(task.aux_loader)}
    metric = task.metric_fn
    task.metric_fn = lambda model, loader: metric(model, loader) if id(loader) in own else 1 / 0

    trial = Trial(lambda _: task, {"weighting": "linear", "seed": 2, "epochs": 4, "folds": 1, "refit_gains": [0, 1]})
    list(trial.reports())
    assert set(trial.refit_scores) == {0.0, 1.0} and trial.refit_gain == max(trial.refit_scores,
                                                                            key=trial.refit_scores.get)


@pytest.mark.parametrize("setting, value, match", [
    ("folds", 0, "folds must be an int >= 1, got 0"),
    ("refit_margin", -1, "refit_margin must be a finite number >= 0, got -1"),
    ("refit_gains", [], "refit_gains must be a non-empty list of finite numbers >= 0"),
    ("refit_gains", [1, -2], "refit_gains must be a non-empty list of finite numbers >= 0"),
])
def test_bad_refit_settings_are_one_line_errors(setting, value, match):
    with pytest.raises(ValueError, match=match):
        Trial("toy", {setting: value})


def test_gain_zero_is_single_task_on_all_labelled_data():
    learned = list(Trial("toy", {"weighting": "linear", "seed": 5, "folds": 1, "refit_gains": [0]}).reports())[-1]
    single = list(Trial("toy", {"weighting": "single_task", "seed": 5}).reports())[-1]
    assert learned.refit_gain == 0 and learned.test_metric == single.test_metric
