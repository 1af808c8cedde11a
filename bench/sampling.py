"""Sampling throughput of one worker: our LlamaBackend (modeling/generate.py's KV-cache decoding)
against transformers' `generate` (LlamaForCausalLM) on the same exported model, the same prompts
and the same batches, greedy so their outputs can be compared, in one run.

    python bench/sampling.py [--prompts 64] [--new-tokens 64] [--dim 256 --layers 4 --heads 4]
                             [--vocab 32000] [--batch 16] [--threads 1] [--repeats 2]

The prompts are synthetic instructions (tasks.synthetic.instructions) without their last answer,
chat-encoded as the sampling stage encodes them (tasks.chat_format.encode_prompt); a SentencePiece
tokenizer trained on their text; one seeded random LLaMA of the given shape (vocabulary: the
tokenizer's, or `--vocab`, LLaMA's 32k head, which both sides then draw from whole) saved by modeling.checkpoints.save_hf, which both sides load in fp32 on `--threads`
threads. Both take the prompts sorted by length in batches of `--batch` (ours sorts them itself:
that is LlamaBackend's batching), left-padded, and stop a row at EOS or after `--new-tokens`;
transformers is given the attention mask and EOS as pad. Each side first answers one batch untimed
(warm-up), then all prompts `--repeats` times, the two taking turns so a busy spell of the machine
slows both; the fastest pass of each is reported. Tokens/s counts each side's own new tokens (EOS
included). Agreement: the share of prompts whose whole greedy answers are identical, and the share
of answer tokens before the first difference (a random model's near-tied logits can flip an argmax
between two fp32 implementations, and everything after follows the flip).

`--dim 64 --layers 2 --heads 4` is the `debug` size's shape (modeling/configs.py). On 2 shared CPU
cores (1 thread, 64 prompts of 11-52 tokens, 64 new, batch 16, fastest of 3): debug 13,800 against
6,950 tokens/s (2.0x); the default 3.5M model 2,890 against 2,420 (1.2x); `--dim 512 --layers 8
--heads 8 --vocab 32000` (58M) 346 against 319 (1.08x, 13 s a side); every greedy answer identical.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.generate import GREEDY
from modeling.llama import Llama
from modeling.model_folders import load_model
from modeling.sampling import LlamaBackend
from tasks.chat_format import encode_prompt
from tasks.synthetic.instructions import make_instructions, tokenizer_texts
from tasks.tokenizer import MODEL_FILE, train_tokenizer


def prompts_of(tokenizer, n: int, seed: int) -> list[list[int]]:
    """n chat-encoded prompts: synthetic dialogues less their last (assistant) turn."""
    dialogues = make_instructions(n, seed=seed, system_share=0.3, multi_turn_share=0.3)
    return [encode_prompt(tokenizer, list(d["messages"])[:-1]) for d in dialogues]


def hf_generate(model, prompts: list[list[int]], *, batch: int, max_new_tokens: int, eos: int) -> list[list[int]]:
    """transformers' greedy answers, batch for batch as LlamaBackend makes them, each cut after its EOS."""
    order = sorted(range(len(prompts)), key=lambda n: len(prompts[n]))
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        rows = order[start:start + batch]
        width = max(len(prompts[n]) for n in rows)
        ids = torch.tensor([[eos] * (width - len(prompts[n])) + prompts[n] for n in rows])
        mask = torch.tensor([[0] * (width - len(prompts[n])) + [1] * len(prompts[n]) for n in rows])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos, pad_token_id=eos)
        for n, row in zip(rows, out[:, width:].tolist()):
            outputs[n] = row[:row.index(eos) + 1] if eos in row else row
    return outputs


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> tuple[float, float]:
    """(share of identical answers, share of answer tokens before the first difference)."""
    same, common, total = 0, 0, 0
    for a, b in zip(ours, theirs):
        same += a == b
        prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        common += prefix
        total += max(len(a), len(b))
    return same / len(ours), common / total


def timed(generate_all) -> tuple[list[list[int]], float]:
    started = time.perf_counter()
    answers = generate_all()
    return answers, time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never wait on the network
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sampling-") as folder:
        work = Path(folder)
        tokenizer = train_tokenizer(tokenizer_texts(600), work / "tokenizer", vocab_size=600)
        prompts = prompts_of(tokenizer, args.prompts, args.seed)
        shape = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, vocab_size=args.vocab or tokenizer.vocab_size,
                            multiple_of=64, max_seq_len=max(map(len, prompts)) + args.new_tokens)
        torch.manual_seed(args.seed)
        exported = save_hf(Llama(shape), work / "hf", tokenizer_files=[work / "tokenizer" / MODEL_FILE])
        ours = LlamaBackend(load_model(exported), batch_size=args.batch)
        theirs = LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
        eos = tokenizer.eos_id
        sides = {
            "ours": lambda some: ours.generate(some, max_new_tokens=args.new_tokens, sampling=GREEDY, seed=0,
                                               stop_tokens=[eos]),
            "hf": lambda some: hf_generate(theirs, some, batch=args.batch, max_new_tokens=args.new_tokens, eos=eos),
        }
        print(f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, up to "
              f"{args.new_tokens} new; model dim {args.dim} x {args.layers} layers, vocabulary {shape.vocab_size} "
              f"({shape.n_params / 1e6:.2f}M params), batch {args.batch}, {args.threads} thread(s)", flush=True)
        for generate_some in sides.values():
            generate_some(prompts[:args.batch])  # warm-up
        answers: dict[str, list[list[int]]] = {}
        seconds: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, generate_some in sides.items():
                answers[name], elapsed = timed(lambda: generate_some(prompts))
                seconds[name].append(elapsed)
    tokens = {name: sum(map(len, answers[name])) for name in sides}
    per_second = {name: tokens[name] / min(seconds[name]) for name in sides}
    identical, common_prefix = agreement(answers["ours"], answers["hf"])
    return {"prompts": len(prompts), "new_tokens": args.new_tokens, "batch": args.batch, "threads": args.threads,
            "params": shape.n_params, "ours_tokens": tokens["ours"], "hf_tokens": tokens["hf"],
            "ours_seconds": min(seconds["ours"]), "hf_seconds": min(seconds["hf"]),
            "ours_tokens_per_second": per_second["ours"], "hf_tokens_per_second": per_second["hf"],
            "ratio": per_second["ours"] / per_second["hf"], "identical_outputs": identical,
            "common_prefix_tokens": common_prefix, "wall_seconds": time.perf_counter() - started}


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--prompts", type=int, default=64)
    options.add_argument("--new-tokens", type=int, default=64)
    options.add_argument("--dim", type=int, default=256)
    options.add_argument("--layers", type=int, default=4)
    options.add_argument("--heads", type=int, default=4)
    options.add_argument("--vocab", type=int, default=None, help="the model's vocabulary; default the tokenizer's")
    options.add_argument("--batch", type=int, default=16)
    options.add_argument("--threads", type=int, default=1)
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--repeats", type=int, default=2, help="timed passes of each, the fastest reported")
    return options


def main() -> None:
    results = run(parser().parse_args())
    print(f"{'':24}{'ours':>10}{'hf':>10}{'ours/hf':>9}")
    print(f"{'new tokens/s':24}{results['ours_tokens_per_second']:10.1f}{results['hf_tokens_per_second']:10.1f}"
          f"{results['ratio']:8.2f}x")
    print(f"{'seconds':24}{results['ours_seconds']:10.2f}{results['hf_seconds']:10.2f}")
    print(f"greedy answers identical {results['identical_outputs']:.1%}; answer tokens before the first "
          f"difference {results['common_prefix_tokens']:.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
