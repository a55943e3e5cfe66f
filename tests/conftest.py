"""Shared fixtures. Importable without Ray: Ray starts only when a test asks for ``ray_session``."""
import os
import tempfile

import pytest

# The CLI signs run.json with a per-account key under $XDG_CONFIG_HOME; tests (and the CLI
# processes they start) use a throw-away one instead of the real account's.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="auxilearn-hpo-test-config-")


@pytest.fixture(scope="session")
def ray_session():
    """One quiet local Ray runtime (2 CPUs) for the whole test session, shut down at its end.

    Tests that only need Ray's modules (not a running cluster) should not use this fixture:
    ``ray.init`` costs several seconds and about 1 GB of memory.
    """
    ray = pytest.importorskip("ray")
    from auxilearn_hpo.integrations.ray_tune import init_local

    started = init_local(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()
