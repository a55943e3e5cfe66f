"""The hyperstep variants of :class:`~auxilearn_hpo.learner.AuxiliaryLearner`, one method each.

A hyperstep takes one step of the auxiliary parameters along the IFT hypergradient of the
main-task loss on the auxiliary set. :class:`Hypersteps` holds the variants the learner
chooses from: fused (reusing the training step's forward pass and gradient graph), plain
(its own forward pass), compiled (one ``torch.compile``-d program) and a weighting's own
meta-gradient (gradient alignment); and the auxiliary-set batches they all read.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import SequentialSampler

from .hypergrad import HypergradInfo
from .hypergrad.functional import LossFunctions

__all__ = ["Hypersteps"]


class Hypersteps:
    """The hyperstep half of :class:`~auxilearn_hpo.learner.AuxiliaryLearner` (a base class).

    It reads the learner's ``model``, ``loss_fn``, ``weighting``, ``config``, ``aux_loader``,
    ``meta`` (the :class:`~auxilearn_hpo.optim.MetaOptimizer`), ``params``, ``model_params``,
    ``aux_params`` and ``shared_params``, set by the learner's constructor.
    """

    def aux_batches(self) -> Iterator[Any]:
        """Auxiliary-set batches without end, pass after pass. A small auxiliary set read in
        order (a ``SequentialSampler``, at most ``aux_samples`` samples) is kept after the first
        pass and served from memory."""
        if self._aux_cache is not None:  # the whole, unshuffled auxiliary set serves every hyperstep
            while True:
                yield from self._aux_cache
        cacheable = (isinstance(getattr(self.aux_loader, "sampler", None), SequentialSampler)
                     and self._aux_size <= max(self.config.aux_samples, 1))
        while True:
            empty, seen = True, []
            for batch in self.aux_loader:  # type: ignore[union-attr]
                empty = False
                if cacheable:
                    seen.append(batch)
                yield batch
            if empty:
                raise ValueError("aux_loader yielded no batch")
            if cacheable:  # same batches every pass: keep them and skip the loader from now on
                self._aux_cache = seen
                while True:
                    yield from seen

    def _losses(self, batch: Any) -> Tensor:
        losses = self.loss_fn(self.model, batch)
        self.weighting.check(losses)
        if not losses.requires_grad:
            raise ValueError("loss_fn(model, batch) returned losses without a graph to the model "
                             "(detached, or computed under torch.no_grad()): nothing would train")
        return losses

    def aux_loss(self, aux_batches: Iterator[Any]) -> Tensor:
        """Mean main-task loss over auxiliary-set batches holding at least ``aux_samples`` samples."""
        main, total, count = self.weighting.main_task, None, 0
        while True:
            main_losses = self._losses(next(aux_batches))[:, main]
            part = main_losses.flatten(1).mean(1).sum() if main_losses.dim() > 1 else main_losses.sum()
            total = part if total is None else total + part
            count += main_losses.shape[0]
            if self._aux_enough(count):
                return total / max(count, 1)

    def _aux_enough(self, count: int) -> bool:
        """Whether ``count`` auxiliary-set samples make up one hyperstep's auxiliary-set loss."""
        return count >= self.config.aux_samples or count >= self._aux_size

    def _check_finite(self, combined: Tensor) -> None:
        combined = combined.detach()
        if not math.isfinite(float(combined)):
            raise FloatingPointError(
                f"training diverged at epoch {self.epoch + 1}, step {self.step + 1}: the combined training "
                f"loss is {float(combined)} (task weights {self.weighting.effective_weights()}); lower lr or aux_lr")

    def _fused_step(self, losses: Tensor, aux_batches: Iterator[Any]) -> Tensor:
        """Training gradient and hyperstep from one forward pass: ``g_T = dL_T/dW`` is built once
        with a graph, serves the hypergradient's Hessian-vector products, and its values are
        the model's gradients (the hypergradient is taken at the weights before this step)."""
        assert self.meta is not None
        combined = self.weighting(losses)
        self._check_finite(combined)
        grads = torch.autograd.grad(combined, self.params, create_graph=True, allow_unused=True)
        by_id = {id(p): g for p, g in zip(self.params, grads)}
        self.meta.step(combined, self.aux_loss(aux_batches), self.model_params, self.aux_params,
                       train_grads=[by_id[id(p)] for p in self.model_params])
        for p, g in zip(self.params, grads):
            p.grad = None if g is None else g.detach()
        return combined.detach()

    def _hyperstep(self, batch: Any, aux_batches: Iterator[Any]) -> None:
        """An unfused hyperstep on training batch ``batch``: a weighting's own meta-gradient,
        the compiled program, or the plain one (its own forward pass)."""
        assert self.meta is not None
        meta_gradient = getattr(self.weighting, "meta_gradient", None)
        if meta_gradient is not None:  # a weighting with its own meta-gradient (gradient alignment)
            losses = self._losses(batch)
            params = self.shared_params if self.shared_params is not None else self.model_params
            grads = meta_gradient(losses, self.aux_loss(aux_batches), params)
            norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            self.meta.last_info = HypergradInfo("alignment", 0, math.nan, "aligned", norm, math.isfinite(norm))
            self.meta.apply(grads, self.aux_params, norm=norm)
            return
        if self.config.compile is not False:
            self._compiled_hyperstep(batch, aux_batches)
            return
        train_loss = self.weighting(self._losses(batch))
        val_loss = self.aux_loss(aux_batches)
        self.meta.step(train_loss, val_loss, self.model_params, self.aux_params)

    def _compiled_hyperstep(self, batch: Any, aux_batches: Iterator[Any]) -> None:
        """A hyperstep as one compiled program (``compile``, see :mod:`auxilearn_hpo.hypergrad.functional`)."""
        assert self.meta is not None
        if self._objective is None:
            self._objective = LossFunctions(self.model, self.weighting, self.loss_fn, self.model_params,
                                            self.aux_params, self.weighting.main_task)
        val_batches, count = [], 0
        while True:
            b = next(aux_batches)
            val_batches.append(b)
            count += self._objective.batch_size(b)
            if self._aux_enough(count):
                break
        obj = self._objective
        self.meta.step_functional(obj.train_loss, obj.val_loss, obj.params(), obj.aux_params(), batch, val_batches,
                                  compile=self.config.compile)
