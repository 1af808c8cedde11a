"""Reward-model training on CPU: our pair rows through modeling.train.Trainer against TRL's
RewardTrainer, on the same model, comparisons, batches and optimizer: pairs per second, the tokens
each computes per pair, and held-out accuracy by rating beside them.

    python bench/reward.py [--comparisons 3000] [--seq 95] [--pairs 32] [--steps 450] [--lr 3e-3]
                           [--dim 64 --layers 2 --heads 4 --kv-heads 2] [--margins small]
                           [--threads 1] [--trl-path /tmp/trl-aside]

On 2 CPU cores the defaults (a 0.18M model, 6 epochs of the 2413 training pairs a side) take about
80 seconds, Ray's start and the tokenizer included; `--comparisons 600 --steps 6` checks the whole
path in 20 seconds.

TRL is a peer, never a dependency of the project: install it aside, into a folder this bench puts
on sys.path for itself only (as bench/sft.py; --no-deps keeps torch and transformers those of the
project's environment):

    .venv/bin/pip install --no-deps --target /tmp/trl-aside trl==1.16.0 accelerate==1.16.0 \\
        datasets==5.2.0 psutil dill multiprocess xxhash

What both train: `--comparisons` synthetic comparisons with known better answers
(tasks.synthetic.comparisons; about 20% of the prompts held out as split `test`), ingested as a
comparison stage and packed by tasks.reward_tokens.pack_comparisons into rows of `--seq` + 1 tokens
holding several pairs each (best-fit decreasing; each pair's chosen then rejected side, EOS padding
at the row's end, the pairs' ratings as the row's labels), a SentencePiece tokenizer trained on the
synthetic texts and exported for transformers with Llama 2's chat template. One randomly
initialised LLaMA of the given shape stands for the SFT model; RewardConfig(init=...) starts from
it with the score head drawn from the seed, and that same starting model, exported by
modeling.reward.save_reward_hf as a LlamaForSequenceClassification folder, is TRL's start (checked:
both give the same held-out rewards before training). The same optimizer (AdamW 0.9/0.95, eps 1e-5,
no weight decay, clip 1.0; lr cosine to 10% without warm-up: transformers' warm-up gives its first
step lr 0, ours peak/warmup; its cosine reaches 10% a step after the last, ours at the last), fp32,
about `--pairs` comparisons a step, the same loss: -log sigmoid(r_chosen - r_rejected - m(rating))
with Llama 2's `--margins` table (TRL's `margin` column holds our margin of each pair; no
center_rewards term).

  ours   modeling.train.Trainer on modeling.reward.RewardConfig: `--steps` steps of whole rows of
         --seq + 1 tokens, as many a step as make `--pairs` pairs at the train stage's pairs per
         row (a step's pairs vary with their lengths); every side of a row in one forward with a
         document mask and positions restarting at each side, the reward read at each side's EOS
  TRL    trl.RewardTrainer on exactly the pairs ours trained on, in the same order (ours' reader
         recorded, TRL's sampler sequential), `--pairs` a step (as many steps as that makes, the
         last partial batch left out) and pre-tokenized: `chosen_ids`, `rejected_ids` (our rows'
         sides, so identical ids) and `margin`; max_length = a row, so TRL keeps every pair ours
         kept. Its collator stacks the batch's chosen then rejected sides, padded on the right to
         the batch's longest; gradient checkpointing off (TRL defaults it on; ours is off), bf16
         off, no eval, no saving, logs made every step but not printed (ours reports every step
         too).
         The tokenizer's pad token is set to <unk> (0): it has none, and TRL would take EOS, with
         which LlamaForSequenceClassification reads the reward at the token before each answer's
         EOS instead of at the EOS ours reads (see modeling.reward.save_reward_hf)

Held-out accuracy is the share of the test split's pairs whose chosen answer gets the higher
reward, overall and per rating, each model scoring with its own code: ours on the packed test
rows (modeling.reward.batch_of_pairs), TRL's trained model by a transformers forward on the
held-out comparisons chat-formatted by the tokenizer's chat template (apply_chat_template; checked
to be the same ids as our test rows, pair for pair). Rates are over the steps after the first
(warm-up), from wall-clock times at the end of each step, data loading included. "Computed" tokens
count every position a forward processed (ours: whole rows; TRL: two sides padded to the batch's
longest), "non-padding" only the sides' own tokens. Data prep is, for ours, ingest and
packing as Ray stages (parquet parts, manifests; Ray already started), for TRL building the
in-memory dataset and RewardTrainer's preparation of it (its length filter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.llama import Llama
from modeling.reward import RewardConfig, RewardModel, batch_of_pairs, margin_table, save_reward_hf
from modeling.train import Trainer
from tasks.preferences.ingest import ingest_comparisons
from tasks.preferences.readers import ComparisonReader
from tasks.ray_runtime import ensure_ray
from tasks.reward_tokens import answer_ends, pack_comparisons, rating_code
from tasks.synthetic.comparisons import GAP_RATINGS, make_comparisons
from tasks.synthetic.instructions import tokenizer_texts
from tasks.tokenizer import export_hf, train_tokenizer
from tasks.token_reader import TokenReader

INSTALL_TRL = ("/work/main/.venv/bin/pip install --no-deps --target {path} trl==1.16.0 accelerate==1.16.0 "
               "datasets==5.2.0 psutil dill multiprocess xxhash")
CPU = torch.device("cpu")


def import_trl(path: str):
    sys.path.insert(0, path)
    try:
        import trl
    except ImportError as error:
        sys.exit(f"TRL is not importable from {path} ({error}); install it aside (never into the project's "
                 f"environment):\n    {INSTALL_TRL.format(path=path)}\nor pass --trl-path")
    return trl


# ------------------------------------------------------------------------------------------- pairs

Pair = tuple[tuple[int, ...], tuple[int, ...], int]  # chosen ids, rejected ids, rating code


def row_pairs(row, row_tokens: int) -> list[Pair]:
    """A pair row's pairs, in order: their two sides (each through its EOS) and rating codes."""
    tokens = row.tokens.tolist()
    return [(tuple(tokens[chosen_start:chosen_end + 1]), tuple(tokens[chosen_end + 1:rejected_end + 1]), int(code))
            for (chosen_end, rejected_end), chosen_start, code
            in zip(answer_ends(row.doc_starts, row_tokens), row.doc_starts[::2], row.labels)]


