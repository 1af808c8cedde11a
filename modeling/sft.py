"""Supervised fine-tuning: Llama 2's chat format, loss on the answers only.

`SFTConfig` is a `RunConfig` whose objective reads a token stage of packed dialogues
(`tasks.sft_tokens`: a loss mask per row, examples whole) and starts from a base model (`init`):
a pretraining run's folder (its `hf/` export), a Hugging Face folder or a Meta checkpoint folder.
The run's length may be given in epochs over the packed rows (Llama 2: 2), resolved against the
stage's manifest when the data is checked. Presets: `debug` (2 CPUs, a minute or two) and
`llama2-7b-chat` (RECIPE.md: cosine lr 2e-5, weight decay 0.1, 64 rows of 4096 tokens, 2 epochs).
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field

from modeling.checkpoints import load_hf, load_meta
from modeling.configs import ModelConfig
from modeling.objectives import Objective, PackedRows, read_token_manifest
from modeling.run_config import RunConfig
from tasks.settings import default_data_root


class FineTuningConfig(RunConfig):
    """What fine-tuning runs share: a base model to start from and a length in epochs."""

    init: str | None = Field(None, description="The base model: a pretraining run folder (its hf/ export), "
                                               "a Hugging Face folder or a Meta checkpoint folder; None: random")
    epochs: float | None = Field(None, gt=0, description="Or the run's length in passes over the packed rows")

    def _check_budget(self) -> None:
        given = [name for name in ("train_tokens", "steps", "epochs") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of train_tokens, steps or epochs (got {given or 'none'})")
        if self.epochs is None:
            super()._check_budget()

    def _steps_known(self) -> bool:
        return self.epochs is None

    @cached_property
    def _epoch_steps(self) -> int:
        rows = read_token_manifest(self.data)["rows"]
        return max(1, math.ceil(self.epochs * rows / self.global_batch_rows))

    @property
    def total_steps(self) -> int:
        return self._epoch_steps if self.epochs is not None else super().total_steps

    def path_fields(self) -> tuple[str, ...]:
        return (*super().path_fields(), "init")

    def check_data(self) -> dict[str, Any]:
        manifest = super().check_data()
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) exceeds the run's "
                             f"{self.total_steps} steps ({self.epochs} epochs of {manifest['rows']} rows)")
        if self.init is not None:
            base_model_folder(self.init)
        return manifest

    def initial_weights(self) -> dict[str, torch.Tensor] | None:
        if self.init is None:
            return None
        folder = base_model_folder(self.init)
        if (folder / "params.json").is_file():
            model = load_meta(folder, max_seq_len=self.model_shape.max_seq_len)
        else:
            model = load_hf(folder)
        if architecture(model.config) != architecture(self.model_shape):
            raise ValueError(f"{self.init}: the base model's shape {model.config} is not the run's model "
                             f"{self.model_name} ({self.model_shape})")
        return model.state_dict()


class SFTConfig(FineTuningConfig):
    kind: ClassVar[str] = "sft"

    data: str = Field(default_factory=lambda: f"{default_data_root()}/sft-tokens",
                      description="Token stage of packed dialogues (tasks.sft_tokens)")

    def objective(self) -> Objective:
        return PackedRows(self, answers_only=True)


def architecture(config: ModelConfig) -> tuple:
    """What the weights and the forward depend on (not max_seq_len, nor how the FFN width was given)."""
    return (config.dim, config.n_layers, config.n_heads, config.n_kv_heads, config.vocab_size, config.ffn_hidden,
            config.norm_eps, config.rope_theta)


def base_model_folder(init: str) -> Path:
    """The folder holding the base model's weights: `init` itself, or a pretraining run's `hf/`."""
    folder = Path(init)
    for candidate in (folder, folder / "hf"):
        if (candidate / "config.json").is_file() or (candidate / "params.json").is_file():
            return candidate
    raise FileNotFoundError(f"{init}: no base model there: expected a Hugging Face folder (config.json), a Meta "
                            f"checkpoint folder (params.json) or a pretraining run folder with an hf/ export")


def debug_run(**overrides: Any) -> SFTConfig:
    """The `debug` size fine-tuned from `make demo`'s pretraining run on what it packed: a minute or two
    on a 2-core machine."""
    settings: dict[str, Any] = dict(
        run_name="sft-debug", model="debug", data=f"{default_data_root()}/demo/sft-tokens",
        init=f"{default_data_root()}/demo/runs/demo", epochs=2, seq_len=128,
        global_batch_tokens=128 * 8, micro_batch_rows=4, optimizer={"lr": 1e-3}, schedule={"warmup_steps": 0},
        checkpoint={"interval_steps": 10, "keep_last": 2}, scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    return SFTConfig.model_validate(settings | overrides)


def llama2_7b_chat_run(**overrides: Any) -> SFTConfig:
    """Llama 2-Chat 7B's SFT by the paper (RECIPE.md): cosine lr 2e-5 (to 10%), weight decay 0.1,
    64 rows of 4096 tokens a step, 2 epochs, on 8 GPU workers with FSDP2 and bf16 autocast."""
    settings: dict[str, Any] = dict(
        run_name="llama2-7b-chat-sft", model="llama2-7b", init=f"{default_data_root()}/runs/llama2-7b", epochs=2,
        seq_len=4096, global_batch_tokens=64 * 4096, micro_batch_rows=2, optimizer={"lr": 2e-5, "weight_decay": 0.1},
        schedule={"warmup_steps": 0}, parallelism={"activation_checkpointing": "all", "mixed_precision": "bf16"},
        checkpoint={"interval_steps": 200, "keep_last": 2},
        scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 8, "gpu_memory_gib": 80},
    )
    return SFTConfig.model_validate(settings | overrides)


PRESETS = {"debug": debug_run, "llama2-7b-chat": llama2_7b_chat_run}
