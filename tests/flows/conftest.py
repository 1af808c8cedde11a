import pytest

from flows.demo import DemoConfig, demo


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, prefect_api, ray_local):
    """The whole demo once per session: ingest of every source, quality models, curation, validation."""
    root = tmp_path_factory.mktemp("demo")
    state = demo(DemoConfig(data_root=str(root), seed=7), return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id, root