def stage_pairs(rows: list, row_tokens: int) -> list[Pair]:
    return [pair for row in rows for pair in row_pairs(row, row_tokens)]


def trl_example(pair: Pair, margins: torch.Tensor) -> dict:
    """RewardTrainer's pre-tokenized form of a pair, with our margin for its rating."""
    chosen, rejected, code = pair
    return {"chosen_ids": list(chosen), "rejected_ids": list(rejected), "margin": float(margins[code])}


def chat_pairs(hf_tokenizer, records: list[dict], row_tokens: int) -> list[Pair]:
    """Comparisons chat-formatted by the transformers tokenizer's chat template, those whose sides
    fit a row together (as our packer keeps them)."""
    pairs = []
    for record in records:
        sides = [tuple(hf_tokenizer.apply_chat_template(
            [*record["context"], {"role": "assistant", "content": answer}], tokenize=True, return_dict=True,
            tokenizer_kwargs={"split_special_tokens": False})["input_ids"])
            for answer in (record["chosen"], record["rejected"])]
        if sum(map(len, sides)) <= row_tokens:
            pairs.append((sides[0], sides[1], rating_code(record["rating"])))
    return pairs


def stage_rows(stage_dir: str) -> list:
    reader = TokenReader(stage_dir, 0, 1, seed=0)
    return [row for _, row in zip(range(reader.rows_per_epoch), reader)]


def accuracy(right: np.ndarray, codes: np.ndarray) -> dict[str, float]:
    """Overall and per rating share of pairs ranked right."""
    result = {"all": float(right.mean())}
    for rating in GAP_RATINGS:
        result[rating] = float(right[codes == rating_code(rating)].mean())
    return result


@torch.no_grad()
def our_rewards(model: RewardModel, rows: list, chunk: int = 128) -> torch.Tensor:
    """(N, 2) rewards of the N pairs of pair rows (stage_pairs' order), chosen and rejected, by our
    model on the packed rows."""
    model.eval()
    out = []
    for start in range(0, len(rows), chunk):
        out.append(torch.stack(batch_of_pairs(rows[start:start + chunk], CPU, margin_table("none")).rewards(model), 1))
    return torch.cat(out)


