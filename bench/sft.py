"""Supervised fine-tuning on CPU: our packed SFT loop against TRL's SFTTrainer, on the same model,
dialogues, sequence length and batch: tokens per second, packing density and the loss beside them.

    python bench/sft.py [--dialogues 3000] [--hh 0] [--seq 256] [--rows 8] [--steps 30]
                        [--dim 384 --layers 6 --heads 6] [--trl-modes packed,padded] [--trl-path /tmp/trl-aside]

On 2 CPU cores `--hh 300` with the defaults (a 12M model) takes about 20 minutes, most of it TRL
padded; `--dim 128 --layers 2 --heads 4 --steps 4 --dialogues 400` checks the whole path in a minute.

TRL is a peer, never a dependency of the project: install it aside, into a folder this bench puts
on sys.path for itself only (TRL 1.16 runs on transformers 5; --no-deps keeps torch and
transformers those of the project's environment):

    .venv/bin/pip install --no-deps --target /tmp/trl-aside trl==1.16.0 accelerate==1.16.0 \\
        datasets==5.2.0 psutil dill multiprocess xxhash

What both train: `--dialogues` synthetic instructions (tasks.synthetic.instructions), plus `--hh`
Anthropic HH dialogues (the "chosen" transcripts of harmless-base-test through HHReader), ingested
as one dialogue stage; a SentencePiece tokenizer trained on the synthetic texts (and the HH
transcripts when given), exported for transformers with Llama 2's chat template; one randomly
initialised LLaMA of the given shape (vocabulary = the tokenizer's), saved as a Hugging Face
LlamaForCausalLM folder, so both start from the same weights. The same optimizer settings (AdamW
0.9/0.95, eps 1e-5, weight decay 0.1, clip 1.0, lr cosine to 10% without warm-up), fp32, one
step = `--rows` rows of `--seq` tokens, on `--threads` threads.

  ours         the dialogue stage packed by tasks.sft_tokens.pack_dialogues (whole examples per row,
               best-fit decreasing, EOS padding, loss mask), trained by modeling.train.Trainer with
               modeling.sft.SFTConfig (loss on answers only, attention kept within each example,
               positions restarting per example)
  TRL packed   SFTTrainer on the same dialogues as `messages`, tokenized by TRL with our chat
               template (plus {% generation %} markers around each answer, which TRL needs for
               assistant_only_loss=True), packing=True with packing_strategy="bfd" (best-fit
               decreasing, whole examples, which makes TRL padding-free: a step's rows are one
               flattened sequence with position_ids, no padding computed), max_length = seq + 1 (a
               packed row holds seq + 1 tokens, as ours), per_device_train_batch_size = rows
  TRL padded   the same without packing (padding_free=False): each step is a batch of whole
               examples padded to the longest, as many examples as ours packs into --rows rows on
               average, so both train on about as many answer tokens a step

Before TRL trains, the examples in its prepared dataset (packed rows split at their seq_lengths)
are checked against ours (tasks.chat_format.encode_dialogue, cut to a row): the same ids and loss
masks, example for example, or the bench stops. (TRL warns that the template leaves the answer's
EOS out of the loss mask: its probe decodes EOS to "" with this tokenizer and takes it for
whitespace; the check shows EOS is trained on, as ours.) Rates are over the steps
after the first (warm-up), from wall-clock times at the end of each step, data loading included:
"computed" counts every token the model forwarded, "non-padding" only example tokens, "answer"
the loss tokens. Row fill is a step's example tokens over its budget of rows x (seq + 1) tokens.
The loss is the mean over the step's answer tokens, the same definition on both sides; the two
sides see the dialogues in different orders (each shuffles its own way), so compare the trend, not
the digits. Data prep is, for ours, ingest and packing as Ray stages (parquet parts, receipts,
manifests; Ray already started), for TRL tokenizing and packing in memory inside SFTTrainer.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from modeling.checkpoints import save_hf
from modeling.configs import ModelConfig
from modeling.llama import IGNORE_INDEX, Llama
from modeling.sft import SFTConfig
from modeling.train import Trainer
from tasks.chat_format import CHAT_TEMPLATE, encode_dialogue
from tasks.dialogues.ingest import ingest_dialogues
from tasks.dialogues.readers import HHReader, MessagesReader, parse_hh_transcript
from tasks.dialogues.records import read_dialogues
from tasks.ray_runtime import ensure_ray
from tasks.sft_tokens import pack_dialogues
from tasks.stage import units_from_stage
from tasks.storage import resolve
from tasks.synthetic.instructions import make_instructions, tokenizer_texts, write_jsonl
from tasks.tokenizer import export_hf, train_tokenizer

HH_PATH = "/work/shared/corpora/preferences/harmless-base-test.jsonl.gz"
INSTALL_TRL = ("/work/main/.venv/bin/pip install --no-deps --target {path} trl==1.16.0 accelerate==1.16.0 "
               "datasets==5.2.0 psutil dill multiprocess xxhash")
# The answer turn of our template; TRL's assistant_only_loss takes the tokens inside {% generation %}.
ANSWER_TURN = "{{- ' ' + message['content'].strip() + ' ' + eos_token -}}"


def training_template() -> str:
    """Our chat template with each answer (and its EOS) inside {% generation %} markers."""
    if CHAT_TEMPLATE.count(ANSWER_TURN) != 1:
        raise RuntimeError("tasks.chat_format.CHAT_TEMPLATE changed: update ANSWER_TURN in bench/sft.py")
    return CHAT_TEMPLATE.replace(ANSWER_TURN, "{%- generation -%}" + ANSWER_TURN + "{%- endgeneration -%}")


def import_trl(path: str):
    sys.path.insert(0, path)
    try:
        import trl
    except ImportError as error:
        sys.exit(f"TRL is not importable from {path} ({error}); install it aside (never into the project's "
                 f"environment):\n    {INSTALL_TRL.format(path=path)}\nor pass --trl-path")
    return trl


# ------------------------------------------------------------------------------------------- data


def hh_texts(limit: int) -> list[str]:
    """The first `limit` HH "chosen" transcripts' messages, as tokenizer training text."""
    texts = []
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as lines:
        for line in lines:
            if len(texts) >= limit:
                break
            messages = parse_hh_transcript(json.loads(line)["chosen"])
            if not hasattr(messages, "reason"):
                texts += [message.content for message in messages]
    return texts


