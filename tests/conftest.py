"""Shared fixtures. Importable without Ray: Ray starts only when a test asks for ``ray_session``."""
import pytest


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
