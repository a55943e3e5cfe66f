"""Implicit-function-theorem hypergradients for bilevel problems.

Inner parameters ``W`` minimise the training loss ``L_T(W, phi)``; the auxiliary parameters
``phi`` are judged by the auxiliary-set loss ``L_A(W)``. At a (near) optimum of ``L_T`` the
implicit function theorem gives

.. math::

    \\frac{dL_A}{d\\phi} = -\\frac{\\partial L_A}{\\partial W} H^{-1}
        \\frac{\\partial^2 L_T}{\\partial W \\partial \\phi}, \\qquad
    H = \\frac{\\partial^2 L_T}{\\partial W^2}.

The package, the TorchOpt way, in small modules:

* :mod:`.linalg` -- the solver primitives ``solver(hvp, b, **options) -> (x, SolveInfo)``:
  :func:`neumann`, :func:`conjugate_gradient`, :func:`exact`, and :func:`largest_eigenvalue`;
* :mod:`.solvers` -- the solvers as values holding their options, :class:`Neumann`,
  :class:`CG`, :class:`Exact` (or a name, :func:`make_solver`);
* :mod:`.implicit` -- :func:`hypergradient`: builds ``g_T = dL_T/dW`` once with
  ``create_graph=True`` (or takes the training step's), reuses it for every Hessian-vector
  product, and returns ``-d/dphi (g_T . v)`` with its diagnostics;
* :mod:`.difference` -- :func:`difference_hypergradient`, the mixed term by a central difference;
* :mod:`.functional` -- :func:`functional_hypergradient`, the Neumann hypergradient as one
  ``torch.func`` program for ``torch.compile``;
* :mod:`.graph` -- the autograd plumbing they share.
"""
from .difference import difference_hypergradient, difference_step
from .functional import LossFunctions, functional_hypergradient
from .implicit import HypergradInfo, Hypergradient, hypergradient
from .linalg import EXACT_MAX_PARAMS, SolveInfo, conjugate_gradient, exact, largest_eigenvalue, neumann
from .solvers import CG, SOLVERS, Exact, Neumann, Solver, make_solver

__all__ = [
    "Solver",
    "Neumann",
    "CG",
    "Exact",
    "SOLVERS",
    "make_solver",
    "hypergradient",
    "difference_hypergradient",
    "difference_step",
    "Hypergradient",
    "HypergradInfo",
    "SolveInfo",
    "neumann",
    "conjugate_gradient",
    "exact",
    "largest_eigenvalue",
    "EXACT_MAX_PARAMS",
    "functional_hypergradient",
    "LossFunctions",
]