def prepare(work: Path, args) -> dict:
    """Tokenizer, dialogue stage, packed SFT stage and the dialogues both sides train on."""
    texts = tokenizer_texts(2000) + (hh_texts(args.hh) if args.hh else [])
    tokenizer = train_tokenizer(texts, work / "spm", vocab_size=args.vocab, hard_vocab_limit=False)
    hf_tokenizer = export_hf(tokenizer, work / "hf-tokenizer")

    ensure_ray()
    started = time.perf_counter()
    write_jsonl(work / "instructions.jsonl", make_instructions(args.dialogues, seed=args.seed))
    stage = ingest_dialogues("instructions", [str(work / "instructions.jsonl")], str(work / "data"), MessagesReader())
    if args.hh:
        head = work / "hh.jsonl"
        with gzip.open(HH_PATH, "rt", encoding="utf-8") as lines:
            head.write_text("".join(line for _, line in zip(range(args.hh), lines)))
        stage = ingest_dialogues("hh", [str(head)], str(work / "data"), HHReader())
    packed = pack_dialogues(stage["stage_dir"], tokenizer, str(work / "data"), seq_len=args.seq, seed=args.seed)
    ours_prep = time.perf_counter() - started

    # The dialogues as the stage holds them, those our packer keeps (an answer within the row).
    row_tokens = args.seq + 1
    dialogues, examples = [], []
    for unit in units_from_stage(resolve(stage["stage_dir"])):
        for dialogue in read_dialogues(unit.input.uri):
            messages = [{"role": m.role, "content": m.content} for m in dialogue.messages]
            example = encode_dialogue(tokenizer, messages)
            if any(example.loss_mask[:row_tokens]):
                dialogues.append(messages)
                examples.append(example)
    return {"tokenizer": tokenizer, "hf_tokenizer": hf_tokenizer, "packed": packed, "dialogues": dialogues,
            "examples": examples, "ours_prep_seconds": ours_prep}


def trl_examples(dataset) -> Counter:
    """The examples TRL trains on, as (ids, loss mask) pairs, packed rows split at their seq_lengths."""
    found: Counter = Counter()
    for row in dataset:
        ids, labels = row["input_ids"], row["labels"]
        start = 0
        for length in row.get("seq_lengths") or [len(ids)]:
            found[tuple(ids[start:start + length]), tuple(x != IGNORE_INDEX for x in labels[start:start + length])] += 1
            start += length
    return found


def our_examples(data: dict, row_tokens: int) -> Counter:
    return Counter((tuple(e.ids[:row_tokens]), tuple(e.loss_mask[:row_tokens])) for e in data["examples"])


# ------------------------------------------------------------------------------------------- runs


def rate(amounts: list[int], ends: list[float]) -> float:
    """Per second over steps 2..n (the first is warm-up), from the times at which steps ended."""
    return sum(amounts[1:]) / (ends[-1] - ends[0])


