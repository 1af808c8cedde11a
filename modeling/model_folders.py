"""The models a folder holds, for evaluation, and how many training tokens each had seen.

A folder is one of
- a Hugging Face folder (config.json + safetensors, `modeling.checkpoints.save_hf`) or a Meta
  folder (params.json + consolidated.NN.pth): one model, with no training record;
- a run folder (`modeling.ray_job`): its final weights are its `hf/` export; the checkpoints it
  kept are `step-NNNNNNNN` folders (`modeling.checkpoint_folders`), read into the shape the
  export's config.json gives. The run's metrics log says how many tokens it had trained on at each
  step (`tokens`: the Trainer counts steps x global_batch_tokens); the export's are the last step's.

The tokenizer is the folder's (a run's: its export's) tokenizer.model unless one is given.
Everything is checked when the checkpoints are listed, so a bad folder is refused, by its path,
before any model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from modeling.checkpoint_folders import DCP_METADATA, checkpoint_path, checkpoint_steps, load_model_weights, sha256_file
from modeling.checkpoints import config_from_hf, load_hf, load_meta
from modeling.llama import Llama
from modeling.ray_job import HF_EXPORT, read_metrics
from modeling.sft import base_model_folder
from tasks.tokenizer import MODEL_FILE, Tokenizer

HF_CONFIG = "config.json"
META_PARAMS = "params.json"
CAUSAL_LM = "LlamaForCausalLM"


@dataclass(frozen=True)
class ModelCheckpoint:
    """One model to evaluate: where its weights are and what is known of its training."""

    label: str  # its name in reports: the run or folder name, with the step for a run's checkpoints
    weights: Path  # a Hugging Face or Meta folder, or a checkpoint's step-NNNNNNNN folder
    tokenizer: Path
    run: str | None = None  # the run it comes from
    step: int | None = None
    tokens: int | None = None  # training tokens seen, when the run's metrics log says
    shape: Path | None = None  # a checkpoint's: the run export's config.json
    max_seq_len: int | None = None  # a Meta folder's (its files do not hold it)

    def load(self, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> tuple[Llama, Tokenizer]:
        """The model in eval mode, and its tokenizer."""
        if self.shape is None:
            model = load_model(self.weights, max_seq_len=self.max_seq_len, dtype=dtype, device=device)
        else:
            model = Llama(config_from_hf(json.loads(self.shape.read_text()), source=self.shape))
            load_model_weights(self.weights, model)
            model = model.to(device=device, dtype=dtype).eval()
        tokenizer = Tokenizer.load(self.tokenizer)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"{self.tokenizer}: {tokenizer.vocab_size} tokens do not fit the vocabulary of "
                             f"{self.weights} ({model.config.vocab_size})")
        return model, tokenizer


def load_model(checkpoint: str | Path, *, max_seq_len: int | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device = "cpu") -> Llama:
    """A Hugging Face, Meta or run folder's model (a run's: its hf/ export), in eval mode."""
    folder = base_model_folder(str(checkpoint))
    if (folder / META_PARAMS).is_file():
        if max_seq_len is None:
            raise ValueError(f"{folder}: a Meta checkpoint does not record its context length; pass max_seq_len "
                             f"(2048 for LLaMA 1, 4096 for Llama 2)")
        model = load_meta(folder, max_seq_len=max_seq_len, dtype=dtype, device=device)
    else:
        model = load_hf(folder, dtype=dtype, device=device)
        if max_seq_len is not None and max_seq_len != model.config.max_seq_len:
            raise ValueError(f"{folder}: its config.json says max_seq_len {model.config.max_seq_len}, "
                             f"not {max_seq_len}")
    return model.eval()


def model_digest(folder: str | Path) -> str:
    """sha256 over a model folder's files (names and bytes): what a stage made with the model is
    fingerprinted with, so it is redone when the weights change, wherever the folder moved."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no model files there")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()} {sha256_file(path)}\n".encode())
    return digest.hexdigest()


def folder_checkpoints(path: str, *, every_checkpoint: bool = False, label: str | None = None,
                       tokenizer: str | None = None, max_seq_len: int | None = None) -> list[ModelCheckpoint]:
    """The models `path` holds: a model folder's one model; a run's export, or with
    `every_checkpoint` each checkpoint it kept (oldest first). Raises, naming the path, for a
    folder that is none of these or lacks what evaluating it needs."""
    if "://" in path:
        raise ValueError(f"{path}: models are evaluated from local folders; copy it here first")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (a run folder, a Hugging Face or a Meta checkpoint folder)")
    if (folder / HF_CONFIG).is_file() or (folder / META_PARAMS).is_file():
        _check_language_model(folder)
        if (folder / META_PARAMS).is_file() and max_seq_len is None:
            raise ValueError(f"{folder}: a Meta checkpoint does not record its context length; give max_seq_len "
                             f"(2048 for LLaMA 1, 4096 for Llama 2)")
        return [ModelCheckpoint(label or folder.name, folder, _tokenizer_file(folder, tokenizer),
                                max_seq_len=max_seq_len)]
    export = folder / HF_EXPORT
    if not (export / HF_CONFIG).is_file():
        raise FileNotFoundError(f"{folder}: neither a model folder ({HF_CONFIG} or {META_PARAMS}) nor a finished run "
                                f"(no {HF_EXPORT}/{HF_CONFIG}, which also gives the shape of its checkpoints)")
    _check_language_model(export)
    run = label or folder.name
    tokens_at = {e["step"]: e["tokens"] for e in read_metrics(folder) if "event" not in e and "tokens" in e}
    tokenizer_file = _tokenizer_file(export, tokenizer)
    if not every_checkpoint:
        last = max(tokens_at, default=None)
        return [ModelCheckpoint(run, export, tokenizer_file, run=run, step=last, tokens=tokens_at.get(last))]
    steps = checkpoint_steps(folder)
    if not steps:
        raise FileNotFoundError(f"{folder}: the run kept no checkpoints (step-NNNNNNNN folders)")
    checkpoints = []
    for step in steps:
        weights = checkpoint_path(folder, step)
        if not (weights / DCP_METADATA).is_file():
            raise FileNotFoundError(f"{weights}: no {DCP_METADATA}: not a complete checkpoint")
        checkpoints.append(ModelCheckpoint(f"{run} step {step}", weights, tokenizer_file, run=run, step=step,
                                           tokens=tokens_at.get(step), shape=export / HF_CONFIG))
    return checkpoints


def _check_language_model(folder: Path) -> None:
    """Only next-token models answer benchmarks: a reward model's export, say, is refused."""
    config_file = folder / HF_CONFIG
    if not config_file.is_file():
        return
    architectures = json.loads(config_file.read_text()).get("architectures") or [CAUSAL_LM]
    if CAUSAL_LM not in architectures:
        raise ValueError(f"{folder}: a {', '.join(architectures)}, not a {CAUSAL_LM}: it does not predict tokens")


def _tokenizer_file(folder: Path, given: str | None) -> Path:
    tokenizer = Path(given) if given else folder / MODEL_FILE
    if not tokenizer.is_file():
        raise FileNotFoundError(f"{tokenizer}: no tokenizer; give the tokenizer.model the model was trained with")
    return tokenizer
