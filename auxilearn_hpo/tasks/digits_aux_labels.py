"""``digits_aux_labels``: few-shot digit classification with learned auxiliary labels.

Needs scikit-learn (``pip install auxilearn-hpo[digits]``); ``load_digits`` (1797 8x8 images, ten
classes) ships inside its wheel, so nothing is downloaded. Pixels are scaled to ``[0, 1]``.

The protocol is AuxiLearn's learned-label experiment (section 5.3: CIFAR-10 with 5% of the labels,
no auxiliary task given) in miniature: only a few labelled images per class, no unlabelled pool,
and an auxiliary task that has to be invented. A generator network gives every labelled image a
soft label over ``psi`` sub-classes of its true class (masked softmax); the model predicts it
with an auxiliary head; the generator is trained on the main-task loss of a held-out auxiliary
set, which is carved out of the same few labelled images.

Split (defaults), drawn from the ``"data"`` stream of the seed: for each class, ``shots=8``
images are drawn at random (80 labelled images, 4.5% of ``load_digits``); ``aux_shots=2`` of
each class's draw are split off with :func:`~auxilearn_hpo.data.split_auxiliary` (``"split"``
stream) as the **auxiliary set** (20 images; only its main loss is used, for the
hypergradient), the other 6 per class are the training set (60 images). The remaining 1717
images are shuffled and cut into a validation set (``n_val=300``, for model selection and
tuning) and a test set (1417, for final scores only). No image is in two parts;
``info["indices"]`` holds the row numbers in ``load_digits()`` of each part.

Tasks (loss column: what):

* 0 ``main``: 10-way classification, per-sample cross entropy. Metric: accuracy (``mode="max"``).
* 1 ``generated``: soft-label cross entropy (:func:`~auxilearn_hpo.combiners.soft_label_loss`)
  of the auxiliary head's ``10 * psi`` logits against ``label_generator(x, y)``, an
  :class:`~auxilearn_hpo.combiners.AuxiliaryLabelGenerator` on the pixels with
  ``generator_depth`` hidden layers of ``generator_width`` units (``Task.label_generator``).
* 2-3 **hand-designed** class attributes (binary cross entropy on one logit each):
  ``closed_loop`` (0, 6, 8, 9) and ``ge5`` (5-9), the coarse labels a person would design
  (as in :mod:`~auxilearn_hpo.tasks.fewshot_digits`). They are functions of the class,
  so on labelled images they add a class hierarchy, not information.

Weightings that make sense here: ``single_task`` (main only), ``generator_frozen``,
``generator_maxl``, ``generator_ift`` (:mod:`auxilearn_hpo.label_generation`: main plus
``aux_weight`` times the generated-label loss; the attribute columns get weight 0) and ``fixed``
with ``info["hand_weights"]`` (main plus the two attributes, weight 1 each; the generated
column 0). ``info["oracle_weights"]`` holds the same hand-designed weights: no better weighting
is known by construction here.

Model: trunk ``Linear(64, 64) - ReLU`` (``Task.shared_params``), a classification head
``Linear(64, 10)``, an attribute head ``Linear(64, 2)`` and the auxiliary head
``Linear(64, 10 * psi)``, built in that order under the seed's ``"model"`` stream, then the
generator (so ``psi`` changes neither the trunk's nor the classifier's initialisation).
Shapes: a batch is ``(x, label, attributes)`` with ``x`` ``(B, 64)`` float32, ``label``
``(B,)`` int64 and ``attributes`` ``(B, 2)`` float32; ``loss_fn`` returns ``(B, 4)``.
Defaults: 60 epochs of Adam at ``lr=3e-3``, batch 20 (3 steps per epoch, 180 steps).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ..combiners import AuxiliaryLabelGenerator, soft_label_loss
from ..data import split_auxiliary
from ..label_generation import GENERATED
from ..task import Task
from ._common import check_int, classification_task, derive_seed, generator, main_accuracy, make_loaders, seeded
from .digits import load_images
from .fewshot_digits import ATTRIBUTES, attribute_table

__all__ = ["make", "AuxLabelNet", "metric_fn"]

N_CLASSES = 10
HIDDEN = 64


class AuxLabelNet(nn.Module):
    """Trunk, a 10-way main head, one logit per attribute, a ``10 * psi``-way auxiliary head.

    ``forward`` -> ``(main_logits (B, 10), attr_logits (B, A), aux_logits (B, 10 * psi))``.
    """

    def __init__(self, n_attr: int, psi: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU())
        self.classifier = nn.Linear(HIDDEN, N_CLASSES)
        self.attributes = nn.Linear(HIDDEN, n_attr)
        self.aux = nn.Linear(HIDDEN, N_CLASSES * psi)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.classifier(z), self.attributes(z), self.aux(z)


metric_fn = main_accuracy



def make(
    seed: int = 0, *, shots: int = 8, aux_shots: int = 2, psi: int = 5, generator_width: int = 64,
    generator_depth: int = 1, n_val: int = 300, batch_size: int = 20,
) -> Task:
    """Build the task (see the module docstring): per class ``shots`` labelled images, of which
    ``aux_shots`` form the auxiliary set; ``psi`` sub-classes per class; a generator MLP of
    ``generator_depth`` hidden layers (``0``: linear) of ``generator_width`` units."""
    check_int("shots", shots, 2)
    if isinstance(aux_shots, bool) or not isinstance(aux_shots, int) or not 1 <= aux_shots < shots:
        raise ValueError(f"aux_shots must be an int in [1, shots={shots}), got {aux_shots!r}")
    check_int("psi", psi, 1)
    check_int("generator_width", generator_width, 1)
    check_int("generator_depth", generator_depth, 0)
    x, y = load_images()
    n = len(y)
    g = generator(seed, "data")
    train_idx: list[int] = []
    aux_idx: list[int] = []
    for c in range(N_CLASSES):
        members = torch.nonzero(y == c).flatten()
        if shots >= len(members):
            raise ValueError(f"shots must be < {len(members)} (images of digit {c}), got {shots!r}")
        shot = members[torch.randperm(len(members), generator=g)[:shots]].sort().values
        _, aux_part = split_auxiliary(TensorDataset(shot), aux_shots, seed=(derive_seed(seed, "split") + c) % 2**63)
        aux_c = set(shot[torch.as_tensor(aux_part.indices, dtype=torch.long)].tolist())
        aux_idx += sorted(aux_c)
        train_idx += [i for i in shot.tolist() if i not in aux_c]
    train_idx, aux_idx = sorted(train_idx), sorted(aux_idx)
    taken = set(train_idx) | set(aux_idx)
    rest = torch.as_tensor([i for i in range(n) if i not in taken], dtype=torch.long)
    rest = rest[torch.randperm(len(rest), generator=g)]
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 1 <= n_val < len(rest):
        raise ValueError(f"n_val must be an int in [1, {len(rest)}), got {n_val!r}")
    val_idx, test_idx = sorted(rest[:n_val].tolist()), sorted(rest[n_val:].tolist())
    attrs = attribute_table()[y]

    def part(idx: Sequence[int]) -> tuple[torch.Tensor, ...]:
        i = torch.as_tensor(idx, dtype=torch.long)
        return x[i], y[i], attrs[i]

    loaders = make_loaders(part(train_idx), part(aux_idx), part(val_idx), part(test_idx),
                           batch_size=batch_size, seed=seed)
    with seeded(seed):  # the model first, then the generator, from one seeded stream
        model = AuxLabelNet(len(ATTRIBUTES), psi)
        label_generator = AuxiliaryLabelGenerator(64, N_CLASSES, psi, hidden=(generator_width,) * generator_depth)

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        """``(B, 4)``: main cross entropy, generated-label cross entropy, attribute BCEs."""
        xb, label, attr = batch
        main_logits, attr_logits, aux_logits = model(xb)
        main = F.cross_entropy(main_logits, label, reduction="none")
        generated = soft_label_loss(aux_logits, label_generator(xb, label))
        attr_loss = F.binary_cross_entropy_with_logits(attr_logits, attr, reduction="none")
        return torch.cat([main[:, None], generated[:, None], attr_loss], dim=1)

    names = ["main", GENERATED, *ATTRIBUTES]
    hand = {"main": 1.0, GENERATED: 0.0, **{a: 1.0 for a in ATTRIBUTES}}
    return classification_task(
        "digits_aux_labels", lambda: model, seed, loss_fn, loaders, names,
        defaults={"epochs": 60, "lr": 3e-3, "batch_size": batch_size},
        info={
            "hand_weights": dict(hand), "oracle_weights": dict(hand), "psi": psi,
            "n": {"train": len(train_idx), "aux": len(aux_idx), "val": len(val_idx), "test": len(test_idx)},
            "indices": {"train": train_idx, "aux": aux_idx, "val": val_idx, "test": test_idx},
        },
        label_generator=label_generator,
    )
