"""The final model on all labelled training data: the loader of train ∪ auxiliary set, and a
learned weighting held fixed for a refit.

A learned weighting needs the auxiliary set as the hypergradient's target, so it learns on the
split; a user's final model should still see every labelled example. The fair protocol
(``final_data="all"``, :class:`~auxilearn_hpo.integrations.trial.Trial`) therefore trains every
fixed weighting on :func:`final_loader` directly, and refits a learned weighting: a fresh model,
trained from scratch on :func:`final_loader` with :func:`fixed_weighting` of what was learned.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import (ConcatDataset, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler,
                              Subset, TensorDataset)

from .weightings import (FixedWeights, FrozenGeneratedLabels, GeneratedLabels, GradientAlignment, LinearCombiner,
                         Weighting)

__all__ = ["final_loader", "fixed_weighting", "FrozenWeighting", "fold_tasks", "mean_log_weights", "chunk_loaders",
           "choose_gain"]


def _derived(train: DataLoader, data: Dataset, n_train: int) -> DataLoader:
    """A loader over ``data`` like ``train`` (batch size, ``drop_last``, ``collate_fn``, kind of
    sampler; an explicit ``num_samples`` scaled by ``len(data) / n_train``; a seeded generator copied)."""
    sampler = train.sampler
    hint = "pass Task(final_loader=...) with a loader over all labelled training data"
    if isinstance(sampler, RandomSampler):
        generator = None
        if sampler.generator is not None:  # a copy: the learning run's own stream is left as it is
            generator = torch.Generator().manual_seed(sampler.generator.initial_seed())
        explicit = getattr(sampler, "_num_samples", None)
        num = None if explicit is None else max(1, round(explicit * len(data) / n_train))
        new_sampler: Any = RandomSampler(data, replacement=sampler.replacement, num_samples=num, generator=generator)
    elif isinstance(sampler, SequentialSampler):
        new_sampler = SequentialSampler(data)
    else:
        raise ValueError(f"train_loader has a {type(sampler).__name__}: a loader over other data cannot be derived "
                         f"from it; {hint}")
    if train.batch_size is None:
        raise ValueError(f"train_loader has a batch_sampler: a loader over other data cannot be derived from it; {hint}")
    return DataLoader(data, batch_size=train.batch_size, sampler=new_sampler, drop_last=train.drop_last,
                      collate_fn=train.collate_fn, num_workers=train.num_workers, pin_memory=train.pin_memory)


def final_loader(task: Any) -> DataLoader:
    """The loader of all labelled training data, ``train ∪ auxiliary set``.

    ``task.final_loader`` when the task passes its own; otherwise derived from
    ``task.train_loader`` and ``task.aux_loader``: their datasets concatenated (training
    examples first), the training loader's batch size, ``drop_last``, ``collate_fn`` and kind of
    sampler (sequential, or random with or without replacement; an explicit ``num_samples``
    grows in proportion to the data, so an epoch draws each example as often as before; a
    seeded generator is copied, never advanced).

    Raises:
        ValueError: a loader this cannot derive from (an iterable dataset, a custom sampler or
            batch sampler): pass ``Task(final_loader=...)``.
    """
    own = getattr(task, "final_loader", None)
    if own is not None:
        return own
    train, aux = task.train_loader, task.aux_loader
    if aux is None:
        return train
    for name, loader in (("train_loader", train), ("aux_loader", aux)):
        if isinstance(loader.dataset, IterableDataset):
            raise ValueError(f"{name} has an IterableDataset: train ∪ auxiliary set cannot be derived from it; "
                             "pass Task(final_loader=...) with a loader over all labelled training data")
    return _derived(train, ConcatDataset([train.dataset, aux.dataset]), len(train.dataset))


def fold_tasks(task: Any, folds: int, seed: int) -> list[Any]:
    """Cross-fitting: ``folds`` tasks over the same labelled data, train ∪ auxiliary set, each
    holding out a different fold as its auxiliary set. The first is ``task`` itself (its own
    auxiliary set); each other fold has the auxiliary set's size, drawn (with ``seed``) from the
    training examples that carry a main label, the rest of train ∪ auxiliary set its training data.
    An example carries no main label when its main loss under ``task.model`` is exactly 0 (a
    masked loss, as on ``fewshot_digits``' unlabelled pool); such examples never serve in an
    auxiliary set. Fewer tasks when too few labelled training examples exist.

    Needs map-style datasets and a training loader :func:`final_loader` can derive from.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be an int >= 1, got {folds!r}")
    if folds == 1 or task.aux_loader is None:
        return [task]
    train, aux = task.train_loader, task.aux_loader
    n_train, n_aux = len(train.dataset), len(aux.dataset)
    union = ConcatDataset([train.dataset, aux.dataset])
    was_training = task.model.training
    task.model.eval()
    labelled: list[int] = []
    with torch.no_grad():  # which training examples have a main label
        for start, batch in zip(range(0, n_train, 256), DataLoader(train.dataset, batch_size=256,
                                                                    collate_fn=train.collate_fn)):
            main = task.loss_fn(task.model, batch)[:, task.main_task]
            main = main.flatten(1).sum(1) if main.dim() > 1 else main
            labelled += [start + i for i in torch.nonzero(main != 0).flatten().tolist()]
    task.model.train(was_training)
    order = torch.randperm(len(labelled), generator=torch.Generator().manual_seed(int(seed))).tolist()
    shuffled = [labelled[i] for i in order]
    out = [task]
    for k in range(folds - 1):
        held = shuffled[k * n_aux:(k + 1) * n_aux]
        if len(held) < n_aux:
            break
        rest = sorted(set(range(n_train + n_aux)) - set(held))
        fold_train = _derived(train, Subset(union, rest), n_train)
        fold_aux = DataLoader(Subset(union, held), batch_size=aux.batch_size or n_aux, shuffle=False,
                              collate_fn=aux.collate_fn)
        out.append(dataclasses.replace(task, train_loader=fold_train, aux_loader=fold_aux))
    return out


def mean_log_weights(weights: Sequence[dict[str, float]], main: str) -> dict[str, float]:
    """Per task, the geometric mean over folds of each fold's weight relative to its main task's
    (``{task: weight}`` dicts; the main weight 1): averaging in log space, so a fold that asks for
    ten times more counts as much as one that asks for ten times less. A weight of 0 stays 0."""
    out = {}
    for name in weights[0]:
        ratios = [max(w[name], 0.0) / max(w[main], 1e-300) for w in weights]
        out[name] = 0.0 if min(ratios) == 0 else math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    out[main] = 1.0
    return out


def chunk_loaders(loader: DataLoader, chunks: int, seed: int = 0) -> list[DataLoader] | None:
    """``loader``'s examples split at random (with ``seed``) into ``chunks`` disjoint parts of
    near-equal size, one loader each (``loader``'s batch size and ``collate_fn``, in order; a
    ``TensorDataset`` stays one, anything else becomes a ``Subset``): a metric on each part gives
    paired per-part scores. ``None`` for an iterable dataset or fewer than ``2 * chunks`` examples."""
    data = loader.dataset
    if isinstance(data, IterableDataset) or not hasattr(data, "__len__") or len(data) < 2 * chunks:
        return None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))

    def part(k: int) -> Dataset:
        index = order[k::chunks].sort().values
        if isinstance(data, TensorDataset):  # the same kind of dataset, for a metric that reads .tensors
            return TensorDataset(*(t[index] for t in data.tensors))
        return Subset(data, index.tolist())

    return [DataLoader(part(k), batch_size=loader.batch_size or 256, shuffle=False, collate_fn=loader.collate_fn)
            for k in range(chunks)]


