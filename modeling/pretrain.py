"""Pretraining: next-token prediction over packed documents, by the LLaMA recipe.

`PretrainConfig` is a `RunConfig` whose objective reads a token stage of packed documents
(`tasks.tokens`); `modeling.ray_job.run_training` runs it on Ray Train. The presets are the
`debug` run of `make demo` and Llama 2 7B by the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

from modeling.objectives import Objective, PackedRows
from modeling.run_config import RunConfig
from tasks.settings import default_data_root


class PretrainConfig(RunConfig):
    kind: ClassVar[str] = "pretrain"

    def objective(self) -> Objective:
        return PackedRows(self, answers_only=False)


def debug_run(**overrides: Any) -> PretrainConfig:
    """A run of the `debug` size on what `make demo` tokenized; a minute or two on a 2-core machine."""
    settings: dict[str, Any] = dict(
        run_name="debug", model="debug", data=f"{default_data_root()}/demo/tokens", steps=40, seq_len=128,
        global_batch_tokens=128 * 8, micro_batch_rows=4, schedule={"warmup_steps": 4},
        checkpoint={"interval_steps": 10, "keep_last": 2}, scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    return PretrainConfig.model_validate(settings | overrides)


def llama2_7b_run(**overrides: Any) -> PretrainConfig:
    """Llama 2 7B by the paper (RECIPE.md section 3): 2T tokens in 4M-token batches of 4096-token rows,
    on 8 GPU workers with FSDP2, bf16 autocast and activation checkpointing."""
    settings: dict[str, Any] = dict(
        run_name="llama2-7b", model="llama2-7b", train_tokens=2_000_000_000_000, global_batch_tokens=4_194_304,
        seq_len=4096, micro_batch_rows=2, parallelism={"activation_checkpointing": "all", "mixed_precision": "bf16"},
        checkpoint={"interval_steps": 1000, "keep_last": 3},
        validation={"holdout_shards": 1, "interval_steps": 1000, "rows": 32},
        scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 8, "gpu_memory_gib": 80},
    )
    return PretrainConfig.model_validate(settings | overrides)


PRESETS = {"debug": debug_run, "llama2-7b": llama2_7b_run}
