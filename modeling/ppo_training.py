"""PPO through the one training core: the policy and the value model as one module, trained on
each iteration's rollouts with the clipped losses (`modeling.ppo`).

How a flow drives a run of `iterations` iterations, each `batch_samples` samples (Llama 2: 512)
in mini-batches of `mini_batch_samples` (64), one optimizer step each, so `steps_per_iteration`
(8) steps an iteration:

1. Iteration i samples answers from the policy: the round's starting model (`init`) for i = 0,
   then the run's export of the iteration before (`Trainer.export_hf`: the policy as a Hugging
   Face folder, the value model under `value/`).
2. The roles score them (`modeling.rollouts`: old log-probs with that policy, reference log-probs
   with `init`, values with that value model, the helpfulness and safety reward models) and
   `write_rollouts(config.data, i, ...)` writes `iteration-NNNN` under the rollouts root
   (`data`), refusing a rollout whose KL or length blew up: the run stops there.
3. A new `Trainer(config, initial_weights=config.initial_weights())` resumes from the run
   folder's newest checkpoint (step steps_per_iteration * i; none for i = 0: it starts from
   `init` and `value_init`), `train(until=steps_per_iteration * (i + 1))` checkpoints at the end
   of the iteration (checkpoint.interval_steps divides the iteration's steps), and
   `export_hf` writes what iteration i + 1 samples from.

`PPORollouts` is the objective. Its batch source reads iteration i's stage in an order shuffled
by (seed, i), each rank its share of each micro batch; its state is {"iteration": i, "row": r}
(rows of the iteration consumed), so a checkpoint resumes exactly. Having consumed iteration i it
moves to i + 1 on the next batch, and fails clearly when that stage is not there. A micro batch
(`PPOBatch`) holds the sequences in `modeling.rollouts.answer_layout`'s layout and the rollout's
old log-probs, old values, whitened advantages and returns at the answer positions; its loss
tokens are its answer tokens, so the core's weighting makes a step's loss the mean over the
mini-batch's answer tokens of `policy loss + value_loss_coef * value loss`. It comes with counts
the core reports as shares of the answer tokens: clip_fraction, value_clip_fraction, approx_kl,
policy_loss and value_loss.

Presets: `debug` (CPU, the debug size: 32 samples an iteration in mini-batches of 8) and
`llama2-7b-chat` (RECIPE.md: AdamW, constant lr 1e-6, 512 / 64, clip 0.2, beta 0.01, 200
iterations on 8 GPUs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.llama import IGNORE_INDEX, Llama
from modeling.objectives import LossWithCounts
from modeling.ppo import answer_logprobs, clipped_policy_loss, clipped_value_loss
from modeling.reward import HF_UNK_ID, RewardModel, initial_score_weight, load_reward_hf, save_reward_hf
from modeling.rollouts import (
    RolloutSettings,
    answer_layout,
    finished_rollouts,
    read_rollouts,
    values_at_every_position,
)
from modeling.run_config import OptimizerOptions, ScheduleOptions
from modeling.sft import FineTuningConfig, architecture, base_model_folder
from tasks.settings import default_data_root

VALUE_EXPORT = "value"  # the value model's folder inside the policy's export


class PolicyValueOutput(NamedTuple):
    logits: Tensor  # (B, T, V) the policy's
    values: Tensor  # (B, T) the value model's at every position


class JointBlocks(Sequence):
    """The policy's blocks then the value model's, as one list `modeling.parallelize` can
    checkpoint, compile and shard (assigning a block puts it back into its own model)."""

    def __init__(self, *block_lists: nn.ModuleList) -> None:
        self.places = [(blocks, index) for blocks in block_lists for index in range(len(blocks))]

    def __len__(self) -> int:
        return len(self.places)

    def __getitem__(self, index: int) -> nn.Module:
        blocks, inner = self.places[index]
        return blocks[inner]

    def __setitem__(self, index: int, block: nn.Module) -> None:
        blocks, inner = self.places[index]
        blocks[inner] = block

    def __iter__(self) -> Iterator[nn.Module]:
        return (blocks[inner] for blocks, inner in self.places)


class PolicyAndValue(nn.Module):
    """The module PPO trains: one optimizer over both. Calling it runs both on the same inputs (so
    DDP and FSDP see one forward)."""

    def __init__(self, config: ModelConfig, value_seed: int | None = 0) -> None:
        super().__init__()
        self.policy = Llama(config)
        self.value = RewardModel(config, score_seed=value_seed)

    @property
    def config(self) -> ModelConfig:
        return self.policy.config

    @property
    def layers(self) -> JointBlocks:
        return JointBlocks(self.policy.layers, self.value.layers)

    def forward(self, tokens: Tensor) -> PolicyValueOutput:
        return PolicyValueOutput(self.policy(tokens).logits, values_at_every_position(self.value, tokens))


# ---------------------------------------------------------------------------------- batches


@dataclass
class PPOBatch:
    """A micro batch of rollout rows in `answer_layout`'s layout; per-token tensors 0 off the answers."""

    inputs: Tensor  # (B, T)
    targets: Tensor  # (B, T) the answer token each position predicts, IGNORE_INDEX elsewhere
    old_logprobs: Tensor
    old_values: Tensor
    advantages: Tensor
    returns: Tensor

    @property
    def mask(self) -> Tensor:
        return self.targets != IGNORE_INDEX

    @property
    def loss_tokens(self) -> int:
        return int(self.mask.sum())


