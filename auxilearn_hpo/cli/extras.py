"""The optional installs (extras) a ``tune`` run needs, checked before anything is written.

Known without importing torch or the frameworks (``--help`` and a missing extra answer at
once): the shipped benchmark names and which of them need scikit-learn. A test keeps both in
step with :mod:`auxilearn_hpo.tasks`.
"""
from __future__ import annotations

import importlib.util

from .errors import UsageError

__all__ = ["BENCHMARKS", "BENCHMARK_NEEDS", "BACKEND_NEEDS", "check_extras", "missing"]

#: The shipped benchmarks (:func:`auxilearn_hpo.tasks.names`), for the parser's help.
BENCHMARKS: tuple[str, ...] = ("toy", "graded_noise", "scaled_regression", "digits", "fewshot_digits",
                               "digits_aux_labels")
#: Benchmark -> (module it imports, extra that installs it).
BENCHMARK_NEEDS: dict[str, tuple[str, str]] = {
    "digits": ("sklearn", "digits"), "fewshot_digits": ("sklearn", "digits"),
    "digits_aux_labels": ("sklearn", "digits"),
}
#: Backend -> (module it imports, extra that installs it).
BACKEND_NEEDS: dict[str, tuple[str, str]] = {"optuna": ("optuna", "optuna"), "ray": ("ray", "ray")}

_NAMES = {"sklearn": "scikit-learn", "ray": "Ray Tune", "optuna": "Optuna"}


def missing(module: str) -> bool:
    """Whether ``module`` cannot be imported (found nowhere, or blocked in ``sys.modules``)."""
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):  # a parent that fails to import; a None in sys.modules
        return True


def check_extras(benchmark: str | None, backend: str | None) -> None:
    """A :class:`UsageError` naming the extra to install when the backend's framework or the
    benchmark's data library is missing; nothing when they are there (or unknown: the settings
    check names those)."""
    for what, needs in ((f"--backend {backend}", BACKEND_NEEDS.get(backend or "")),
                        (f"the {benchmark!r} benchmark", BENCHMARK_NEEDS.get(benchmark or ""))):
        if needs is not None and missing(needs[0]):
            module, extra = needs
            raise UsageError(f"{what} needs {_NAMES.get(module, module)}, which is not installed: "
                             f"pip install 'auxilearn-hpo[{extra}]'")
