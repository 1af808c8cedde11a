"""Session-wide real services: one Prefect test harness and one local Ray for the whole run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API (temporary server and database) for every flow test of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance; stages and flows in the tests connect to it."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