@torch.no_grad()
def hf_rewards(model, pairs: list[Pair], pad_id: int, chunk: int = 64) -> torch.Tensor:
    """(N, 2) rewards by a transformers sequence classifier: each side right-padded with pad_id (which
    no side ends with), attention mask on its own tokens."""
    model.eval()
    sequences = [side for pair in pairs for side in pair[:2]]
    out = []
    for start in range(0, len(sequences), chunk):
        part = sequences[start:start + chunk]
        ids = torch.full((len(part), max(map(len, part))), pad_id, dtype=torch.long)
        for row, sequence in enumerate(part):
            ids[row, :len(sequence)] = torch.tensor(sequence)
        out.append(model(input_ids=ids, attention_mask=(torch.arange(ids.shape[1])[None] <
                                                         torch.tensor([len(s) for s in part])[:, None]).long()
                         ).logits[:, 0])
    return torch.cat(out).reshape(-1, 2)


# ------------------------------------------------------------------------------------------- data


def prepare(work: Path, args) -> dict:
    tokenizer = train_tokenizer(tokenizer_texts(2000), work / "spm", vocab_size=args.vocab, hard_vocab_limit=False)
    hf_tokenizer = export_hf(tokenizer, work / "hf-tokenizer")
    records = make_comparisons(args.comparisons, seed=args.seed)

    ensure_ray()
    started = time.perf_counter()
    (work / "comparisons.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    comparisons = ingest_comparisons("synthetic", [str(work / "comparisons.jsonl")], str(work / "data"),
                                     ComparisonReader(id_field="id"))
    stages = {split: pack_comparisons(comparisons["stage_dir"], tokenizer, str(work / "data"), split=split,
                                      stage_name=f"pairs-{split}", seq_len=args.seq, seed=args.seed)
              for split in ("train", "test")}
    prep = time.perf_counter() - started
    return {"tokenizer": tokenizer, "hf_tokenizer": hf_tokenizer, "records": records, "stages": stages,
            "test_rows": stage_rows(stages["test"]["stage_dir"]), "ours_prep_seconds": prep}


# ------------------------------------------------------------------------------------------- runs


def rate(amounts: list[float], ends: list[float]) -> float:
    """Per second over steps 2..n (the first is warm-up), from the times at which steps ended."""
    return sum(amounts[1:]) / (ends[-1] - ends[0])


