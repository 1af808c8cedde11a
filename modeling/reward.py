"""Reward models by Llama 2 (section 3.2.2): the chat model's backbone with a scalar score head,
trained to rank the chosen answer of each comparison above the rejected one.

`RewardModel` is `Llama` without its next-token head and a `score` Linear(D, 1) read at the last
token of each answer. That token's index always comes with the batch: with left padding, right
padding or a pad id equal to EOS (Llama 2 has no pad token; our rows pad with EOS, the id every
answer ends with) an index inferred from the pad id reads the wrong token.

The loss of a pair is `-log sigmoid(r_chosen - r_rejected - m(rating))` with Llama 2's small or
large margin table (RECIPE.md; `tasks.preferences.records.MARGINS`) or none. An unrated pair
(Anthropic HH's) gets margin 0 in every table, the table's value for the least confident ratings:
the plain ranking loss, never a margin it was not annotated with. Scores and margins are one
value per pair ([B]) and `ranking_losses` refuses anything else: a [B, 1] - [B] broadcast would
give B x B losses mixing every pair with every other.

`PairRows` is the objective: rows of a pair stage (`tasks.reward_tokens`: several pairs a row,
each chosen then rejected, the row's labels their ratings) with the document mask always on and
positions restarting at each side, so each side is scored exactly as alone; its loss is the mean
over the micro batch's pairs, and comes with their accuracy (pairs ranked right) and mean score
gap. `RewardConfig` starts from the SFT model (`init`), the score head drawn small from the run's
seed. `save_reward_hf` exports the model as transformers' `LlamaForSequenceClassification`.
Presets: `debug` (2 CPUs: 32 rows a step) and Llama 2 7B/13B/70B by the paper (one epoch, lr 1e-5,
5e-6 for 70B, cosine to 10%, warmup 3% of steps and at least 5, 512 rows a step: see RewardConfig).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from modeling.checkpoints import config_from_hf, from_hf_state_dict, read_hf_weights, save_hf
from modeling.configs import ModelConfig
from modeling.llama import Llama
from modeling.objectives import LossWithCounts, PackedRows, example_positions, read_token_manifest
from modeling.sft import FineTuningConfig, base_model_folder
from tasks.preferences.records import RATINGS, margin
from tasks.reward_tokens import UNRATED, answer_ends
from tasks.settings import default_data_root
from tasks.tokenizer import Tokenizer
from tasks.token_reader import PackedRow, TokenReader, document_ids

MarginTable = Literal["none", "small", "large"]
HF_UNK_ID = 0  # LLaMA's SentencePiece <unk>: no encoding with byte fallback ends with it (see save_reward_hf)


def margin_table(table: MarginTable) -> Tensor:
    """m(rating) indexed by a pair row's label: RATINGS' codes, then UNRATED's (always 0)."""
    values = [0.0 if table == "none" else margin(rating, large=table == "large") for rating in RATINGS]
    values.insert(UNRATED, margin(None))
    return torch.tensor(values, dtype=torch.float32)