def choose_gain(scores: dict[float, Sequence[float]], margin: float) -> float:
    """The refit gain to keep, from each gain's per-part validation scores (higher is better,
    the same parts for every gain): the best mean, unless ``0.0`` is a candidate and the best's
    paired advantage over gain 0 is at most ``margin`` standard errors (then gain 0, single-task:
    a small validation set must show the auxiliaries' benefit before it is taken). Non-finite
    scores never win; ties go to the first gain. With one score per gain no margin applies."""
    def mean(v: Sequence[float]) -> float:
        m = sum(v) / len(v)
        return m if math.isfinite(m) else -math.inf

    best = max(scores, key=lambda g: mean(scores[g]))
    if best == 0.0 or 0.0 not in scores or margin <= 0 or not math.isfinite(mean(scores[best])):
        return best
    diffs = [a - b for a, b in zip(scores[best], scores[0.0])]
    if not math.isfinite(mean(scores[0.0])):
        return best
    n = len(diffs)
    if n < 2:  # one score each: no standard error to weigh the advantage by
        return best
    m = sum(diffs) / n
    se = math.sqrt(sum((d - m) ** 2 for d in diffs) / (n - 1) / n)
    return best if m > margin * se else 0.0


class FrozenWeighting(Weighting):
    """A learned weighting held fixed: a copy whose parameters no longer learn, at the end of
    any ramp (``progress(1)``). ``learnable = False``: a learner takes no hyperstep with it.

    Shape: as the wrapped weighting's, ``(B, T)`` (or ``(B, T, H, W)``) -> ``()``.
    """

    learnable = False

    def __init__(self, weighting: Weighting) -> None:
        super().__init__(weighting.n_tasks, weighting.main_task, weighting.task_names)
        inner = copy.deepcopy(weighting)
        for p in inner.parameters():
            p.requires_grad_(False)
        inner.progress(1.0)
        self.inner = inner
        self.pixelwise = weighting.pixelwise

    def forward(self, losses: Tensor) -> Tensor:
        return self.inner(losses)

    def task_weights(self, losses: Tensor | None = None) -> Tensor:
        return self.inner.task_weights(losses)

    def progress(self, fraction: float) -> None:
        """Held at the end of the learning run's ramp, whatever the refit's progress."""


def fixed_weighting(weighting: Weighting, generator: torch.nn.Module | None = None) -> Weighting:
    """What a refit trains with: ``weighting``'s learned state held fixed.

    Per-task weights (:class:`~auxilearn_hpo.combiners.LinearCombiner`, gradient alignment)
    become :class:`~auxilearn_hpo.baselines.FixedWeights` of their weights on the raw losses at
    the end of learning (no ramp); a label generator's weighting becomes
    :class:`~auxilearn_hpo.label_generation.FrozenGeneratedLabels` over ``generator`` (the
    refit's task's generator, loaded with the learned one's state); any other learned weighting
    a :class:`FrozenWeighting` copy. A weighting that learns nothing is returned as it is.
    """
    if not weighting.learnable:
        return weighting
    names: Sequence[str] = weighting.task_names
    if isinstance(weighting, (LinearCombiner, GradientAlignment)):
        weights = weighting.task_weights().detach().double().cpu().tolist()
        return FixedWeights(weighting.n_tasks, weighting.main_task, names, weights=weights)
    if isinstance(weighting, GeneratedLabels):
        if generator is None:
            raise ValueError("generator is required to hold a label generator's weighting fixed: the refit's "
                             "task's label_generator")
        generator.load_state_dict(weighting.generator.state_dict())
        return FrozenGeneratedLabels(weighting.n_tasks, weighting.main_task, names, generator=generator,
                                     aux_weight=weighting.aux_weight, generated_task=weighting.generated_task)
    return FrozenWeighting(weighting)
