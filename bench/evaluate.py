"""Log-likelihood requests through lm-evaluation-harness: our `llamaline` model against lm-eval's
own `hf` model (transformers' LlamaForCausalLM) on the same exported folder, the same requests,
in one run: requests per second of each, and whether their scores agree.

    python bench/evaluate.py [--shots 4] [--dim 256 --layers 4 --heads 4 --vocab 32000] [--batch 16]
                             [--threads 1] [--repeats 2]

On 2 CPU cores the defaults (1,650 requests, a 19M model with LLaMA's 32k vocabulary) take about
two minutes; `--shots 0 --dim 64 --layers 2` checks the whole path in half a minute.

The requests are those of the synthetic benchmarks (tasks/synthetic/benchmarks.py): every choice
of the colours records and the answer of each homes and doubles record, after 0 to `--shots`
seeded few-shot examples, so requests run from about 15 tokens to 150. The model is a
seeded random LLaMA of the given shape, exported by modeling.checkpoints.save_hf with a
SentencePiece tokenizer trained on the tasks' text; both models load that folder, in fp32, on
`--threads` threads, with the same batch size. Ours is asked with add_bos_token=false: lm-eval's hf
model reads our export without BOS (modeling/harness.py), and the same tokens are what make the
scores comparable. Each side first answers `--batch` requests untimed (warm-up), then all of them
`--repeats` times, the two sides taking turns; the fastest pass of each is reported. Agreement:
the largest difference of a request's log-likelihood, the share of greedy flags equal, the share
of colours questions where both pick the same choice (the most likely), and colours' accuracy
from each side's numbers.

Both share forwards: lm-eval's hf model one per distinct input (context and continuation but its
last token), ours one per input no other input extends (`modeling.evaluate.score_spans`).
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
from modeling.llama import Llama
from tasks.synthetic.benchmarks import corpus_documents, write_synthetic_tasks
from tasks.tokenizer import train_tokenizer


def requests_of(tasks: dict, shots: int) -> tuple[list[tuple[str, str]], list[tuple[int, int, int]]]:
    """(context, continuation) pairs, and for each colours record with its shots its first
    request's index, its choice count and the right choice."""
    pairs, colours = [], []
    for shot in range(shots + 1):
        for name, task in tasks.items():
            for i, record in enumerate(task.test):
                prompt = task.prompt(i, shot, seed=0)
                if task.kind == "multiple_choice":
                    colours.append((len(pairs), len(record.choices), record.answer))
                    pairs += [(prompt, " " + choice) for choice in record.choices]
                else:
                    pairs.append((prompt, " " + record.target_text(task.kind)))
    return pairs, colours


def timed_loglikelihood(model, instances: list) -> tuple[list[tuple[float, bool]], float]:
    started = time.perf_counter()
    answers = model.loglikelihood(instances, disable_tqdm=True)
    return answers, time.perf_counter() - started


def picks(answers: list[tuple[float, bool]], colours: list[tuple[int, int, int]]) -> list[int]:
    """The most likely choice of each colours record."""
    return [max(range(n), key=lambda c: answers[first + c][0]) for first, n, _ in colours]


def accuracy(picked: list[int], colours: list[tuple[int, int, int]]) -> float:
    return sum(pick == right for pick, (_, _, right) in zip(picked, colours)) / len(colours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=4, help="requests after 0..shots few-shot examples")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000, help="the model's vocabulary (its tokenizer's may be less)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes of each, the fastest reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # everything is local; never wait on the network
        os.environ[name] = "1"

    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from modeling.harness import LlamalineLM

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as folder:
        work = Path(folder)
        tasks = write_synthetic_tasks(work / "tasks", n=64, seed=args.seed)
        tokenizer = train_tokenizer(corpus_documents(tasks, 300), work / "tokenizer", vocab_size=400,
                                    hard_vocab_limit=False)
        shape = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, vocab_size=args.vocab,
                            multiple_of=64, max_seq_len=1024)
        torch.manual_seed(args.seed)
        exported = save_hf(Llama(shape), work / "hf", tokenizer_files=[work / "tokenizer" / "tokenizer.model"])
        pairs, colours = requests_of(tasks, args.shots)
        answers: dict[str, list[tuple[float, bool]]] = {}
        instances = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=0) for pair in pairs]
        lengths = [len(tokenizer.encode(context + continuation, bos=False)) for context, continuation in pairs]
        print(f"{len(pairs)} log-likelihood requests of {min(lengths)}-{max(lengths)} tokens (mean "
              f"{sum(lengths) / len(lengths):.0f}); model dim {args.dim} x {args.layers} layers, vocabulary "
              f"{args.vocab} ({shape.n_params / 1e6:.1f}M params), batch {args.batch}, {args.threads} thread(s); "
              f"lm-eval {lm_eval.__version__}", flush=True)
        models = {"ours": LlamalineLM(checkpoint=str(exported), batch_size=args.batch, add_bos_token=False),
                  "hf": HFLM(pretrained=str(exported), dtype="float32", device="cpu", batch_size=args.batch)}
        seconds: dict[str, list[float]] = {name: [] for name in models}
        for model in models.values():
            model.loglikelihood(instances[:args.batch], disable_tqdm=True)  # warm-up
        for _ in range(args.repeats):  # taking turns, so a busy spell of the machine slows both
            for name, model in models.items():
                answers[name], elapsed = timed_loglikelihood(model, instances)
                seconds[name].append(elapsed)
    our_answers, their_answers = answers["ours"], answers["hf"]
    our_seconds, their_seconds = min(seconds["ours"]), min(seconds["hf"])

    difference = max(abs(a[0] - b[0]) for a, b in zip(our_answers, their_answers))
    greedy_equal = sum(a[1] == b[1] for a, b in zip(our_answers, their_answers)) / len(pairs)
    our_picks, their_picks = picks(our_answers, colours), picks(their_answers, colours)
    picks_equal = sum(a == b for a, b in zip(our_picks, their_picks)) / len(colours)
    results = {"requests": len(pairs), "ours_requests_per_second": len(pairs) / our_seconds,
               "hf_requests_per_second": len(pairs) / their_seconds, "ratio": their_seconds / our_seconds,
               "max_loglikelihood_difference": difference, "greedy_flags_equal": greedy_equal,
               "colours_picks_equal": picks_equal, "colours_acc_ours": accuracy(our_picks, colours),
               "colours_acc_hf": accuracy(their_picks, colours),
               "wall_seconds": time.perf_counter() - started}
    print(f"{'':30}{'ours':>10}{'hf':>10}{'ours/hf':>9}")
    print(f"{'requests/s':30}{results['ours_requests_per_second']:10.1f}{results['hf_requests_per_second']:10.1f}"
          f"{results['ratio']:8.2f}x")
    print(f"{'seconds':30}{our_seconds:10.2f}{their_seconds:10.2f}")
    print(f"{'colours acc':30}{results['colours_acc_ours']:10.4f}{results['colours_acc_hf']:10.4f}")
    print(f"max |log-likelihood difference| {difference:.2e} nats; greedy flags equal {greedy_equal:.1%}; "
          f"colours choices picked equal {picks_equal:.1%}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
