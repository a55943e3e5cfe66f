"""Published loss-weighting methods that AuxiLearn is compared against.

Every class is a :class:`~auxilearn_hpo.weightings.Weighting` with ``learnable = False``: the
learner treats it exactly like a learned combiner, except that no hypergradient ever reaches it.
They take a loss matrix ``(B, T)`` (column ``main_task`` holds the main loss) and either combine
it in :meth:`forward` (fixed or slowly varying weights) or manipulate per-task gradients in
:meth:`backward` (GradNorm, gradient cosine similarity, PCGrad).

================  ==============================  =============================================
registry key      class                           what decides the weights
================  ==============================  =============================================
``single_task``   :class:`SingleTask`             only the main loss
``equal``         :class:`EqualWeights`           all ones
``uncertainty``   :class:`UncertaintyWeighting`   learned log-variances (model optimizer)
``dwa``           :class:`DynamicWeightAverage`   ratios of the last two epoch losses
``gradnorm``      :class:`GradNorm`               gradient norms vs. relative training rates
``cosine``        :class:`GradientCosineSimilarity`  sign of cos(g_main, g_aux)
``pcgrad``        :class:`PCGrad`                 projection of conflicting gradients
``fixed``         :class:`FixedWeights`           weights given as an option (black-box search)
================  ==============================  =============================================

Conventions shared by all classes:

* the per-task loss is the batch mean, ``L_j = losses[:, j].mean()``, and the combined loss is
  ``sum_j w_j L_j`` (a *sum* over tasks, so equal weights means all ones, not ``1/T``);
* :meth:`~Weighting.backward` accumulates into ``p.grad`` (``p.grad += g``) for every ``p`` in
  ``params`` and ``shared_params`` and returns the detached combined loss ``sum_j w_j L_j``
  for logging, with the weights used at that step (PCGrad: the plain sum ``sum_j L_j``);
* gradient-manipulation methods act on ``shared_params`` only (default: all of ``params``);
  every other parameter receives the plain gradient of ``sum_j L_j`` (GradNorm: of
  ``sum_j w_j L_j``);
* :meth:`~Weighting.task_weights` returns the weights, ``(T,)``, applied to the *shared*
  parameters at the last step (or to be applied at the next step for GradNorm/DWA).
"""
from ..base import Weighting
from .gradient import GradientCosineSimilarity, GradNorm, PCGrad
from .loss import DynamicWeightAverage, EqualWeights, FixedWeights, SingleTask, UncertaintyWeighting


__all__ = [
    "SingleTask",
    "EqualWeights",
    "UncertaintyWeighting",
    "DynamicWeightAverage",
    "GradNorm",
    "GradientCosineSimilarity",
    "PCGrad",
    "FixedWeights",
    "BASELINES",
]

#: Baselines by the name a tuning study uses (see :func:`auxilearn_hpo.weightings.make_weighting`).
BASELINES: dict[str, type[Weighting]] = {
    "single_task": SingleTask,
    "equal": EqualWeights,
    "uncertainty": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "gradnorm": GradNorm,
    "cosine": GradientCosineSimilarity,
    "pcgrad": PCGrad,
    "fixed": FixedWeights,
}
