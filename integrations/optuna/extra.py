"""The optional dependency: the real ``optuna`` package, or an ``ImportError`` naming the extra."""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["INSTALL", "import_optuna"]

#: What to run when Optuna is missing.
INSTALL = "pip install auxilearn-hpo[optuna]"


def import_optuna() -> Any:
    """The real ``optuna`` package (an absolute import: never this package), or a clear ImportError."""
    try:
        optuna = importlib.import_module("optuna")
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.optuna needs the optional dependency 'optuna', which is not "
            f"installed: {INSTALL}"
        ) from err
    if not hasattr(optuna, "create_study"):  # e.g. a script's folder holding an optuna.py shadows it
        raise ImportError(f"'optuna' resolved to {getattr(optuna, '__file__', optuna)!r}, which is not the Optuna "
                          f"library; rename that file or fix sys.path ({INSTALL})")
    return optuna
