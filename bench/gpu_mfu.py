"""MFU of a ~1B LLaMA on GPUs through our training loop: bf16 autocast, activation checkpointing,
FSDP2 when more than one GPU is used (one process per GPU, NCCL).

    python bench/gpu_mfu.py [--gpus 1] [--seq 2048] [--micro-batch 4] [--accumulation 4]
                            [--activation-checkpointing all|none|K] [--compile] [--steps 12]

The model is TinyLlama-1.1B's shape (dim 2048, 22 layers, 32 heads, 4 KV heads, FFN 5632). Rows are
random tokens written as a token stage on local disk, read by the same TokenReader as training.
MFU = tokens/s per GPU x 6N + attention FLOPs per token (modeling/configs.py) / the GPU's dense bf16
peak (modeling/train.py: 989 TFLOP/s on H100 SXM and H200). Reported: the median over the steps
after `--warmup` of tokens/s, MFU and peak memory allocated. The goal is >= 45% MFU on one H100.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling.configs import ModelConfig
from modeling.pretrain import PretrainConfig
from modeling.train import Trainer
from tasks.tokens import write_rows_stage

ONE_B = ModelConfig(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_hidden_dim=5632, max_seq_len=4096)


def parse_checkpointing(value: str):
    return None if value == "none" else "all" if value == "all" else int(value)


def run(rank: int, world: int, args, stage: str, results: dict) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
        dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    config = PretrainConfig(
        run_name="gpu-mfu", output=tempfile.mkdtemp(prefix="gpu-mfu-"), data=stage, seq_len=args.seq,
        micro_batch_rows=args.micro_batch, model=ONE_B, optimizer={"lr": 3e-4},
        global_batch_tokens=args.seq * args.micro_batch * args.accumulation * world, steps=args.steps,
        schedule={"warmup_steps": 1}, export_hf=False, scaling={"num_workers": world, "use_gpu": True},
        parallelism={"mixed_precision": "bf16", "compile": args.compile, "document_masking": False,
                     "activation_checkpointing": parse_checkpointing(args.activation_checkpointing)},
    )
    trainer = Trainer(config, device=f"cuda:{rank}")
    history = [trainer.train_step() for _ in range(args.steps)][args.warmup:]
    if rank == 0:
        results.update({
            "gpus": world, "device": torch.cuda.get_device_name(0), "params": ONE_B.n_params,
            "tokens_per_step": config.global_batch_tokens,
            "tokens_per_second": statistics.median(m["tokens_per_second"] for m in history),
            "tokens_per_second_per_gpu": statistics.median(m["tokens_per_second"] for m in history) / world,
            "mfu": statistics.median(m["mfu"] for m in history) if history[0]["mfu"] is not None else None,
            "peak_memory_gib": max(m["memory_gib"] for m in history),
            "losses": [round(m["loss"], 4) for m in history],
        })
    if world > 1:
        dist.destroy_process_group()


def worker(rank: int, world: int, args, stage: str, queue) -> None:
    results: dict = {}
    run(rank, world, args, stage, results)
    if rank == 0:
        queue.put(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--activation-checkpointing", default="all")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available() or args.gpus < 1:
        raise SystemExit("bench/gpu_mfu.py needs CUDA GPUs")

    rows = args.micro_batch * args.accumulation * args.gpus * (args.steps + 1)
    tokens = np.random.default_rng(0).integers(3, ONE_B.vocab_size, size=(rows, args.seq + 1), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        stage = write_rows_stage(f"{folder}/tokens", tokens, [[0]] * rows, ONE_B.vocab_size)
        if args.gpus == 1:
            results: dict = {}
            run(0, 1, args, stage, results)
        else:
            context = mp.get_context("spawn")
            queue = context.Queue()
            mp.spawn(worker, args=(args.gpus, args, stage, queue), nprocs=args.gpus, join=True)
            results = queue.get()
    print(json.dumps({**results, "settings": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