def batch_of_rollouts(rows: Sequence[dict[str, Any]], device: torch.device) -> PPOBatch:
    layout = answer_layout([r["prompt_ids"] for r in rows], [r["answer_ids"] for r in rows], device)
    per_token = {name: layout.spread([r[name] for r in rows])
                 for name in ("old_logprobs", "values", "advantages", "returns")}
    return PPOBatch(layout.inputs, layout.targets, per_token["old_logprobs"], per_token["values"],
                    per_token["advantages"], per_token["returns"])


def iteration_order(seed: int, iteration: int, rows: int) -> np.ndarray:
    """The order an iteration's rows are trained in: shuffled, the same on every rank and resume."""
    return np.random.default_rng([seed, iteration]).permutation(rows)


class RolloutSource:
    """A rank's micro batches of the current iteration's rollouts; its state is {"iteration", "row"}."""

    def __init__(self, root: str, seed: int, rank: int, world_size: int, device: torch.device,
                 position: dict[str, Any] | None, seq_len: int) -> None:
        self.root, self.seed, self.rank, self.world_size, self.device = root, seed, rank, world_size, device
        self.seq_len = seq_len
        position = position or {"iteration": 0, "row": 0}
        self.iteration, self.row = int(position["iteration"]), int(position["row"])
        self._rows: list[dict[str, Any]] | None = None  # read when first needed: the stage may come later

    def state(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "row": self.row}

    def _load(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = read_rollouts(self.root, self.iteration).to_pylist()
        return self._rows

    def next_batch(self, rows: int) -> PPOBatch:
        stage_rows = self._load()
        if self.row >= len(stage_rows):
            self.iteration, self.row, self._rows = self.iteration + 1, 0, None
            stage_rows = self._load()
        taken = self.row + rows * self.world_size
        if taken > len(stage_rows):
            raise ValueError(f"PPO iteration {self.iteration} has {len(stage_rows)} rollouts, not a whole number of "
                             f"micro batches of {rows} x {self.world_size} ranks after row {self.row}")
        order = iteration_order(self.seed, self.iteration, len(stage_rows))
        mine = order[self.row:taken][self.rank::self.world_size]
        self.row = taken
        batch = batch_of_rollouts([stage_rows[i] for i in mine], self.device)
        if batch.inputs.shape[1] > self.seq_len:
            raise ValueError(f"PPO iteration {self.iteration}: a prompt + answer of {batch.inputs.shape[1] + 1} "
                             f"tokens exceeds the run's seq_len {self.seq_len} + 1; sample shorter answers or "
                             f"raise seq_len")
        return batch


class PPORollouts:
    """The objective: clipped policy and value losses over the current iteration's rollouts."""

    def __init__(self, config: PPOConfig) -> None:
        self.config = config

    def check_data(self) -> dict[str, Any]:
        """The rollouts of the last iteration the job trains are there (of the first, for a job of every
        iteration: later ones are written as the run goes), of the configured size, and fit seq_len."""
        config = self.config
        iteration = config.through_iteration or 0
        manifest = finished_rollouts(config.data, iteration)
        if manifest is None:
            read_rollouts(config.data, iteration)  # raises, naming the stage
        if manifest["samples"] != config.batch_samples:
            raise ValueError(f"{config.data}: iteration {iteration} holds {manifest['samples']} rollouts, the run "
                             f"takes batch_samples {config.batch_samples} an iteration")
        if manifest["max_sequence_tokens"] - 1 > config.seq_len:
            raise ValueError(f"{config.data}: iteration {iteration}'s longest prompt + answer has "
                             f"{manifest['max_sequence_tokens']} tokens; seq_len ({config.seq_len}) must be at least "
                             f"{manifest['max_sequence_tokens'] - 1}")
        # What every run's check reports: its rows (an iteration's rollouts) and their length at most.
        return {**manifest, "rows": manifest["samples"], "row_tokens": manifest["max_sequence_tokens"]}

    def open(self, rank: int, world_size: int, device: torch.device, position: dict[str, Any] | None = None,
             validation: bool = False) -> RolloutSource:
        if validation:
            raise ValueError("PPO has no validation set: each iteration's rollouts are its measurements "
                             "(their manifests); leave validation.interval_steps at 0")
        config = self.config
        return RolloutSource(config.data, config.seed, rank, world_size, device, position, config.seq_len)

    def loss(self, model: nn.Module, batch: PPOBatch) -> LossWithCounts:
        config = self.config
        out = model(batch.inputs)
        mask = batch.mask
        logprobs = answer_logprobs(out.logits, batch.targets, config.temperature)
        policy = clipped_policy_loss(logprobs, batch.old_logprobs, batch.advantages, mask, config.clip_ratio)
        value = clipped_value_loss(out.values.float(), batch.old_values, batch.returns, mask, config.value_clip)
        tokens = mask.sum()
        counts = {"policy_loss": policy.loss.detach() * tokens, "value_loss": value.loss.detach() * tokens,
                  "clip_fraction": policy.clip_fraction * tokens, "value_clip_fraction": value.clip_fraction * tokens,
                  "approx_kl": policy.approx_kl * tokens}
        return LossWithCounts(policy.loss + config.value_loss_coef * value.loss, counts)


# ---------------------------------------------------------------------------------- the run


class PPOConfig(FineTuningConfig):
    """A PPO run: `init` the chat model (the policy's start and the frozen reference), `value_init`
    the reward model the value model starts from; `data` the rollouts root. The run's length is
    `iterations`; a step is a mini-batch (`global_batch_tokens` follows from mini_batch_samples)."""

    kind: ClassVar[str] = "ppo"

    data: str = Field(default_factory=lambda: f"{default_data_root()}/ppo-rollouts",
                      description="Rollouts root: one stage per iteration, iteration-NNNN (modeling.rollouts)")
    value_init: str | None = Field(None, description="The reward model (a save_reward_hf folder or a reward run "
                                                     "folder) the value model starts from; None: init's backbone "
                                                     "with a seeded score head")
    iterations: int = Field(ge=1, description="PPO iterations (Llama 2: 200-400)")
    batch_samples: int = Field(512, ge=1, description="Samples an iteration")
    mini_batch_samples: int = Field(64, ge=1, description="Samples an optimizer step")
    clip_ratio: float = Field(0.2, gt=0, lt=1)
    value_clip: float = Field(0.2, gt=0)
    value_loss_coef: float = Field(0.1, ge=0, description="The value loss's weight in the one loss (Llama 2 gives "
                                                          "none; TRL's default)")
    kl_beta: float = Field(0.01, ge=0, description="Llama 2: 0.01 for 7B/13B, 0.005 for 34B/70B")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    temperature: float = Field(1.0, gt=0, description="The sampling temperature, which log-probs are taken at")
    max_mean_kl: float = Field(30.0, gt=0, description="An iteration whose answers' mean KL to the reference "
                                                       "(nats) exceeds this stops the run")
    max_mean_length: float = Field(1024.0, gt=0, description="Likewise the mean answer length in tokens")
    through_iteration: int | None = Field(None, ge=0, description="A job that trains only up to the end of this "
                                                                 "iteration (the rlhf flow runs one per iteration, "
                                                                 "after writing its rollouts); None: to the last")
    optimizer: OptimizerOptions = OptimizerOptions(lr=1e-6)
    schedule: ScheduleOptions = ScheduleOptions(warmup_steps=0, final_lr_ratio=1.0)

    @model_validator(mode="before")
    @classmethod
    def _batch_and_checkpoints(cls, values: Any) -> Any:
        """A step is a mini-batch: global_batch_tokens is mini_batch_samples rows of seq_len; the
        run checkpoints at every iteration's end unless told a divisor of it."""
        if not isinstance(values, dict):
            return values
        seq_len = values.get("seq_len", cls.model_fields["seq_len"].default)
        mini_batch = values.get("mini_batch_samples", cls.model_fields["mini_batch_samples"].default)
        values = {**values, "global_batch_tokens": mini_batch * seq_len}
        checkpoint = dict(values.get("checkpoint") or {})
        if not checkpoint.get("interval_steps"):
            batch = values.get("batch_samples", cls.model_fields["batch_samples"].default)
            checkpoint["interval_steps"] = max(1, batch // mini_batch)
            values["checkpoint"] = checkpoint
        return values

    def _check_budget(self) -> None:
        if any(getattr(self, name) is not None for name in ("train_tokens", "steps", "epochs")):
            raise ValueError("a PPO run's length is its iterations; train_tokens, steps and epochs are not set")
        if self.batch_samples % self.mini_batch_samples:
            raise ValueError(f"batch_samples ({self.batch_samples}) is not a whole number of mini-batches of "
                             f"{self.mini_batch_samples}")
        if self.through_iteration is not None and self.through_iteration >= self.iterations:
            raise ValueError(f"through_iteration {self.through_iteration} is past the run's last iteration "
                             f"({self.iterations - 1})")
        if self.steps_per_iteration % self.checkpoint.interval_steps:
            raise ValueError(f"checkpoint.interval_steps ({self.checkpoint.interval_steps}) must divide the "
                             f"{self.steps_per_iteration} steps of an iteration: the next iteration resumes from "
                             f"the checkpoint at its end")

    def _steps_known(self) -> bool:
        return True

    @property
    def steps_per_iteration(self) -> int:
        return self.batch_samples // self.mini_batch_samples

    @property
    def total_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    @property
    def stop_step(self) -> int:
        last = self.iterations - 1 if self.through_iteration is None else self.through_iteration
        return (last + 1) * self.steps_per_iteration

    def rollout_settings(self) -> RolloutSettings:
        return RolloutSettings(beta=self.kl_beta, gamma=self.gamma, lam=self.lam, temperature=self.temperature,
                               max_mean_kl=self.max_mean_kl, max_mean_length=self.max_mean_length)

    def reference_folder(self) -> Path:
        """The frozen reference's weights (the round's starting model, `init`): what the flow loads to
        score reference log-probs (modeling.model_folders.load_model)."""
        if self.init is None:
            raise ValueError("a PPO run's reference is its init model, and init is not set")
        return base_model_folder(self.init)

    def path_fields(self) -> tuple[str, ...]:
        return (*super().path_fields(), "value_init")

    def objective(self) -> PPORollouts:
        return PPORollouts(self)

    def check_data(self) -> dict[str, Any]:
        manifest = self.objective().check_data()
        if self.init is not None:
            base_model_folder(self.init)
        if self.value_init is not None:
            if self.init is None:
                raise ValueError("value_init is set but init is not: the policy starts from the chat model")
            base_model_folder(self.value_init)
        return manifest

    def new_model(self) -> PolicyAndValue:
        return PolicyAndValue(self.model_shape, value_seed=self.seed)

    def initial_weights(self) -> dict[str, Tensor] | None:
        """init's weights for the policy; value_init's (or init's backbone and a seeded score head)
        for the value model; None without init (both as new_model draws them)."""
        policy = super().initial_weights()
        if policy is None:
            if self.value_init is not None:
                raise ValueError("value_init is set but init is not: the policy starts from the chat model")
            return None
        if self.value_init is None:
            value = {f"backbone.{k}": v for k, v in policy.items() if k != "output.weight"}
            value["score.weight"] = initial_score_weight(self.model_shape.dim, self.seed)
        else:
            reward_model = load_reward_hf(base_model_folder(self.value_init))
            if architecture(reward_model.config) != architecture(self.model_shape):
                raise ValueError(f"{self.value_init}: the reward model's shape {reward_model.config} is not the "
                                 f"policy's {self.model_name} ({self.model_shape})")
            value = reward_model.state_dict()
        return {**{f"policy.{k}": v for k, v in policy.items()}, **{f"value.{k}": v for k, v in value.items()}}

    def trained_parameters(self) -> int:
        """The policy's and the value model's (no vocabulary head, a score head): one optimizer over both."""
        shape = self.model_shape
        return 2 * shape.n_params - shape.vocab_size * shape.dim + shape.dim

    def flops_per_token(self) -> int:
        """The policy's training FLOPs and the value model's (no vocabulary head, a score head)."""
        shape = self.model_shape
        policy = shape.flops_per_token(self.seq_len)
        return 2 * policy - 6 * shape.vocab_size * shape.dim + 6 * shape.dim

    def save_hf(self, model: PolicyAndValue, folder: str | Path, **options: Any) -> Path:
        """The policy as a Hugging Face folder (what the next iteration samples from), the value
        model as a reward model folder under value/ (what scores its values)."""
        folder = save_hf(model.policy, folder, **options)
        save_reward_hf(model.value, folder / VALUE_EXPORT, pad_token_id=HF_UNK_ID, **options)
        return folder


def debug_run(**overrides: Any) -> PPOConfig:
    """The `debug` size from `make demo`'s chat and reward models, on CPUs: 32 samples an iteration
    in mini-batches of 8 (4 steps), the debug size's lr, beta 0.05 so that the KL term matters
    within a few iterations."""
    settings: dict[str, Any] = dict(
        run_name="ppo-debug", model="debug", data=f"{default_data_root()}/demo/ppo-rollouts",
        init=f"{default_data_root()}/demo/runs/demo-sft", value_init=f"{default_data_root()}/demo/runs/demo-reward",
        iterations=4, batch_samples=32, mini_batch_samples=8, seq_len=255, micro_batch_rows=4, kl_beta=0.05,
        max_mean_length=200, optimizer={"lr": 1e-5}, scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    return PPOConfig.model_validate(settings | overrides)


def llama2_7b_chat_run(**overrides: Any) -> PPOConfig:
    """Llama 2-Chat 7B's PPO by the paper (RECIPE.md): AdamW (pretraining's betas, eps, weight
    decay), constant lr 1e-6, 512 samples an iteration, 64 a step, clip 0.2, beta 0.01, 200
    iterations; 8 GPU workers with FSDP2 and bf16 autocast, sequences up to 4096 tokens."""
    settings: dict[str, Any] = dict(
        run_name="llama2-7b-chat-ppo", model="llama2-7b", data=f"{default_data_root()}/ppo-rollouts",
        init=f"{default_data_root()}/runs/llama2-7b-chat-sft", value_init=f"{default_data_root()}/runs/llama2-7b-reward-helpful",
        iterations=200, batch_samples=512, mini_batch_samples=64, seq_len=4096, micro_batch_rows=2, kl_beta=0.01,
        parallelism={"activation_checkpointing": "all", "mixed_precision": "bf16"},
        scaling={"num_workers": 8, "use_gpu": True, "cpus_per_worker": 8, "gpu_memory_gib": 80},
    )
    return PPOConfig.model_validate(settings | overrides)


PRESETS = {"debug": debug_run, "llama2-7b-chat": llama2_7b_chat_run}
