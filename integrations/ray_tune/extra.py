"""The optional dependency: Ray Tune, or an ``ImportError`` naming the extra."""
from __future__ import annotations

from typing import Any

__all__ = ["INSTALL", "import_ray", "import_tune"]

#: What to run when Ray Tune is missing.
INSTALL = "pip install auxilearn-hpo[ray]"


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.ray_tune needs Ray Tune (module 'ray' could not be imported: {err}); "
            f"install it with `{INSTALL}`"
        ) from err
    return ray


def import_tune() -> Any:
    try:
        from ray import tune
    except ImportError as err:
        raise ImportError(
            f"auxilearn_hpo.integrations.ray_tune needs Ray Tune (module 'ray.tune' could not be imported: {err}); "
            f"install it with `{INSTALL}`"
        ) from err
    return tune
