"""Our LLaMA against transformers' LlamaForCausalLM: same config, same weights, same inputs.

    python bench/model.py [--dim 256] [--layers 4] [--heads 8] [--kv-heads 4] [--vocab 32000]
                          [--batch 4] [--seq 256] [--steps 5] [--new-tokens 64] [--threads N]

Training: forward + backward tokens/s (loss on next tokens), fp32, median of `--steps` timed steps
after one warm-up, the two models taking turns so both see the same machine load.
Generation: greedy tokens/s with our KV cache against `LlamaForCausalLM.generate` on the same
left-padded prompts. Ratios > 1 mean we are faster. Needs the test extra (transformers).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import LlamaForCausalLM

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.generate import generate
from modeling.llama import IGNORE_INDEX, Llama


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def train_step_ours(model: Llama, tokens: torch.Tensor, targets: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = model(tokens, targets).loss
    loss.backward()
    return loss.item()


def train_step_hf(model: LlamaForCausalLM, tokens: torch.Tensor, _targets: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = model(tokens, labels=tokens).loss  # transformers shifts the labels itself
    loss.backward()
    return loss.item()


def bench_training(ours: Llama, hf: LlamaForCausalLM, args) -> None:
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    targets = torch.cat([tokens[:, 1:], torch.full((args.batch, 1), IGNORE_INDEX)], dim=1)
    ours.train(), hf.train()
    loss_ours, loss_hf = train_step_ours(ours, tokens, targets), train_step_hf(hf, tokens, targets)
    print(f"loss on the batch: ours {loss_ours:.6f}  transformers {loss_hf:.6f}")
    times_ours, times_hf = [], []
    for _ in range(args.steps):
        times_ours.append(timed(lambda: train_step_ours(ours, tokens, targets)))
        times_hf.append(timed(lambda: train_step_hf(hf, tokens, targets)))
    per_step = args.batch * args.seq
    rate_ours, rate_hf = per_step / statistics.median(times_ours), per_step / statistics.median(times_hf)
    print(f"forward+backward  ours {rate_ours:9.0f} tok/s  transformers {rate_hf:9.0f} tok/s  ratio {rate_ours / rate_hf:.2f}")


def bench_generation(ours: Llama, hf: LlamaForCausalLM, args) -> None:
    rng = torch.Generator().manual_seed(1)
    lengths = [args.prompt_len, args.prompt_len * 2 // 3, args.prompt_len // 3, args.prompt_len // 2][: args.batch]
    prompts = [torch.randint(0, args.vocab, (n,), generator=rng).tolist() for n in lengths]
    longest = max(lengths)
    input_ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    ours.eval(), hf.eval()

    def run_ours():
        return generate(ours, prompts, max_new_tokens=args.new_tokens)

    def run_hf():
        with torch.inference_mode():
            # min_new_tokens: no early end of sequence, so both produce the same number of tokens.
            return hf.generate(
                input_ids, attention_mask=attention_mask, max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0,
            )

    out_ours, out_hf = run_ours(), run_hf()  # warm-up, and the outputs to compare
    same = sum(a == b for a, b in zip(out_ours, out_hf[:, longest:].tolist()))
    print(f"greedy outputs identical for {same} of {len(prompts)} prompts")
    times_ours, times_hf = [], []
    for _ in range(args.gen_repeats):
        times_ours.append(timed(run_ours))
        times_hf.append(timed(run_hf))
    n_tokens = len(prompts) * args.new_tokens
    rate_ours, rate_hf = n_tokens / statistics.median(times_ours), n_tokens / statistics.median(times_hf)
    print(f"generation        ours {rate_ours:9.0f} tok/s  transformers {rate_hf:9.0f} tok/s  ratio {rate_ours / rate_hf:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = ModelConfig(
        dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
        vocab_size=args.vocab, max_seq_len=max(args.seq, args.prompt_len + args.new_tokens),
    )
    torch.manual_seed(0)
    ours = Llama(config)
    with tempfile.TemporaryDirectory() as folder:
        save_hf(ours, folder)
        hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    print(
        f"{config.n_params / 1e6:.1f}M parameters (dim {config.dim}, {config.n_layers} layers, "
        f"{config.n_heads} heads / {config.n_kv_heads} kv), fp32, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    bench_training(ours, hf, args)
    bench_generation(ours, hf, args)


if __name__ == "__main__":
    main()
