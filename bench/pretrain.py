"""Pretraining throughput on CPU: our loop and Ray Train against a plain PyTorch loop on
transformers' LlamaForCausalLM, and scaling from one Ray Train worker to two.

    python bench/pretrain.py [--sizes debug,100m] [--seq 256] [--steps 6]

For each size, on the same random token rows, the same global batch, micro batches and weights:
  transformers  LlamaForCausalLM, AdamW, gradient accumulation and clipping, one process, 1 thread
  ours          modeling.train.Trainer in this process, 1 thread (no document masking, like HF)
  ray 1 worker  the whole pretraining job (modeling.ray_job.run_training) with 1 worker x 1 CPU
  ray 2 workers the same with 2 workers x 1 CPU (DDP over gloo), the same global batch
Rates are tokens per second over the steps after the first (warm-up); Ray's from the times at
which its metrics log records the steps, so reporting and checkpointing between steps count.
The fixed start-up of a Ray Train run (placement, process group) is printed separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from transformers import LlamaForCausalLM

from modeling.checkpoints import save_hf
from modeling.configs import named_size
from modeling.llama import Llama
from modeling.pretrain import PretrainConfig
from modeling.ray_job import read_metrics, run_training
from modeling.train import Trainer
from tasks.tokens import write_rows_stage

SIZES = {"debug": {"rows": 8, "micro": 2}, "100m": {"rows": 4, "micro": 1}}


def token_stage(folder: Path, rows: int, seq: int, vocab: int) -> str:
    generator = np.random.default_rng(0)
    data = generator.integers(3, vocab, size=(rows, seq + 1), dtype=np.uint16)
    return write_rows_stage(str(folder), data, [[0]] * rows, vocab)


def rate(tokens_per_step: int, step_times: list[float]) -> float:
    """Tokens/s from the wall-clock times at which steps 1..n ended (the first step is warm-up)."""
    return tokens_per_step * (len(step_times) - 1) / (step_times[-1] - step_times[0])


def transformers_loop(stage: str, size: str, seq: int, rows: int, micro: int, steps: int) -> float:
    torch.manual_seed(0)
    config = named_size(size).config
    with tempfile.TemporaryDirectory() as folder:
        save_hf(Llama(config), folder)
        model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=named_size(size).lr, betas=(0.9, 0.95), eps=1e-5,
                                  weight_decay=0.1)
    table = pq.read_table(Path(stage) / "shard-00000.parquet", columns=["tokens"])
    all_rows = torch.from_numpy(np.stack(table.column("tokens").to_numpy(zero_copy_only=False)).astype(np.int64))
    accumulation = rows // micro
    ends = []
    position = 0
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(accumulation):
            batch = all_rows[position:position + micro]
            position = (position + micro) % (len(all_rows) - micro)
            # transformers shifts labels itself: the same seq_len-token forward as ours.
            loss = model(batch[:, :-1], labels=batch[:, :-1]).loss / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ends.append(time.perf_counter())
    return rate(rows * seq, ends)


def our_loop(stage: str, size: str, seq: int, rows: int, micro: int, steps: int) -> float:
    trainer = Trainer(PretrainConfig(
        run_name=f"{size}-loop", model=size, data=stage, output=tempfile.mkdtemp(prefix="bench-loop-"), steps=steps,
        seq_len=seq, global_batch_tokens=rows * seq, micro_batch_rows=micro, schedule={"warmup_steps": 1},
        parallelism={"document_masking": False}, export_hf=False))
    ends = []
    for _ in range(steps):
        trainer.train_step()
        ends.append(time.perf_counter())
    return rate(rows * seq, ends)


def ray_run(stage: str, output: str, size: str, seq: int, rows: int, micro: int, steps: int, workers: int
            ) -> tuple[float, float]:
    config = PretrainConfig(
        run_name=f"{size}-{workers}w", model=size, data=stage, output=output, steps=steps, seq_len=seq,
        global_batch_tokens=rows * seq, micro_batch_rows=micro, schedule={"warmup_steps": 1},
        parallelism={"document_masking": False}, export_hf=False,
        scaling={"num_workers": workers, "cpus_per_worker": 1.0},
    )
    started = time.time()
    run_training(config)
    entries = read_metrics(config.run_dir)
    first_event = next(e for e in entries if e.get("event") == "started")
    ends = [e["time"] for e in entries if "event" not in e]
    return rate(rows * seq, ends), first_event["time"] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="debug,100m")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes.split(","):
            rows, micro = SIZES[size]["rows"], SIZES[size]["micro"]
            stage = token_stage(Path(work) / f"tokens-{size}", rows * (args.steps + 1), args.seq,
                                named_size(size).config.vocab_size)
            hf = transformers_loop(stage, size, args.seq, rows, micro, args.steps)
            ours = our_loop(stage, size, args.seq, rows, micro, args.steps)
            one, start_one = ray_run(stage, f"{work}/runs", size, args.seq, rows, micro, args.steps, 1)
            two, start_two = ray_run(stage, f"{work}/runs", size, args.seq, rows, micro, args.steps, 2)
            results[size] = {"transformers": hf, "ours": ours, "ray_1_worker": one, "ray_2_workers": two,
                             "ray_startup_seconds": statistics.mean([start_one, start_two])}
            print(f"{size:>6} (batch {rows} x {args.seq} tokens, micro {micro}): transformers {hf:8.0f} tok/s | "
                  f"ours {ours:8.0f} ({ours / hf:.2f}x) | Ray Train 1 worker {one:8.0f} ({one / hf:.2f}x) | "
                  f"2 workers {two:8.0f} (scaling {two / one:.2f}x) | Ray Train start-up "
                  f"{results[size]['ray_startup_seconds']:.0f} s", flush=True)
    ray.shutdown()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