def summary(name: str, steps: list[dict], ends: list[float], row_budget: int, prep_seconds: float,
            stage_fill: float) -> dict:
    column = {key: [s[key] for s in steps] for key in steps[0]}
    losses = column["loss"]
    tail = max(1, len(losses) // 4)
    return {
        "name": name,
        "computed_tokens_per_second": rate(column["computed"], ends),
        "non_padding_tokens_per_second": rate(column["non_padding"], ends),
        "answer_tokens_per_second": rate(column["answer"], ends),
        "seconds_per_step": (ends[-1] - ends[0]) / (len(ends) - 1),
        "computed_tokens_per_step": statistics.mean(column["computed"]),
        "non_padding_tokens_per_step": statistics.mean(column["non_padding"]),
        "answer_tokens_per_step": statistics.mean(column["answer"]),
        "non_padding_share": sum(column["non_padding"]) / sum(column["computed"]),
        "row_fill": sum(column["non_padding"]) / (len(steps) * row_budget),
        "stage_row_fill": stage_fill,
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "tail_loss": statistics.mean(losses[-tail:]),
        "tail_steps": tail,
        "data_prep_seconds": prep_seconds,
    }


def ours_run(work: Path, data: dict, shape: ModelConfig, hf_model: Path, args) -> dict:
    config = SFTConfig(
        run_name="bench-ours", model=shape, data=data["packed"]["stage_dir"], output=str(work / "runs"),
        init=str(hf_model), steps=args.steps, seq_len=args.seq, global_batch_tokens=args.rows * args.seq,
        micro_batch_rows=args.micro, optimizer={"lr": args.lr}, schedule={"warmup_steps": 0}, export_hf=False,
        seed=args.seed)
    trainer = Trainer(config, initial_weights=config.initial_weights())
    bos = data["tokenizer"].bos_id
    counted: list[dict] = []
    source, next_batch = trainer.batches, trainer.batches.next_batch

    def counting_next_batch(rows: int):
        batch = next_batch(rows)
        padding = 0
        for inputs, doc_ids in zip(batch.inputs, batch.doc_ids):
            last = doc_ids[-1]
            in_last = doc_ids == last
            # every example opens with BOS; the row's padding is a document of EOS ids
            if inputs[in_last.nonzero()[0, 0]] != bos:
                padding += int(in_last.sum())
        counted.append({"computed": batch.inputs.numel(), "non_padding": batch.inputs.numel() - padding,
                        "answer": batch.loss_tokens})
        return batch

    source.next_batch = counting_next_batch
    steps, ends = [], []
    for _ in range(args.steps):
        metrics = trainer.train_step()
        ends.append(time.perf_counter())
        micro = counted[-trainer.accumulation:]
        steps.append({key: sum(m[key] for m in micro) for key in ("computed", "non_padding", "answer")}
                     | {"loss": metrics["loss"]})
        assert steps[-1]["answer"] == metrics["loss_tokens"]
    counts = data["packed"]
    stage_fill = sum(s["tokens"] for s in counts["sources"].values()) / (counts["rows"] * counts["row_tokens"])
    return summary("ours", steps, ends, args.rows * (args.seq + 1), data["ours_prep_seconds"], stage_fill)


def trl_run(trl, work: Path, data: dict, hf_model: Path, mode: str, args) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(data["hf_tokenizer"], split_special_tokens=False)
    tokenizer.chat_template = training_template()
    model = LlamaForCausalLM.from_pretrained(hf_model, attn_implementation="sdpa", dtype=torch.float32)
    packed = mode == "packed"
    counts = data["packed"]
    examples_per_row = len(data["examples"]) / counts["rows"]
    if packed:
        batch = args.micro
    else:  # as many whole examples a step as ours packs into its rows, on average
        batch = max(1, round(examples_per_row * args.micro))
    config = trl.SFTConfig(
        output_dir=str(work / f"trl-{mode}"), max_steps=args.steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=args.rows // args.micro, learning_rate=args.lr, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-5, max_grad_norm=1.0, optim="adamw_torch", seed=args.seed, data_seed=args.seed,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=0, disable_tqdm=True, max_length=args.seq + 1, packing=packed,
        packing_strategy="bfd", padding_free=packed, assistant_only_loss=True, completion_only_loss=False,
        dataset_num_proc=None,
    )
    counted: list[dict] = []
    ends: list[float] = []

    class CountingTrainer(trl.SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            non_padding = int(mask.sum()) if mask is not None else ids.numel()
            counted.append({"computed": ids.numel(), "non_padding": non_padding,
                            "answer": int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())})
            return super().training_step(model, inputs, num_items_in_batch)

    class StepTimes(TrainerCallback):
        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    started = time.perf_counter()
    dataset = Dataset.from_list([{"messages": messages} for messages in data["dialogues"]])
    trainer = CountingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[StepTimes()])
    prep = time.perf_counter() - started
    stage_fill = None
    if packed:
        lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
        stage_fill = sum(lengths) / (len(lengths) * (args.seq + 1))
    if trl_examples(trainer.train_dataset) != our_examples(data, args.seq + 1):
        sys.exit(f"TRL {mode}: the examples TRL tokenized (ids and loss masks) are not those ours packs; the two "
                 f"sides would not train on the same tokens")
    print(f"TRL {mode}: its {len(data['examples'])} examples are ours, ids and loss masks identical", flush=True)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    accumulation = args.rows // args.micro
    steps = []
    for step, loss in enumerate(losses):
        micro = counted[step * accumulation:(step + 1) * accumulation]
        steps.append({key: sum(m[key] for m in micro) for key in ("computed", "non_padding", "answer")}
                     | {"loss": loss})
    return summary(f"TRL {mode}", steps, ends, args.rows * (args.seq + 1), prep, stage_fill)


