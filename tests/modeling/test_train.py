"""Pretraining core: optimizer groups, schedule, config checks, learning, exact resume, retention,
activation-checkpointing parity, DDP (gloo, 2 processes) parity, HF export."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from modeling.checkpoints import load_hf
from modeling.llama import Llama
from modeling.optim import build_optimizer, cosine_schedule
from modeling.parallelize import apply_activation_checkpointing, apply_data_parallel, checkpointed_layers
from modeling.checkpoint_folders import checkpoint_steps
from modeling.pretrain import PretrainConfig
from modeling.train import Trainer
from tests.modeling.helpers import assert_equal_within, random_tokens, spawn_two_ranks, tiny_config, write_token_stage

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # DCP says it saves/loads in a single process when no process group is initialised: intended.
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]

SEQ_LEN = 16
VOCAB = 96


@pytest.fixture(scope="module")
def repeated_stage(tmp_path_factory) -> str:
    """24 rows, each a few 'documents' of a fixed counting pattern: easy to learn."""
    rows, starts = [], []
    for i in range(24):
        row = (np.arange(SEQ_LEN + 1) * 3 + i % 4) % VOCAB
        rows.append(row)
        starts.append([0, 5] if i % 2 else [0, 9])
    return write_token_stage(tmp_path_factory.mktemp("tokens") / "tokens", np.stack(rows), starts, VOCAB)


def train_config(data: str, run_dir: Path | None = None, **overrides) -> PretrainConfig:
    """A small run on `data` living in `run_dir` (a fresh folder when None: nothing to resume)."""
    run_dir = run_dir or Path(tempfile.mkdtemp(prefix="run-")) / "run"
    settings = dict(run_name=run_dir.name, output=str(run_dir.parent), data=data, seq_len=SEQ_LEN,
                    global_batch_tokens=4 * SEQ_LEN, micro_batch_rows=2, steps=8, schedule={"warmup_steps": 2},
                    model=tiny_config(vocab_size=VOCAB), optimizer={"lr": 3e-3}, seed=7, export_hf=False)
    for key, value in overrides.items():
        settings[key] = settings.get(key, {}) | value if isinstance(value, dict) else value
    return PretrainConfig.model_validate(settings)


# ------------------------------------------------------------------------------ optimizer and schedule


def test_cosine_schedule_warms_up_peaks_and_ends_at_ten_percent():
    lrs = [cosine_schedule(s, warmup_steps=4, total_steps=14, peak_lr=1.0) for s in range(16)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[4:13], lrs[5:14]))
    assert lrs[13] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    assert lrs[4 + 9 // 2] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))


def test_weight_decay_applies_to_matrices_only():
    model = Llama(tiny_config())
    decay, no_decay = build_optimizer(model, lr=1e-3).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    for name, parameter in model.named_parameters():
        assert (id(parameter) in decayed) == (parameter.ndim == 2), name
    assert id(model.tok_embeddings.weight) in decayed and id(model.norm.weight) not in decayed
    assert decay["betas"] == (0.9, 0.95) and decay["eps"] == 1e-5


# ------------------------------------------------------------------------------ config validation


@pytest.mark.parametrize(("overrides", "message"), [
    (dict(seq_len=128), "exceeds the model's max_seq_len"),
    (dict(global_batch_tokens=SEQ_LEN * 4 + 1), "not a whole number of rows"),
    (dict(micro_batch_rows=0), "micro_batch_rows\n  Input should be greater than or equal to 1"),
    (dict(schedule={"warmup_steps": 9}), "schedule.warmup_steps (9) exceeds the run's 8 steps"),
    (dict(model="no-such-size"), "unknown model size"),
    (dict(optimizer={"lr": None}), "optimizer.lr must be set for an explicit model shape"),
])
def test_config_rejects_bad_settings(overrides, message):
    with pytest.raises((ValueError, KeyError)) as error:
        train_config("unused", **overrides)
    assert message in str(error.value)


def test_global_batch_must_split_into_micro_batches_and_ranks():
    with pytest.raises(ValueError, match="not divisible by micro_batch_rows 4 x 1 workers"):
        train_config("unused", global_batch_tokens=6 * SEQ_LEN, micro_batch_rows=4)
    assert train_config("unused", global_batch_tokens=8 * SEQ_LEN).accumulation_steps(2) == 2


def test_trainer_rejects_a_stage_of_another_row_length(repeated_stage):
    with pytest.raises(ValueError, match="rows hold 17 tokens, so seq_len must be 16, not 8"):
        Trainer(train_config(repeated_stage, seq_len=8, global_batch_tokens=32))


# ------------------------------------------------------------------------------ training


def test_loss_decreases_on_a_repeated_pattern(repeated_stage):
    trainer = Trainer(train_config(repeated_stage, steps=12, optimizer={"lr": 1e-2}))
    history = trainer.train()
    losses = [m["loss"] for m in history]
    assert losses[-1] < 0.5 * losses[0]
    first = history[0]
    assert first["tokens"] == 4 * SEQ_LEN and first["grad_norm"] > 0 and first["mfu"] is None
    assert first["lr"] == pytest.approx(5e-3)


def test_mfu_uses_flops_per_token(repeated_stage):
    config = train_config(repeated_stage, scaling={"peak_flops_per_device": 1e12})
    metrics = Trainer(config).train_step()
    expected = metrics["tokens_per_second"] * config.model_shape.flops_per_token(SEQ_LEN) / 1e12
    assert metrics["mfu"] == pytest.approx(expected)


def test_resume_from_a_checkpoint_is_bitwise_exact(repeated_stage, tmp_path):
    # 24 rows and 4 per step: the 8 steps cross an epoch boundary of the reader.
    straight = Trainer(train_config(repeated_stage))
    straight_losses = [straight.train_step()["loss"] for _ in range(8)]

    first = Trainer(train_config(repeated_stage, tmp_path / "ckpt"))
    losses = [first.train_step()["loss"] for _ in range(4)]
    first.save()
    torch.manual_seed(12345)  # the restored RNG state must win over whatever came since
    resumed = Trainer(train_config(repeated_stage, tmp_path / "ckpt"))
    assert resumed.step == 4
    losses += [resumed.train_step()["loss"] for _ in range(4)]

    assert losses == straight_losses
    for (name, got), expected in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(got, expected), name
    for got, expected in zip(resumed.optimizer.state.values(), straight.optimizer.state.values()):
        assert torch.equal(got["exp_avg_sq"], expected["exp_avg_sq"])


def test_checkpoints_keep_the_last_n_and_export_to_hf(repeated_stage, tmp_path):
    folder = tmp_path / "ckpt"
    trainer = Trainer(train_config(repeated_stage, folder, steps=5,
                                   checkpoint={"interval_steps": 1, "keep_last": 2}))
    trainer.train()
    assert checkpoint_steps(folder) == [4, 5]
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000004", "step-00000005"]

    exported = load_hf(trainer.export_hf(tmp_path / "hf"))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(repeated_stage, tmp_path, caplog):
    folder = tmp_path / "ckpt"
    straight = Trainer(train_config(repeated_stage))
    straight_losses = [straight.train_step()["loss"] for _ in range(8)]
    first = Trainer(train_config(repeated_stage, folder, checkpoint={"interval_steps": 2}))
    first.train(until=4)
    assert checkpoint_steps(folder) == [2, 4]
    data_file = next((folder / "step-00000004").glob("__0_*.distcp"))
    data_file.write_bytes(data_file.read_bytes()[:-100] + bytes(100))  # same size, wrong bytes

    with caplog.at_level("WARNING", logger="llamaline.train"):
        resumed = Trainer(train_config(repeated_stage, folder))
    assert resumed.step == 2 and resumed.resumed_from == folder / "step-00000002"
    assert resumed.skipped_checkpoints == [(folder / "step-00000004", f"{data_file.name} does not match its sha256 (corrupt)")]
    assert "step-00000004 cannot be resumed from" in caplog.text
    assert [resumed.train_step()["loss"] for _ in range(6)] == straight_losses[2:]


def test_a_run_with_only_broken_checkpoints_stops_rather_than_start_over(repeated_stage, tmp_path):
    folder = tmp_path / "ckpt"
    Trainer(train_config(repeated_stage, folder, steps=2, schedule={"warmup_steps": 1})).train()
    (folder / "step-00000002" / "rank-00000.json").unlink()
    with pytest.raises(RuntimeError, match="none of the checkpoints .* can be resumed from: step-00000002: "
                                           "rank-00000.json is missing"):
        Trainer(train_config(repeated_stage, folder))


def test_held_out_shards_are_never_trained_on_and_give_a_validation_loss(tmp_path):
    rows = np.stack([(np.arange(SEQ_LEN + 1) + i) % VOCAB for i in range(32)])
    stage = write_token_stage(tmp_path / "tokens", rows, [[0]] * 32, VOCAB, shards=4)
    config = train_config(stage, validation={"holdout_shards": 1, "interval_steps": 2, "rows": 4}, steps=4)
    trainer = Trainer(config)
    history = trainer.train()
    rows_read = iter(Trainer(train_config(stage, validation={"holdout_shards": 1})).batches.reader)  # training rows
    seen = {int(next(rows_read).tokens[0]) for _ in range(24)}
    held_out = {int(r[0]) for r in rows[24:]}
    assert seen.isdisjoint(held_out) and len(seen) == 24
    assert [("validation_loss" in m) for m in history] == [False, True, False, True]
    assert trainer.validation_metrics() == trainer.validation_metrics()  # the same rows every time
    with pytest.raises(ValueError, match="holdout_shards \\(4\\) leaves none of its 4 shards"):
        Trainer(train_config(stage, validation={"holdout_shards": 4}))
    with pytest.raises(ValueError, match="validation.interval_steps is set but there is no validation set"):
        train_config(stage, validation={"interval_steps": 2})


def test_bf16_autocast_trains(repeated_stage):
    trainer = Trainer(train_config(repeated_stage, parallelism={"mixed_precision": "bf16"}, steps=12, optimizer={"lr": 1e-2}))
    losses = [trainer.train_step()["loss"] for _ in range(12)]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5
    assert trainer.model.output.weight.dtype == torch.float32  # master weights stay fp32


# ------------------------------------------------------------------------------ parallelism


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    config = tiny_config()
    tokens = random_tokens(2, 17, config.vocab_size)
    doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])

    def loss_and_grads(layers):
        torch.manual_seed(0)
        model = apply_activation_checkpointing(Llama(config), layers)
        loss = model(tokens[:, :-1], tokens[:, 1:], doc_ids=doc_ids).loss
        loss.backward()
        return loss, [p.grad for p in model.parameters()], model

    plain_loss, plain_grads, _ = loss_and_grads(None)
    loss, grads, model = loss_and_grads("all")
    assert type(model.layers[0]).__name__ == "CheckpointWrapper"
    assert list(model.state_dict()) == list(Llama(config).state_dict())
    assert torch.equal(loss, plain_loss)
    assert len(grads) == len(plain_grads)
    for grad, plain_grad in zip(grads, plain_grads):
        assert torch.equal(grad, plain_grad)


def test_checkpointed_layer_choices():
    assert checkpointed_layers(6, 2) == [0, 2, 4]
    assert checkpointed_layers(6, [5, 1]) == [1, 5]
    with pytest.raises(ValueError, match="not all in 0..5"):
        checkpointed_layers(6, [6])


def _ddp_worker(rank: int, rendezvous: str, token_rows: list[list[int]], out: str) -> None:
    torch.set_num_threads(1)
    tokens = torch.tensor(token_rows)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = Llama(tiny_config())
        trained = apply_data_parallel(model, torch.device("cpu"))
        optimizer = build_optimizer(model, lr=1e-2)
        half = len(inputs) // 2
        rows = slice(rank * half, (rank + 1) * half)
        trained(inputs[rows], targets[rows]).loss.backward()
        optimizer.step()
        if rank == 0:
            torch.save(model.state_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_ddp_over_gloo_matches_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    tokens = random_tokens(4, 17, tiny_config().vocab_size)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    out = str(tmp_path / "ddp.pt")
    spawn_two_ranks(_ddp_worker, (tokens.tolist(), out), tmp_path, monkeypatch)

    torch.manual_seed(0)
    model = Llama(tiny_config())
    assert apply_data_parallel(model, torch.device("cpu")) is model  # no process group: unchanged
    optimizer = build_optimizer(model, lr=1e-2)
    model(inputs, targets).loss.backward()
    optimizer.step()
    distributed = torch.load(out)
    for name, tensor in model.state_dict().items():
        assert_equal_within(distributed[name], tensor, 1e-5, name)


# ------------------------------------------------------------------------------ behaviour kept


def test_pretraining_curve_is_bit_for_bit_what_it_was_before_objectives_were_plugged_in(tmp_path):
    """The curve (losses, gradient norms, lrs, validation losses) and final weights of a small run,
    recorded with the Trainer before it took objectives: 2 shards, one held out, accumulation 2."""
    recorded = json.loads((Path(__file__).parent / "recorded" / "pretrain_curve_666261c.json").read_text())
    rows = np.stack([(np.arange(33) * (5 + i % 3) + i) % VOCAB for i in range(40)])
    starts = [[0] if i % 3 == 0 else [0, 7 + i % 11] for i in range(40)]
    stage = write_token_stage(tmp_path / "tokens", rows, starts, VOCAB, shards=2)
    config = train_config(stage, tmp_path / "run", seq_len=32, global_batch_tokens=4 * 32, micro_batch_rows=2,
                          steps=12, schedule={"warmup_steps": 3}, optimizer={"lr": 3e-3}, seed=11,
                          validation={"holdout_shards": 1, "interval_steps": 4, "rows": 4})
    trainer = Trainer(config)
    history = trainer.train()
    assert [m["loss"] for m in history] == recorded["losses"]
    assert [m["grad_norm"] for m in history] == recorded["grad_norms"]
    assert [m["lr"] for m in history] == recorded["lrs"]
    assert [m.get("validation_loss") for m in history] == recorded["validation_losses"]
    digest = hashlib.sha256()
    for name, tensor in sorted(trainer.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    assert digest.hexdigest() == recorded["weights_sha256"]
