"""One PPO iteration's time split into generation, scoring and training, measured in one run, each
piece the one the ppo flow runs:

    python bench/ppo.py [--model debug] [--samples 64] [--new-tokens 32] [--mini-batch 8]
                        [--micro-batch 4] [--batch 16] [--threads 1] [--peak-flops FLOPS]

1. generation: the sampling stage's backend (modeling.sampling.LlamaBackend, batches of `--batch`)
   answers `--samples` chat-encoded synthetic prompts (tasks.synthetic.instructions) at
   temperature 1 from the policy;
2. scoring: every role by `modeling.rollouts.score_role`, as the flow's Ray tasks do, each loading
   its model from its folder: policy and reference log-probs, values, helpfulness and safety scores;
3. assembly: `assemble_rollouts` (gating, whitening, KL, GAE) and `write_rollouts` (the stage);
4. training: a Trainer of the iteration (`PPOConfig`, `init` the policy, `value_init` the reward
   model; its construction timed apart as "trainer start") and its steps (`--samples` /
   `--mini-batch` optimizer steps).

The models are seeded random ones of `--model`'s shape with a 600-piece SentencePiece tokenizer
(the policy and the reference the same folder, the value model and both reward models one reward
folder), in fp32 on `--threads` threads. Reported: each piece's seconds and share of the iteration,
samples/s of the iteration and of each piece, generation's new tokens/s (compare bench/sampling.py's
ours-against-transformers figure), and training's tokens/s (the core's: padded rows of the
mini-batches) and answer tokens/s; MFU where a peak is known (the core's: a GPU's bf16 peak, or
`--peak-flops` for a CPU).

Scoring's seconds include each role loading its model from its folder, as the flow's tasks do.

On 2 shared CPU cores, 1 thread, batch 16, mini-batch 8 (three runs alike within 10%):
`debug` (0.18M params at this vocabulary), 64 samples, 32 new tokens, 8 steps: an iteration 0.94-1.0 s
(64-68 samples/s): generation 0.13 s (13%, 14-15k new tokens/s, as bench/sampling.py's 13.8k for
the debug size), scoring 0.19 s (20%, five roles), assembly 0.13 s (13%), trainer start 0.18 s
(18%), training 0.33-0.36 s (36%, 19-21k tokens/s of padded rows, 5.4-5.8k answer tokens/s).
`--model 100m` (61.7M params), 16 samples, 16 new tokens, 2 steps: 24.6 s (0.65 samples/s):
generation 2.0 s (8%, 127 tokens/s), scoring 8.0 s (33%, 1.4-1.8 s a role, loading included),
assembly 0.3 s (1%), trainer start 1.3 s (5%), training 13.0 s (53%, 139 tokens/s): at scale the
split is training, then scoring, then generation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from modeling.checkpoints import save_hf
from modeling.configs import model_config
from modeling.generate import Sampling
from modeling.llama import Llama
from modeling.model_folders import load_model
from modeling.ppo_training import PPOConfig
from modeling.reward import RewardModel, save_reward_hf
from modeling.rollouts import ROLES, RolloutSample, assemble_rollouts, score_role, write_rollouts
from modeling.sampling import LlamaBackend
from modeling.train import Trainer
from tasks.chat_format import encode_prompt
from tasks.dialogues.prompts import ChatPrompt
from tasks.dialogues.records import Message
from tasks.synthetic.instructions import make_instructions, tokenizer_texts
from tasks.tokenizer import MODEL_FILE, train_tokenizer

PIECES = ("generation", "scoring", "assembly", "trainer_start", "training")


def prompts_of(n: int, seed: int) -> list[ChatPrompt]:
    """n synthetic dialogues less their last (assistant) turn."""
    return [ChatPrompt(f"bench:{i}", tuple(Message(m["role"], m["content"]) for m in d["messages"][:-1]))
            for i, d in enumerate(make_instructions(n, seed=seed, system_share=0.3, multi_turn_share=0.3))]


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as folder:
        work = Path(folder)
        tokenizer = train_tokenizer(tokenizer_texts(600), work / "tokenizer", vocab_size=600)
        spm = [work / "tokenizer" / MODEL_FILE]
        prompts = prompts_of(args.samples, args.seed)
        prompt_ids = [encode_prompt(tokenizer, p.as_dicts()) for p in prompts]
        seq_len = max(map(len, prompt_ids)) + args.new_tokens
        # The reward models read the answers' text re-encoded, which can take more tokens than were drawn.
        base = model_config(args.model)
        shape = replace(base, vocab_size=tokenizer.vocab_size, max_seq_len=max(base.max_seq_len, 2 * seq_len))
        torch.manual_seed(args.seed)
        policy_folder = save_hf(Llama(shape), work / "policy", tokenizer_files=spm)
        reward_folder = save_reward_hf(RewardModel(shape, score_seed=args.seed), work / "reward", tokenizer_files=spm)
        backend = LlamaBackend(load_model(policy_folder), batch_size=args.batch, vocab_size=tokenizer.vocab_size)

        began = time.perf_counter()
        answers = backend.generate(prompt_ids, max_new_tokens=args.new_tokens, sampling=Sampling(temperature=1.0),
                                   seed=args.seed, stop_tokens=[tokenizer.eos_id])
        seconds["generation"] = time.perf_counter() - began
        samples = [RolloutSample(p, ids, answer) for p, ids, answer in zip(prompts, prompt_ids, answers)]

        config = PPOConfig(run_name="bench", output=str(work / "runs"), data=str(work / "rollouts"), model=shape,
                           init=str(policy_folder), value_init=str(reward_folder), iterations=1,
                           batch_samples=args.samples, mini_batch_samples=args.mini_batch,
                           micro_batch_rows=args.micro_batch, seq_len=seq_len, export_hf=False, seed=args.seed,
                           scaling={"peak_flops_per_device": args.peak_flops} if args.peak_flops else {})
        folders = {"policy": policy_folder, "reference": policy_folder, "value": reward_folder,
                   "helpfulness": reward_folder, "safety": reward_folder}
        role_seconds, scores = {}, {}
        for role in ROLES:
            began = time.perf_counter()
            scores[role] = score_role(samples, role, str(folders[role]), batch_size=args.batch)
            role_seconds[role] = time.perf_counter() - began
        seconds["scoring"] = sum(role_seconds.values())

        began = time.perf_counter()
        settings = config.rollout_settings()
        rollouts = assemble_rollouts(samples, scores["policy"], scores["reference"], scores["value"],
                                     helpful=np.asarray(scores["helpfulness"]), safety=np.asarray(scores["safety"]),
                                     settings=settings)
        manifest = write_rollouts(config.data, 0, rollouts, settings)
        seconds["assembly"] = time.perf_counter() - began

        began = time.perf_counter()
        trainer = Trainer(config, initial_weights=config.initial_weights())
        seconds["trainer_start"] = time.perf_counter() - began
        began = time.perf_counter()
        history = trainer.train(until=config.steps_per_iteration)
        seconds["training"] = time.perf_counter() - began

    total = sum(seconds.values())
    new_tokens = sum(map(len, answers))
    answer_tokens = sum(m["loss_tokens"] for m in history)
    step_rates = [m["tokens_per_second"] for m in history]
    mfus = [m["mfu"] for m in history if m.get("mfu") is not None]
    return {"model": args.model, "params": shape.n_params, "samples": args.samples, "new_tokens": args.new_tokens,
            "threads": args.threads, "steps": len(history), "seconds": seconds, "role_seconds": role_seconds,
            "shares": {name: seconds[name] / total for name in PIECES}, "iteration_seconds": total,
            "samples_per_second": args.samples / total,
            "piece_samples_per_second": {name: args.samples / seconds[name] for name in PIECES},
            "generated_tokens": new_tokens, "generation_tokens_per_second": new_tokens / seconds["generation"],
            "training_tokens_per_second": float(np.median(step_rates)),
            "training_answer_tokens_per_second": answer_tokens / seconds["training"],
            "mfu": float(np.median(mfus)) if mfus else None, "mean_kl": manifest["kl"],
            "wall_seconds": time.perf_counter() - started}


def parser() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--model", default="debug", help="a size of modeling/configs.py")
    options.add_argument("--samples", type=int, default=64)
    options.add_argument("--new-tokens", type=int, default=32)
    options.add_argument("--mini-batch", type=int, default=8)
    options.add_argument("--micro-batch", type=int, default=4)
    options.add_argument("--batch", type=int, default=16, help="generation and scoring batch")
    options.add_argument("--threads", type=int, default=1)
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--peak-flops", type=float, default=None, help="the device's peak FLOP/s, for MFU on a CPU")
    return options


def main() -> None:
    results = run(parser().parse_args())
    print(f"{results['samples']} samples, {results['new_tokens']} new tokens, {results['model']} "
          f"({results['params'] / 1e6:.2f}M params), {results['threads']} thread(s), {results['steps']} steps")
    for name in PIECES:
        print(f"{name:16}{results['seconds'][name]:8.2f} s {results['shares'][name]:7.1%} "
              f"{results['piece_samples_per_second'][name]:9.1f} samples/s")
    print(f"{'iteration':16}{results['iteration_seconds']:8.2f} s {'':7} {results['samples_per_second']:9.1f} samples/s")
    print(f"generation {results['generation_tokens_per_second']:.0f} new tokens/s; training "
          f"{results['training_tokens_per_second']:.0f} tokens/s ({results['training_answer_tokens_per_second']:.0f} "
          f"answer tokens/s), MFU {results['mfu'] if results['mfu'] is not None else 'unknown (no peak)'}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