# ------------------------------------------------------------------------------------------- report

ROWS = [
    ("computed tokens/s", "computed_tokens_per_second", "{:10.0f}", True),
    ("non-padding tokens/s", "non_padding_tokens_per_second", "{:10.0f}", True),
    ("answer tokens/s", "answer_tokens_per_second", "{:10.0f}", True),
    ("seconds/step", "seconds_per_step", "{:10.3f}", False),
    ("computed tokens/step", "computed_tokens_per_step", "{:10.1f}", True),
    ("non-padding tokens/step", "non_padding_tokens_per_step", "{:10.1f}", True),
    ("answer tokens/step", "answer_tokens_per_step", "{:10.1f}", True),
    ("non-padding share", "non_padding_share", "{:10.3f}", True),
    ("row fill (steps)", "row_fill", "{:10.3f}", True),
    ("row fill (all rows)", "stage_row_fill", "{:10.3f}", True),
    ("loss, step 1", "first_loss", "{:10.3f}", False),
    ("loss, last step", "final_loss", "{:10.3f}", False),
    ("loss, last quarter", "tail_loss", "{:10.3f}", False),
    ("data prep seconds", "data_prep_seconds", "{:10.1f}", False),
]


def print_table(results: list[dict]) -> None:
    ours, peers = results[0], results[1:]
    header = f"{'':26}{'ours':>10}" + "".join(f"{p['name']:>14}{'ours/it':>9}" for p in peers)
    print(header)
    for label, key, form, ratio in ROWS:
        line = f"{label:26}" + (form.format(ours[key]) if ours[key] is not None else f"{'-':>10}")
        for peer in peers:
            value = peer[key]
            line += f"{'':4}" + (form.format(value) if value is not None else f"{'-':>10}")
            line += f"{ours[key] / value:8.2f}x" if ratio and value and ours[key] is not None else f"{'':9}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=3000, help="synthetic instruction dialogues")
    parser.add_argument("--hh", type=int, default=0, help="HH 'chosen' dialogues added (harmless-base-test)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rows", type=int, default=8, help="rows a step")
    parser.add_argument("--micro", type=int, default=None, help="rows a micro batch (default: all, no accumulation)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=2000, help="tokenizer vocabulary at most (SentencePiece may stop short)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-modes", default="packed,padded")
    parser.add_argument("--trl-path", default="/tmp/trl-aside", help="folder TRL is installed in (pip --target)")
    args = parser.parse_args()
    args.micro = args.micro or args.rows
    if args.rows % args.micro:
        parser.error("--rows must be a multiple of --micro")
    trl = import_trl(args.trl_path)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as folder:
        work = Path(folder)
        data = prepare(work, args)
        tokenizer = data["tokenizer"]
        shape = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, vocab_size=tokenizer.vocab_size,
                            multiple_of=64, max_seq_len=2 * args.seq)
        torch.manual_seed(args.seed)
        hf_model = save_hf(Llama(shape), work / "init", bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
        counts = data["packed"]
        print(f"{len(data['dialogues'])} dialogues ({args.dialogues} synthetic, {args.hh} HH), tokenizer {tokenizer.vocab_size} pieces; model dim {args.dim} x "
              f"{args.layers} layers ({shape.n_params / 1e6:.1f}M params); {args.steps} steps of {args.rows} rows x "
              f"{args.seq} tokens (micro {args.micro}); ours packed {counts['rows']} rows; {args.threads} thread(s); "
              f"TRL {trl.__version__}", flush=True)
        results = [ours_run(work, data, shape, hf_model, args)]
        for mode in args.trl_modes.split(","):
            results.append(trl_run(trl, work, data, hf_model, mode, args))
    print_table(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
