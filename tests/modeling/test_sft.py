"""Supervised fine-tuning: packed rows train as their examples alone, the run's config and base
model, and learning shown on instructions whose answers are known."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from prefect.utilities.templating import apply_values

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.generate import generate
from modeling.objectives import batch_of_rows, next_token_loss
from modeling.sft import SFTConfig, debug_run, llama2_7b_chat_run
from modeling.train import Trainer
from tasks.chat_format import encode_prompt
from tasks.dialogues.ingest import ingest_dialogues
from tasks.dialogues.readers import HHReader, MessagesReader
from tasks.sft_tokens import pack_dialogues
from tasks.synthetic.instructions import check_answer, make_instructions, split_heldout, tokenizer_texts, write_jsonl
from tasks.tokenizer import train_tokenizer
from tasks.tokens import RowBuilder
from tasks.token_reader import PackedRow
from tests.modeling.helpers import random_model, tiny_config, write_token_stage

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
]
CPU = torch.device("cpu")


def example(rng: np.random.Generator, prompt: int, answer: int, vocab: int) -> tuple[list[int], list[bool]]:
    ids = [1] + rng.integers(3, vocab, prompt + answer).tolist() + [2]
    return ids, [False] * (1 + prompt) + [True] * (answer + 1)


def rows_of(examples, row_tokens: int, pad_id: int = 2) -> list[PackedRow]:
    builder = RowBuilder(row_tokens, pad_id)
    for ids, mask in examples:
        builder.add(ids, mask)
    tokens, masks, starts, _ = builder.finish(np.dtype(np.int64))
    return [PackedRow(t, np.array(s, np.int32), m) for t, m, s in zip(tokens, masks, starts)]


def test_a_packed_row_trains_exactly_as_its_examples_alone():
    config = tiny_config()
    model = random_model(config)
    rng = np.random.default_rng(0)
    examples = [example(rng, 5, 4, config.vocab_size), example(rng, 9, 7, config.vocab_size),
                example(rng, 3, 12, config.vocab_size)]
    [packed] = rows_of(examples, 48)  # 11 + 18 + 17 tokens and 2 of padding
    batch = batch_of_rows([packed], CPU, document_masking=True, answers_only=True)
    assert packed.doc_starts.tolist() == [0, 18, 35, 46]  # longest first, then the padding
    assert batch.positions[0, 18].item() == 0 and batch.positions[0, 34].item() == 16
    assert batch.loss_tokens == 5 + 8 + 13

    alone = [batch_of_rows(rows_of([e], len(e[0])), CPU, True, True) for e in examples]
    weighted = sum(next_token_loss(model, b).item() * b.loss_tokens for b in alone) / sum(b.loss_tokens for b in alone)
    with torch.no_grad():
        assert next_token_loss(model, batch).item() == pytest.approx(weighted, abs=1e-5)
        # Without the document mask the later examples see the earlier ones: a different loss.
        leaky = batch_of_rows([packed], CPU, document_masking=False, answers_only=False)
        leaky.targets = batch.targets
        assert abs(next_token_loss(model, leaky).item() - weighted) > 1e-3


def test_the_llama2_chat_preset_is_the_papers_sft_recipe():
    run = llama2_7b_chat_run()
    assert (run.optimizer.lr, run.optimizer.weight_decay, run.schedule.final_lr_ratio) == (2e-5, 0.1, 0.1)
    assert (run.global_batch_rows, run.seq_len, run.epochs) == (64, 4096, 2)
    assert run.kind == "sft" and run.scaling.use_gpu
    with pytest.raises(ValueError, match="give exactly one of train_tokens, steps or epochs"):
        llama2_7b_chat_run(steps=10)


def test_epochs_give_the_steps_from_the_packed_rows_and_a_base_model_loads(tmp_path):
    shape = tiny_config(vocab_size=96)
    rows = np.stack([np.arange(17) % 96] * 20)
    pretraining_rows = write_token_stage(tmp_path / "pretraining", rows, [[0]] * 20, 96)
    config = SFTConfig(run_name="r", output=str(tmp_path / "runs"), data=pretraining_rows, model=shape,
                       optimizer={"lr": 1e-3}, epochs=1.5, seq_len=16, global_batch_tokens=4 * 16, micro_batch_rows=2,
                       schedule={"warmup_steps": 0})
    assert config.total_steps == 8  # 1.5 x 20 rows / 4 rows a step, rounded up
    with pytest.raises(ValueError, match="a token stage without loss masks"):
        config.check_data()

    base = random_model(shape, seed=3)
    save_hf(base, tmp_path / "pretrain-run" / "hf")
    from_run = config.model_copy(update={"init": str(tmp_path / "pretrain-run")})
    weights = from_run.initial_weights()
    assert all(torch.equal(weights[name], tensor) for name, tensor in base.state_dict().items())
    other = from_run.model_copy(update={"model": ModelConfig(**{**shape.__dict__, "n_layers": 3})})
    with pytest.raises(ValueError, match="the base model's shape .* is not the run's model"):
        other.initial_weights()
    with pytest.raises(FileNotFoundError, match="no base model there"):
        config.model_copy(update={"init": str(tmp_path)}).initial_weights()


def test_the_debug_preset_is_valid_for_two_cpu_workers():
    run = debug_run(data="/nowhere")
    assert run.scaling.num_workers == 2 and run.accumulation_steps(2) == 1 and run.epochs == 2


# ------------------------------------------------------------------------------ learning, on known answers


def exact_match(model, tokenizer, dialogues) -> float:
    model.eval()
    prompts = [encode_prompt(tokenizer, d["messages"][:-1]) for d in dialogues]
    outputs = generate(model, prompts, max_new_tokens=12, stop_tokens=[tokenizer.eos_id])
    texts = [tokenizer.decode([t for t in o if t != tokenizer.eos_id]) for o in outputs]
    return sum(map(check_answer, dialogues, texts)) / len(dialogues)


def test_fine_tuning_learns_instructions_the_base_model_cannot_answer(tmp_path, ray_local):
    tokenizer = train_tokenizer(tokenizer_texts(600), tmp_path / "spm", vocab_size=600)
    dialogues = make_instructions(2000, seed=1, tasks=["repeat", "reverse", "first", "last", "count", "add"],
                                  system_share=0.2, multi_turn_share=0.2)
    train, held_out = split_heldout(dialogues, 0.1, seed=2)
    write_jsonl(tmp_path / "train.jsonl", train)
    stage = ingest_dialogues("instructions", [str(tmp_path / "train.jsonl")], str(tmp_path / "data"), MessagesReader())
    packed = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / "data"), seq_len=64, seed=0)
    shape = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=600, multiple_of=32, max_seq_len=128)
    config = SFTConfig(run_name="sft", output=str(tmp_path / "runs"), data=packed["stage_dir"], model=shape, steps=700,
                       seq_len=64, global_batch_tokens=16 * 64, micro_batch_rows=16, export_hf=False,
                       optimizer={"lr": 3e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 10})
    trainer = Trainer(config)
    scored = held_out[:100]
    before = exact_match(trainer.model, tokenizer, scored)
    history = trainer.train()
    after = exact_match(trainer.model, tokenizer, scored)
    print(f"held-out exact match: base {before:.2f}, fine-tuned {after:.2f} "
          f"(loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f})")
    assert before <= 0.02 and after >= 0.5

    # Served through transformers: the chat template gives our prompt ids, greedy decoding our answers.
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = trainer.export_hf(tmp_path / "hf", tokenizer_files=[tmp_path / "spm" / "tokenizer.model"])
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_model = LlamaForCausalLM.from_pretrained(folder).eval()
    for dialogue in scored[:12]:
        prompt = encode_prompt(tokenizer, dialogue["messages"][:-1])
        templated = hf_tokenizer.apply_chat_template(dialogue["messages"][:-1], add_generation_prompt=True,
                                                     tokenize=True, tokenizer_kwargs={"split_special_tokens": False})
        assert templated["input_ids"] == prompt
        ours = generate(trainer.model, [prompt], max_new_tokens=12, stop_tokens=[tokenizer.eos_id])[0]
        with torch.no_grad():
            theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                       eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.eos_id)
        assert theirs[0, len(prompt):].tolist()[:len(ours)] == ours


def test_real_hh_dialogues_ingest_pack_and_fine_tune(tmp_path, ray_local, hh_harmless):
    stage = ingest_dialogues("hh", [str(hh_harmless)], str(tmp_path / "data"), HHReader(field="chosen"))
    assert stage["totals"]["kept"] > 2000
    texts = [line for part in stage["parts"] for line in _texts(part["path"])][:3000]
    tokenizer = train_tokenizer(texts, tmp_path / "spm", vocab_size=2000)
    packed = pack_dialogues(stage["stage_dir"], tokenizer, str(tmp_path / "data"), seq_len=255, seed=0)
    counts = packed["sources"]["hh"]
    assert counts["dialogues"] == stage["totals"]["kept"]
    assert counts["examples"] + sum(counts["dropped"].values()) == counts["dialogues"]
    config = SFTConfig(run_name="hh", output=str(tmp_path / "runs"), data=packed["stage_dir"],
                       model=tiny_config(vocab_size=2000, max_seq_len=256), steps=30, seq_len=255,
                       global_batch_tokens=8 * 255, micro_batch_rows=4, export_hf=False,
                       optimizer={"lr": 3e-3}, schedule={"warmup_steps": 3})
    history = Trainer(config).train()
    assert history[-1]["loss"] < history[0]["loss"] - 1.0
    assert all(m["loss_tokens"] < 8 * 255 for m in history)  # prompts and padding carry no loss


def _texts(part: str) -> list[str]:
    from tasks.dialogues.records import read_dialogues

    return [m.content for d in read_dialogues(part) for m in d.messages]


# ------------------------------------------------------------------------------ deployments and base models

REPO = Path(__file__).resolve().parents[2]


def sft_deployment(name: str) -> dict:
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    return next(d for d in deployments if d["entrypoint"] == "flows.sft:sft" and d["name"] == name)


def test_the_llama2_7b_chat_deployment_is_the_papers_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LLAMALINE_DATA", str(tmp_path))  # what `llamaline up` gives `prefect deploy` and the worker
    parameters = apply_values(sft_deployment("llama2-7b-chat")["parameters"], os.environ, remove_notset=False)
    run = llama2_7b_chat_run()
    assert SFTConfig.model_validate(parameters["config"]["training"]) == run
    assert run.init == f"{tmp_path}/runs/llama2-7b"  # the llama2-7b pretraining run's folder
    o = run.optimizer
    assert (run.peak_lr, o.weight_decay, run.schedule.final_lr_ratio, run.epochs) == (2e-5, 0.1, 0.1, 2)
    assert run.global_batch_rows == 64 and run.seq_len == 4096
    assert run.accumulation_steps(8) == 4  # 64 rows = 8 workers x 2 rows x 4 micro batches


def test_the_debug_deployment_is_the_debug_preset():
    from flows.sft import sft

    assert "parameters" not in sft_deployment("debug")  # the flow's defaults, then
    assert inspect.signature(sft.fn).parameters["config"].default.training == debug_run()


def test_a_run_starts_from_a_pretraining_runs_export_and_refuses_another_shape(tmp_path):
    from modeling.configs import named_size
    from modeling.llama import Llama

    torch.manual_seed(0)
    base = Llama(named_size("debug").config)
    save_hf(base, tmp_path / "runs" / "demo" / "hf")  # what a pretraining run leaves in its folder
    weights = debug_run(init=str(tmp_path / "runs" / "demo")).initial_weights()
    assert weights.keys() == base.state_dict().keys()
    assert all(torch.equal(weights[name], tensor) for name, tensor in base.state_dict().items())

    wider = debug_run(init=str(tmp_path / "runs" / "demo"), model={"dim": 128, "n_layers": 2, "n_heads": 4},
                      optimizer={"lr": 1e-3})
    with pytest.raises(ValueError, match="the base model's shape .* is not the run's model custom"):
        wider.initial_weights()