def initial_score_weight(dim: int, seed: int) -> Tensor:
    """(1, D) from N(0, 1/(D + 1)), as Ziegler et al. 2019 start their reward head: rewards of unit
    scale at the start, the margins' scale, drawn from a generator of its own so that it depends
    only on the seed (not on what drew from the global RNG before)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, dim, generator=generator) * (dim + 1) ** -0.5


class RewardModel(nn.Module):
    def __init__(self, config: ModelConfig, score_seed: int | None = 0):
        """score_seed None: the score head is left as nn.Linear draws it (for weights loaded next)."""
        super().__init__()
        self.backbone = Llama(config, next_token_head=False)
        self.score = nn.Linear(config.dim, 1, bias=False)
        if score_seed is not None:
            with torch.no_grad():
                self.score.weight.copy_(initial_score_weight(config.dim, score_seed))

    @property
    def config(self) -> ModelConfig:
        return self.backbone.config

    @property
    def layers(self) -> nn.ModuleList:
        """The backbone's blocks, which modeling.parallelize checkpoints, compiles and shards."""
        return self.backbone.layers

    def forward(self, tokens: Tensor, last_token: Tensor, *, row: Tensor | None = None, doc_ids: Tensor | None = None,
                positions: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        """The reward of each answer ending at `last_token`, an index into the (B, T) rows: of row
        `row` (broadcast against `last_token`, e.g. (P, 1) row numbers for (P, 2) pairs of ends), or,
        without it, of the row of `last_token`'s first dimension ((B,) or (B, K)). Rewards have the
        broadcast shape. doc_ids, positions, attn_mask: as Llama's."""
        B, T = tokens.shape
        if row is None:
            if last_token.ndim == 0 or last_token.shape[0] != B:
                raise ValueError(f"without row, last_token's first dimension is the row: {B}, not "
                                 f"{tuple(last_token.shape)}")
            row = torch.arange(B, device=last_token.device).reshape(B, *[1] * (last_token.ndim - 1))
        for name, index, size in (("last_token", last_token, T), ("row", row, B)):
            if index.numel() and not (0 <= int(index.min()) and int(index.max()) < size):
                raise ValueError(f"{name} indices must lie in 0..{size - 1}, got {index.min()}..{index.max()}")
        h = self.backbone.final_hidden_states(tokens, doc_ids=doc_ids, positions=positions, attn_mask=attn_mask)
        return self.score(h[row, last_token]).squeeze(-1)


def ranking_losses(chosen: Tensor, rejected: Tensor, margins: Tensor) -> Tensor:
    """-log sigmoid(r_chosen - r_rejected - m) per pair: three (B,) tensors in, (B,) out."""
    if not (chosen.ndim == 1 and chosen.shape == rejected.shape == margins.shape):
        raise ValueError(f"chosen, rejected and margins must each be one value per pair, (B,), got "
                         f"{tuple(chosen.shape)}, {tuple(rejected.shape)}, {tuple(margins.shape)}")
    return -F.logsigmoid(chosen.float() - rejected.float() - margins.float())


def score_sequences(model: RewardModel, sequences: Sequence[Sequence[int]], *, pad_id: int,
                    padding: Literal["right", "left"] = "right") -> Tensor:
    """(B,) rewards of token sequences (each ending with its answer's last token) padded into one
    batch; the index read is each sequence's own length, whatever `pad_id` is."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("score_sequences needs at least one sequence, and every sequence at least one token")
    device = model.score.weight.device
    lengths = torch.tensor([len(s) for s in sequences], device=device)
    B, T = len(sequences), int(lengths.max())
    tokens = torch.full((B, T), pad_id, dtype=torch.long, device=device)
    for row, sequence in enumerate(sequences):
        ids = torch.tensor(list(sequence), dtype=torch.long, device=device)
        if padding == "right":
            tokens[row, :len(sequence)] = ids
        else:
            tokens[row, T - len(sequence):] = ids
    if padding == "right":
        # Causal attention never lets a real token see the padding after it.
        return model(tokens, lengths - 1)
    n_pad = T - lengths
    column = torch.arange(T, device=device)
    real_key = column[None, :] >= n_pad[:, None]  # (B, T)
    # A padding query may see itself, so no row of scores is all -inf (softmax would give NaN).
    mask = ((column[None, :] <= column[:, None])[None] & real_key[:, None, :]) | torch.eye(T, dtype=torch.bool,
                                                                                           device=device)
    positions = (column[None, :] - n_pad[:, None]).clamp(min=0)
    return model(tokens, torch.full((B,), T - 1, device=device), positions=positions, attn_mask=mask[:, None])


# ---------------------------------------------------------------------------------- the objective


@dataclass
class PairBatch:
    """One micro batch of pair rows, on the training device, and its P pairs flattened."""

    tokens: Tensor  # (B, T) the whole rows: each pair's chosen then rejected side, the row's padding
    doc_ids: Tensor  # (B, T) side or padding index per token
    positions: Tensor  # (B, T) rotary positions, restarting at each side
    pair_rows: Tensor  # (P,) the row each pair is in
    answer_ends: Tensor  # (P, 2) offsets in its row of each pair's chosen and rejected side's last tokens
    margins: Tensor  # (P,) m(rating) of each pair

    @property
    def loss_tokens(self) -> int:
        """The loss is a mean over pairs: the core weights micro batches by their pairs."""
        return len(self.pair_rows)

    def rewards(self, model: nn.Module) -> tuple[Tensor, Tensor]:
        """(P,) rewards of the chosen and of the rejected sides, in fp32."""
        rewards = model(self.tokens, self.answer_ends, row=self.pair_rows[:, None], doc_ids=self.doc_ids,
                        positions=self.positions).float()
        return rewards[:, 0], rewards[:, 1]


def batch_of_pairs(rows: Sequence[PackedRow], device: torch.device, margins: Tensor) -> PairBatch:
    row_tokens = len(rows[0].tokens)
    tokens = torch.from_numpy(np.stack([r.tokens for r in rows]).astype(np.int64))
    ids = np.stack([document_ids(r.doc_starts, row_tokens) for r in rows])
    ends = [answer_ends(r.doc_starts, row_tokens) for r in rows]
    for row, row_ends in zip(rows, ends):
        if len(row.labels) != len(row_ends):
            raise ValueError(f"a pair row of {len(row_ends)} pairs has {len(row.labels)} labels")
    pair_rows = torch.tensor([n for n, row_ends in enumerate(ends) for _ in row_ends], dtype=torch.int64)
    flat_ends = torch.tensor([pair for row_ends in ends for pair in row_ends], dtype=torch.int64)
    codes = torch.from_numpy(np.concatenate([r.labels for r in rows]).astype(np.int64))
    return PairBatch(tokens.to(device), torch.from_numpy(ids).to(device),
                     torch.from_numpy(example_positions(ids)).to(device), pair_rows.to(device), flat_ends.to(device),
                     margins[codes].to(device))


class PairSource:
    """Micro batches of a rank's pair rows; its state is the reader's position."""

    def __init__(self, reader: TokenReader, device: torch.device, margins: Tensor) -> None:
        self.reader, self.device, self.margins = reader, device, margins
        self._rows = iter(reader)

    def state(self) -> dict[str, Any]:
        return self.reader.state().as_dict()

    def next_batch(self, rows: int) -> PairBatch:
        return batch_of_pairs([next(self._rows) for _ in range(rows)], self.device, self.margins)


class PairRows(PackedRows):
    """The margin ranking loss over the rows of a pair stage (`tasks.reward_tokens`). The document
    mask is always on, whatever parallelism.document_masking says: a side must not see the other."""

    def __init__(self, config: RewardConfig) -> None:
        super().__init__(config, answers_only=False)
        self.margins = margin_table(config.margins)

    def check_data(self) -> dict[str, Any]:
        manifest = super().check_data()
        if not manifest.get("labels"):
            raise ValueError(f"{self.config.data}: a token stage without per-pair labels is not a stage of packed "
                             f"comparison pairs; pack one with tasks.reward_tokens")
        return manifest

    def open(self, rank: int, world_size: int, device: torch.device, position: dict[str, Any] | None = None,
             validation: bool = False) -> PairSource:
        return PairSource(self.reader(rank, world_size, position, validation), device, self.margins)

    def loss(self, model: nn.Module, batch: PairBatch) -> LossWithCounts:
        chosen, rejected = batch.rewards(model)
        losses = ranking_losses(chosen, rejected, batch.margins)
        counts = {"accuracy": (chosen > rejected).sum(), "reward_gap": (chosen - rejected).detach().sum()}
        return LossWithCounts(losses.mean(), counts)


# ---------------------------------------------------------------------------------- the run


class RewardConfig(FineTuningConfig):
    """A reward model's run. A step is `global_batch_rows` rows, as every run's step; with several
    pairs packed a row, `pairs_per_step` (Llama 2: 512) gives the step in pairs instead: resolved
    against the packed stage (`resolve_pairs_per_step`, which the reward flow calls) to the rows
    that hold that many pairs on average, a multiple of the workers' micro batches. The metrics'
    `loss_tokens` is each step's count of pairs (the loss unit)."""

    kind: ClassVar[str] = "reward"

    data: str = Field(default_factory=lambda: f"{default_data_root()}/reward-tokens",
                      description="Token stage of comparison pairs (tasks.reward_tokens)")
    margins: MarginTable = Field("small", description="Llama 2's margin table by rating (small or large) or none. "
                                                      "Small by default: the paper finds the large one better on "
                                                      "distinct pairs but worse on similar ones")
    hf_pad_token_id: int = Field(HF_UNK_ID, ge=0, description="pad_token_id of the HF export, which transformers "
                                                              "reads the score before; never EOS (see save_reward_hf)")
    pairs_per_step: int | None = Field(None, ge=1, description="The step's pairs on average (Llama 2: 512), "
                                                               "resolved to global_batch_tokens against the packed "
                                                               "stage; None: global_batch_tokens as given")

    @model_validator(mode="before")
    @classmethod
    def _placeholder_batch(cls, values: Any) -> Any:
        """With pairs_per_step the step's rows come from the packed stage; until then (or where a
        seq_len change left global_batch_tokens off its rows) the batch is one pair a row."""
        if isinstance(values, dict) and values.get("pairs_per_step") is not None:
            seq_len = values.get("seq_len", cls.model_fields["seq_len"].default)
            tokens = values.get("global_batch_tokens")
            if tokens is None or tokens % seq_len:
                values = {**values, "global_batch_tokens": values["pairs_per_step"] * seq_len}
        return values

    def rows_for_pairs(self, manifest: dict[str, Any]) -> int:
        """Rows a step that hold `pairs_per_step` pairs at the stage's mean pairs per row."""
        pairs = sum(source["pairs_packed"] for source in manifest["sources"].values())
        if not pairs:
            raise ValueError(f"{self.data}: the pair stage holds no pairs")
        unit = self.micro_batch_rows * self.scaling.num_workers
        return unit * max(1, round(self.pairs_per_step * manifest["rows"] / pairs / unit))

    def resolve_pairs_per_step(self) -> RewardConfig:
        """This run with `global_batch_tokens` set to the rows of `pairs_per_step` pairs (itself without)."""
        if self.pairs_per_step is None:
            return self
        rows = self.rows_for_pairs(read_token_manifest(self.data))
        return type(self).model_validate(self.model_dump() | {"global_batch_tokens": rows * self.seq_len})

    def check_data(self) -> dict[str, Any]:
        manifest = super().check_data()
        if self.pairs_per_step is not None and self.global_batch_rows != self.rows_for_pairs(manifest):
            rows = self.rows_for_pairs(manifest)
            raise ValueError(f"pairs_per_step {self.pairs_per_step}: {self.data}'s pairs make {rows} rows a step, "
                             f"the run has {self.global_batch_rows}: call resolve_pairs_per_step() (the reward flow "
                             f"does) or set global_batch_tokens to {rows * self.seq_len}")
        return manifest

    def objective(self) -> PairRows:
        return PairRows(self)

    def new_model(self) -> RewardModel:
        return RewardModel(self.model_shape, score_seed=self.seed)

    def initial_weights(self) -> dict[str, Tensor] | None:
        """The SFT model's weights under the backbone (its next-token head left out) and the score head
        drawn from the run's seed; None without `init`."""
        base = super().initial_weights()
        if base is None:
            return None
        weights = {f"backbone.{name}": tensor for name, tensor in base.items() if name != "output.weight"}
        weights["score.weight"] = initial_score_weight(self.model_shape.dim, self.seed)
        return weights

    def flops_per_token(self) -> int:
        """The next-token head's matmul (V x D) is not computed; the score head's (1 x D) is."""
        shape = self.model_shape
        return super().flops_per_token() - 6 * shape.vocab_size * shape.dim + 6 * shape.dim

    def save_hf(self, model: RewardModel, folder: str | Path, **options: Any) -> Path:
        return save_reward_hf(model, folder, pad_token_id=self.hf_pad_token_id, **options)


def save_reward_hf(model: RewardModel, folder: str | Path, *, pad_token_id: int = HF_UNK_ID, **options: Any) -> Path:
    """A `LlamaForSequenceClassification` folder (num_labels 1) that gives our rewards.

    transformers reads the score at each row's last token that is not `pad_token_id`, so the pad
    id must be one no sequence ends with: with EOS (what our rows pad with, and how every Llama 2
    chat answer ends) it would read the token before the answer's EOS instead of the EOS we train
    on. LLaMA's <unk> (0) never ends an encoding. options: `modeling.checkpoints.save_hf`'s.
    """
    updates = {"architectures": ["LlamaForSequenceClassification"], "num_labels": 1,
               "id2label": {"0": "reward"}, "label2id": {"reward": 0}, "pad_token_id": pad_token_id}
    folder = save_hf(model.backbone, folder, head_tensors={"score.weight": model.score.weight},
                     config_updates=updates, **options)
    set_pad_token(folder, pad_token_id)
    return folder


def set_pad_token(folder: Path, pad_token_id: int) -> None:
    """The tokenizer export's pad token, the config's pad id: a tokenizer without one cannot pad a
    batch (transformers' pipelines, TRL), and one padding with EOS would move the score read."""
    if not (folder / "tokenizer.model").is_file():
        return
    pad = Tokenizer.load(folder / "tokenizer.model").piece(pad_token_id)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            path.write_text(json.dumps(json.loads(path.read_text()) | {"pad_token": pad}, indent=2) + "\n")


def reward_model_folder(folder: str | Path, name: str) -> Path:
    """The export of reward model `name` (a `save_reward_hf` folder, or a reward run holding one in hf/),
    checked to be a reward model with a tokenizer to read answers with."""
    export = base_model_folder(str(folder))
    config_file = export / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") if config_file.is_file() else None
    if architectures != ["LlamaForSequenceClassification"]:
        raise ValueError(f"reward_models.{name}: {folder} is not a reward model export (architectures "
                         f"{architectures})")
    if not (export / "tokenizer.model").is_file():
        raise FileNotFoundError(f"reward_models.{name}: {export} has no tokenizer.model to read answers with")
    return export


def load_reward_hf(folder: str | Path, *, dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu") -> RewardModel:
    """A reward model from a `LlamaForSequenceClassification` folder with one label (`save_reward_hf`'s,
    or one trained elsewhere on a LLaMA backbone)."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("architectures") != ["LlamaForSequenceClassification"] or raw.get("num_labels") != 1:
        raise ValueError(f"{folder}: not a reward model (LlamaForSequenceClassification with num_labels 1): its "
                         f"config.json says architectures {raw.get('architectures')}, num_labels {raw.get('num_labels')}")
    config = config_from_hf(raw, source=folder / "config.json")
    tensors = dict(read_hf_weights(folder))
    score = tensors.pop("score.weight", None)
    if score is None or tuple(score.shape) != (1, config.dim):
        raise ValueError(f"{folder}: no score.weight of shape (1, {config.dim}) among its weights")
    weights = {f"backbone.{name}": tensor.clone() for name, tensor in from_hf_state_dict(tensors.items(), config)}
    with torch.device("meta"):
        model = RewardModel(config, score_seed=None)
    try:
        model.load_state_dict(weights | {"score.weight": score.clone()}, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{folder}: weights do not match the reward model's config: {error}") from None
    return model.to(device=device, dtype=dtype)


def debug_run(**overrides: Any) -> RewardConfig:
    """The `debug` size from `make demo`'s chat model on what it packs (rows of 256 tokens: the demo
    tokenizer's small vocabulary makes long sides), in a minute on 2 CPU workers:
    the paper's schedule (cosine to 10% after a warmup of 3% of the steps, at least 5) and margins,
    but 32 pairs a step for 2 epochs at the debug size's lr, so that a demo's few hundred
    comparisons make enough steps to learn from (the paper's 512 pairs, one epoch, would be 1 step)."""
    settings: dict[str, Any] = dict(
        run_name="reward-debug", model="debug", data=f"{default_data_root()}/demo/reward-tokens",
        init=f"{default_data_root()}/demo/runs/demo-sft", epochs=2, seq_len=255, pairs_per_step=32, micro_batch_rows=4,
        optimizer={"lr": 1e-3}, schedule={"warmup_steps": 5, "warmup_share": 0.03},
        checkpoint={"interval_steps": 10, "keep_last": 2}, scaling={"num_workers": 2, "cpus_per_worker": 0.5},
    )
    return RewardConfig.model_validate(settings | overrides)


def _llama2_run(size: str, lr: float, workers: int, micro_batch_rows: int, **overrides: Any) -> RewardConfig:
    """A Llama 2 reward model by the paper, from the chat model of the same size. Rows of 4096 tokens,
    the context the model was trained on, hold any pair whose two sides fit it together; 512 pairs a
    step, in the rows that hold them (see RewardConfig; 512 rows until resolved)."""
    settings: dict[str, Any] = dict(
        run_name=f"llama2-{size}-reward", model=f"llama2-{size}", init=f"{default_data_root()}/runs/llama2-{size}-chat-sft",
        epochs=1, seq_len=4095, pairs_per_step=512, micro_batch_rows=micro_batch_rows,
        optimizer={"lr": lr}, schedule={"warmup_steps": 5, "warmup_share": 0.03},
        parallelism={"activation_checkpointing": "all", "mixed_precision": "bf16"},
        checkpoint={"interval_steps": 100, "keep_last": 2},
        scaling={"num_workers": workers, "use_gpu": True, "cpus_per_worker": 8, "gpu_memory_gib": 80},
    )
    return RewardConfig.model_validate(settings | overrides)


def llama2_7b_reward_run(**overrides: Any) -> RewardConfig:
    return _llama2_run("7b", 1e-5, workers=8, micro_batch_rows=2, **overrides)


def llama2_13b_reward_run(**overrides: Any) -> RewardConfig:
    return _llama2_run("13b", 1e-5, workers=8, micro_batch_rows=1, **overrides)


def llama2_70b_reward_run(**overrides: Any) -> RewardConfig:
    return _llama2_run("70b", 5e-6, workers=32, micro_batch_rows=1, **overrides)


PRESETS = {"debug": debug_run, "llama2-7b-reward": llama2_7b_reward_run, "llama2-13b-reward": llama2_13b_reward_run,
           "llama2-70b-reward": llama2_70b_reward_run}
