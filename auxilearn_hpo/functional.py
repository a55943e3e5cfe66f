"""The Neumann hypergradient as a pure function of parameter dicts; it lives in
:mod:`auxilearn_hpo.hypergrad.functional`, re-exported here."""
from .hypergrad.functional import LossFunctions, check_compile, functional_hypergradient, neumann_kernel, power_kernel

__all__ = ["functional_hypergradient", "neumann_kernel", "power_kernel", "LossFunctions", "check_compile"]
