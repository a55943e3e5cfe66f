"""The few-shot image example: a user's own task factory with plain loaders, driven through Trial."""
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fewshot_images  # noqa: E402

from auxilearn_hpo.integrations.trial import Trial  # noqa: E402
from auxilearn_hpo.refit import final_loader  # noqa: E402


def test_the_task_holds_ten_labelled_images_per_class_two_of_them_the_auxiliary_set():
    task = fewshot_images.make_task({"seed": 7})
    x, y, shapes, loops, random = task.train_loader.dataset.tensors
    aux_y = task.aux_loader.dataset.tensors[1]
    assert x.shape == (80, 784) and torch.bincount(y).tolist() == [8] * 10
    assert torch.bincount(aux_y).tolist() == [2] * 10 and len(task.val_loader.dataset) == 200
    assert loops.tolist() == fewshot_images.LOOPS[y].tolist() and random.shape == (80, 3)
    assert task.loss_fn(task.model, next(iter(task.train_loader))).shape == (16, 11)
    assert len(final_loader(task).dataset) == 100


def test_the_default_refits_on_all_hundred_images_after_four_learners():
    trial = Trial(fewshot_images.make_task, {"weighting": "linear", "seed": 7, "epochs": 2})
    report = list(trial.reports())[-1]
    assert trial.folds_used == 4 and len(trial.final.train_loader.dataset) == 100
    assert report.refit_gain in (0.0, 1.0, 3.0, 10.0) and 0 < report.test_metric <= 1
