"""`pretrain`: train a LLaMA model on a token stage with Ray Train, and show it in the Prefect UI.

The run goes the training path every training flow shares (`flows.training`): the config checked
against the data and the cluster first, then Ray Train here or as a Ray job on a cluster (stopped
if this run is cancelled or fails), progress in the UI, a metrics table, the loss curve and a
summary as artifacts (`pretrain-metrics`, `pretrain-summary`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.training import run_config_of_parameters, stop_job_on_cancellation, train
from modeling.pretrain import PretrainConfig, debug_run
from modeling.run_config import with_overrides

run_config_of = run_config_of_parameters(PretrainConfig, default=debug_run)


@flow(name="pretrain", log_prints=True, on_cancellation=[stop_job_on_cancellation(run_config_of)])
def pretrain(config: PretrainConfig = debug_run(), overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """`overrides` changes single fields of `config` at run time, e.g. {"steps": 100} or
    {"scaling": {"num_workers": 16}}."""
    return train(with_overrides(config, overrides))