def summary(name: str, steps: list[dict], ends: list[float], prep_seconds: float, held_out: dict) -> dict:
    column = {key: [s[key] for s in steps] for key in steps[0]}
    losses, pairs = column["loss"], sum(column["pairs"])
    tail = max(1, len(losses) // 4)
    return {
        "name": name,
        "pairs_per_second": rate(column["pairs"], ends),
        "computed_tokens_per_second": rate(column["computed"], ends),
        "non_padding_tokens_per_second": rate(column["non_padding"], ends),
        "seconds_per_step": (ends[-1] - ends[0]) / (len(ends) - 1),
        "computed_tokens_per_pair": sum(column["computed"]) / pairs,
        "non_padding_tokens_per_pair": sum(column["non_padding"]) / pairs,
        "padding_share": 1 - sum(column["non_padding"]) / sum(column["computed"]),
        "first_loss": losses[0],
        "tail_loss": statistics.mean(losses[-tail:]),
        "tail_train_accuracy": statistics.mean(column["accuracy"][-tail:]),
        "tail_steps": tail,
        "held_out": held_out,
        "data_prep_seconds": prep_seconds,
    }


def step_rows(train_stage: dict, pairs: int) -> int:
    """Rows a step that hold about `pairs` pairs, at the packed train stage's pairs per row."""
    counts = train_stage["sources"]["synthetic"]
    return max(1, round(pairs * counts["rows"] / counts["pairs_packed"]))


def ours_run(work: Path, data: dict, shape: ModelConfig, args) -> tuple[dict, list[Pair], Path, dict]:
    torch.manual_seed(args.seed)
    sft = save_hf(Llama(shape), work / "sft", bos_token_id=data["tokenizer"].bos_id,
                  eos_token_id=data["tokenizer"].eos_id)
    rows_a_step = step_rows(data["stages"]["train"], args.pairs)
    config = RewardConfig(
        run_name="bench-ours", model=shape, data=data["stages"]["train"]["stage_dir"], output=str(work / "runs"),
        init=str(sft), steps=args.steps, seq_len=args.seq, global_batch_tokens=rows_a_step * args.seq,
        micro_batch_rows=rows_a_step, margins=args.margins, export_hf=False,
        optimizer={"lr": args.lr, "weight_decay": 0.0}, schedule={"warmup_steps": 0}, seed=args.seed)
    weights = config.initial_weights()
    start = RewardModel(shape, score_seed=args.seed)
    start.load_state_dict(weights)
    start_folder = save_reward_hf(start, work / "start")
    row_tokens = args.seq + 1
    before = our_rewards(start, data["test_rows"])

    trainer = Trainer(config, initial_weights=weights)
    consumed: list[Pair] = []
    source = trainer.batches
    rows = source._rows

    def recording():  # the pairs ours trains on, in order, for TRL to train on the same
        for row in rows:
            consumed.extend(row_pairs(row, row_tokens))
            yield row

    source._rows = recording()
    steps, ends = [], []
    for _ in range(args.steps):
        before_step = len(consumed)
        metrics = trainer.train_step()
        ends.append(time.perf_counter())
        step_pairs = consumed[before_step:]
        steps.append({"pairs": len(step_pairs), "computed": rows_a_step * row_tokens,
                      "non_padding": sum(len(c) + len(r) for c, r, _ in step_pairs),
                      "loss": metrics["loss"], "accuracy": metrics["accuracy"]})
        assert metrics["loss_tokens"] == len(step_pairs)
    rewards = our_rewards(trainer.model, data["test_rows"])
    codes = np.array([code for _, _, code in stage_pairs(data["test_rows"], row_tokens)])
    held_out = accuracy((rewards[:, 0] > rewards[:, 1]).numpy(), codes)
    return (summary("ours", steps, ends, data["ours_prep_seconds"], held_out), consumed, start_folder,
            {"before": before, "before_accuracy": accuracy((before[:, 0] > before[:, 1]).numpy(), codes)})


def trl_run(trl, work: Path, data: dict, consumed: list[Pair], start_folder: Path, ours_before: torch.Tensor,
            args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForSequenceClassification, TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    tokenizer = AutoTokenizer.from_pretrained(data["hf_tokenizer"], split_special_tokens=False)
    tokenizer.pad_token = tokenizer.unk_token  # not EOS, which every side ends with (see the docstring)
    pad_id = tokenizer.pad_token_id
    row_tokens = args.seq + 1
    test_pairs = stage_pairs(data["test_rows"], row_tokens)

    # The held-out comparisons chat-formatted by transformers are our test rows, pair for pair.
    test_records = [r for r in data["records"] if r["split"] == "test"]
    held_out_pairs = chat_pairs(tokenizer, test_records, row_tokens)
    if Counter(held_out_pairs) != Counter(test_pairs):
        sys.exit("the held-out comparisons chat-formatted by the HF tokenizer are not our test rows")
    model = LlamaForSequenceClassification.from_pretrained(start_folder, attn_implementation="sdpa",
                                                           dtype=torch.float32)
    # Both start from the same model: the same held-out rewards (ours in row order; here matched by pair).
    order = {pair: n for n, pair in enumerate(test_pairs)}
    start_rewards = hf_rewards(model, held_out_pairs, pad_id)
    ours_start = ours_before[[order[pair] for pair in held_out_pairs]]
    start_gap = float((start_rewards - ours_start).abs().max())
    if start_gap > 1e-4:
        sys.exit(f"TRL's starting model is not ours: held-out rewards differ by up to {start_gap:.2e}")

    trl_steps = len(consumed) // args.pairs
    trained = consumed[:trl_steps * args.pairs]
    config = trl.RewardConfig(
        output_dir=str(work / "trl"), max_steps=trl_steps, per_device_train_batch_size=args.pairs,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-5, max_grad_norm=1.0, optim="adamw_torch", seed=args.seed,
        data_seed=args.seed, train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, max_length=row_tokens, center_rewards_coefficient=None,
        dataset_num_proc=None,
    )
    counted: list[dict] = []
    ends: list[float] = []

    class CountingTrainer(trl.RewardTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            counted.append({"pairs": len(inputs["input_ids"]) // 2, "computed": inputs["input_ids"].numel(),
                            "non_padding": int(inputs["attention_mask"].sum())})
            return super().training_step(model, inputs, num_items_in_batch)

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    margins = margin_table(args.margins)
    started = time.perf_counter()
    dataset = Dataset.from_list([trl_example(pair, margins) for pair in trained])
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[StepTimes()])
    trainer.remove_callback(PrinterCallback)  # logs are still made every step (log_history), not printed
    prep = time.perf_counter() - started
    if len(trainer.train_dataset) != len(trained):
        sys.exit(f"TRL kept {len(trainer.train_dataset)} of the {len(trained)} pairs ours trained on")
    if model.config.pad_token_id != pad_id:
        sys.exit(f"TRL set the model's pad_token_id to {model.config.pad_token_id}, not {pad_id}")
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    if len(logs) != trl_steps or len(counted) != trl_steps:
        sys.exit(f"TRL logged {len(logs)} and ran {len(counted)} steps, not {trl_steps}")
    steps = [c | {"loss": log["loss"], "accuracy": log["accuracy"]} for c, log in zip(counted, logs)]
    rewards = hf_rewards(trainer.model, held_out_pairs, pad_id)
    held_out = accuracy((rewards[:, 0] > rewards[:, 1]).numpy(), np.array([p[2] for p in held_out_pairs]))
    result = summary("TRL", steps, ends, prep, held_out)
    result["start_reward_max_difference"] = start_gap
    return result


# ------------------------------------------------------------------------------------------- report

ROWS = [
    ("pairs/s", "pairs_per_second", "{:10.1f}", True),
    ("computed tokens/s", "computed_tokens_per_second", "{:10.0f}", True),
    ("non-padding tokens/s", "non_padding_tokens_per_second", "{:10.0f}", True),
    ("seconds/step", "seconds_per_step", "{:10.3f}", True),
    ("computed tokens/pair", "computed_tokens_per_pair", "{:10.1f}", True),
    ("non-padding tokens/pair", "non_padding_tokens_per_pair", "{:10.1f}", True),
    ("padding share", "padding_share", "{:10.3f}", False),
    ("loss, step 1", "first_loss", "{:10.3f}", False),
    ("loss, last quarter", "tail_loss", "{:10.3f}", False),
    ("train accuracy, last q.", "tail_train_accuracy", "{:10.3f}", False),
    ("data prep seconds", "data_prep_seconds", "{:10.1f}", False),
]


SHORT = {"all": "all", "significantly_better": "signif.", "better": "better", "slightly_better": "slightly"}


def print_table(ours: dict, peer: dict, before: dict) -> None:
    print(f"{'':26}{'ours':>10}{'TRL':>10}{'ours/TRL':>10}")
    rows = [(label, ours[key], peer[key], form, ratio) for label, key, form, ratio in ROWS]
    rows += [(f"held-out acc. {SHORT[rating]}", ours["held_out"][rating], peer["held_out"][rating], "{:10.3f}",
              False) for rating in SHORT]
    for label, mine, theirs, form, ratio in rows:
        print(f"{label:26}" + form.format(mine) + form.format(theirs) + (f"{mine / theirs:9.2f}x" if ratio else ""))
    print("held-out accuracy before training (both: the same start): "
          + ", ".join(f"{SHORT[k]} {v:.3f}" for k, v in before.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=3000, help="synthetic comparisons (~20%% held out)")
    parser.add_argument("--seq", type=int, default=95, help="a row holds seq + 1 tokens of whole pairs")
    parser.add_argument("--pairs", type=int, default=32, help="comparisons a step (ours: on average), one micro batch")
    parser.add_argument("--steps", type=int, default=450, help="450: 6 epochs of the default train split")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=600, help="tokenizer vocabulary at most")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--margins", choices=("none", "small", "large"), default="small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-path", default="/tmp/trl-aside", help="folder TRL is installed in (pip --target)")
    args = parser.parse_args()
    trl = import_trl(args.trl_path)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-reward-") as folder:
        work = Path(folder)
        data = prepare(work, args)
        tokenizer = data["tokenizer"]
        shape = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                            vocab_size=tokenizer.vocab_size, multiple_of=32, max_seq_len=args.seq + 1)
        counts = {split: stage["sources"]["synthetic"] for split, stage in data["stages"].items()}
        print(f"{args.comparisons} comparisons: {counts['train']['pairs_packed']} train pairs in "
              f"{counts['train']['rows']} rows, {counts['test']['pairs_packed']} held out "
              f"({sum(c.get('dropped', {}).get('too_long', 0) for c in counts.values())} too long); "
              f"tokenizer {tokenizer.vocab_size} pieces; model dim {args.dim} x {args.layers} layers "
              f"({shape.n_params / 1e6:.2f}M params); ours {args.steps} steps of "
              f"{step_rows(data['stages']['train'], args.pairs)} rows, about {args.pairs} pairs, rows of "
              f"{args.seq + 1} tokens; margins {args.margins}; {args.threads} thread(s); TRL {trl.__version__}",
              flush=True)
        ours, consumed, start_folder, start = ours_run(work, data, shape, args)
        peer = trl_run(trl, work, data, consumed, start_folder, start["before"], args)
    print_table(ours, peer, start["before_accuracy"])
    print(json.dumps({"ours": ours, "trl": peer, "before": start["before_accuracy"], "args": vars(args)}))


if __name__ == "__main__":
    main()
