"""The models a folder holds: a run's checkpoints read from the training files give the weights
the run trained (any world size wrote them), its export is its last step; folders that cannot be
evaluated are refused by their path before any model is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modeling.checkpoints import save_hf, save_meta
from modeling.model_folders import folder_checkpoints
from modeling.pretrain import PretrainConfig
from modeling.ray_job import HF_EXPORT, METRICS_FILE
from modeling.train import Trainer
from tasks.tokenizer import train_tokenizer
from tests.modeling.helpers import random_model, tiny_config, write_token_stage

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([f"the {n} cats sat on {n + 1} mats" for n in range(200)], folder, vocab_size=400,
                    hard_vocab_limit=False)
    return folder / "tokenizer.model"


def test_a_runs_checkpoints_hold_the_weights_it_trained_and_its_export_the_last(tmp_path, tokenizer_file):
    rows = np.stack([(np.arange(17) * (1 + i % 3)) % 96 for i in range(32)])
    stage = write_token_stage(tmp_path / "tokens", rows, [[0]] * 32, 96)
    config = PretrainConfig(run_name="run", output=str(tmp_path / "runs"), data=stage, steps=4, seq_len=16,
                            model=tiny_config(vocab_size=400), global_batch_tokens=64, micro_batch_rows=4,
                            optimizer={"lr": 1e-2}, schedule={"warmup_steps": 0},
                            checkpoint={"interval_steps": 2, "keep_last": 2})
    trainer = Trainer(config)
    trainer.train(until=2)
    at_step_2 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    trainer.export_hf(config.run_dir / HF_EXPORT, tokenizer_files=[tokenizer_file])
    # As the Ray job logs them: a step's tokens are steps x global_batch_tokens.
    (config.run_dir / METRICS_FILE).write_text("".join(json.dumps({"step": s, "loss": 1.0, "tokens": 64 * s}) + "\n"
                                                       for s in range(1, 5)))

    first, last = folder_checkpoints(str(config.run_dir), every_checkpoint=True)
    assert (first.label, first.step, first.tokens, last.step, last.tokens) == ("run step 2", 2, 128, 4, 256)
    model, tokenizer = first.load()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in at_step_2.items())
    assert tokenizer.vocab_size <= 400
    (export,) = folder_checkpoints(str(config.run_dir), label="final")
    assert (export.label, export.weights, export.step, export.tokens) == ("final", config.run_dir / HF_EXPORT, 4, 256)
    assert all(torch.equal(a, b) for a, b in zip(export.load()[0].state_dict().values(),
                                                 last.load()[0].state_dict().values()))


def test_folders_that_cannot_be_evaluated_are_refused_by_their_path(tmp_path, tokenizer_file):
    model = random_model(tiny_config(vocab_size=400))
    bare = save_hf(model, tmp_path / "bare")
    with pytest.raises(FileNotFoundError, match=f"{bare}/tokenizer.model: no tokenizer"):
        folder_checkpoints(str(bare))
    assert folder_checkpoints(str(bare), tokenizer=str(tokenizer_file))[0].label == "bare"
    reward = save_hf(model, tmp_path / "reward", tokenizer_files=[tokenizer_file],
                     config_updates={"architectures": ["LlamaForSequenceClassification"]})
    with pytest.raises(ValueError, match=f"{reward}: a LlamaForSequenceClassification, not a LlamaForCausalLM"):
        folder_checkpoints(str(reward))
    meta = save_meta(model, tmp_path / "meta")
    with pytest.raises(ValueError, match=f"{meta}: a Meta checkpoint does not record its context length"):
        folder_checkpoints(str(meta), tokenizer=str(tokenizer_file))
    (checkpoint,) = folder_checkpoints(str(meta), tokenizer=str(tokenizer_file), max_seq_len=32)
    assert checkpoint.load()[0].config.max_seq_len == 32
    (tmp_path / "run" / HF_EXPORT).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'run'}: neither a model folder"):
        folder_checkpoints(str(tmp_path / "run"))
    save_hf(model, tmp_path / "run" / HF_EXPORT, tokenizer_files=[tokenizer_file])
    with pytest.raises(FileNotFoundError, match="the run kept no checkpoints"):
        folder_checkpoints(str(tmp_path / "run"), every_checkpoint=True)
    with pytest.raises(ValueError, match="from local folders"):
        folder_checkpoints("s3://bucket/runs/demo")
