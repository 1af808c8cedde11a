"""Our LLaMA against transformers' LlamaForCausalLM: same config, same weights, same inputs.

    python bench/model.py [--dim 256] [--layers 4] [--heads 8] [--kv-heads 4] [--vocab 32000]
                          [--batch 4] [--seq 256] [--steps 5] [--new-tokens 64] [--threads N]

Training: forward + backward tokens/s (loss on next tokens), fp32, median of `--steps` timed steps
after one warm-up, the two models taking turns (alternating who goes first) so that both see the
same machine load.
Generation: greedy tokens/s with our KV cache against `LlamaForCausalLM.generate` on the same
left-padded prompts. Ratios > 1 mean we are faster; rates are given by wall clock and by process
CPU time (the latter is steadier on a shared machine, best with --threads 1). Needs the test
extra (transformers).
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


def timed(fn) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def take_turns(ours, theirs, repeats: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Timings per call of each; who goes first alternates, so drifting load hits both alike."""
    times_ours, times_theirs = [], []
    for turn in range(repeats):
        order = ((ours, times_ours), (theirs, times_theirs))
        for fn, times in order if turn % 2 == 0 else reversed(order):
            times.append(timed(fn))
    return times_ours, times_theirs


def report(what: str, n_tokens: int, times_ours, times_theirs) -> None:
    """Median tokens/s by wall clock, and by CPU time (less sensitive to other processes' load)."""
    for clock, index in (("wall", 0), ("cpu", 1)):
        ours = n_tokens / statistics.median(t[index] for t in times_ours)
        theirs = n_tokens / statistics.median(t[index] for t in times_theirs)
        print(f"{what:<17} {clock:<4} ours {ours:8.0f} tok/s  transformers {theirs:8.0f} tok/s  ratio {ours / theirs:.2f}")


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
    times_ours, times_hf = take_turns(
        lambda: train_step_ours(ours, tokens, targets), lambda: train_step_hf(hf, tokens, targets), args.steps
    )
    report("forward+backward", args.batch * args.seq, times_ours, times_hf)


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
    times_ours, times_hf = take_turns(run_ours, run_hf, args.gen_repeats)
    report("generation", len(prompts) * args.new_tokens, times_ours, times_hf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gen-repeats", type=int, default=4)
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
