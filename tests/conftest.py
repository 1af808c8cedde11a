"""Session-wide real services: one Prefect test harness and one local Ray for the whole run; the
real files of ../shared/corpora that several test directories read.

Every test that needs one of them (directly or through another fixture), or that starts the whole
stack, is marked ``slow``: ``-m "not slow"`` is the quick tier, which starts neither.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
HH_HARMLESS = CORPORA / "preferences" / "harmless-base-test.jsonl.gz"

# The session fixtures that start Ray or Prefect, and those built on them for every test directory.
SERVICE_FIXTURES = {"ray_local", "prefect_api", "demo_run"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        # fixturenames is the closure: a fixture that asks for ray_local puts it here too.
        if SERVICE_FIXTURES & set(item.fixturenames) or item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def hh_harmless() -> Path:
    """The real Anthropic HH harmless-base test split: 2,312 {chosen, rejected} transcript pairs."""
    if not HH_HARMLESS.is_file():
        pytest.skip(f"real HH corpus not found at {HH_HARMLESS}")
    return HH_HARMLESS


@pytest.fixture
def s3_server(monkeypatch):
    """An S3 API server on 127.0.0.1 (moto) with a bucket `llamaline`; AWS_* point pyarrow's S3 client at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        for name, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket="llamaline")
        yield "s3://llamaline"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
