"""A reward model on the real Anthropic HH harmless pairs: ingested, held out by prompt, packed,
trained from scratch at a tiny size on 2 CPUs and evaluated on the held-out pairs. A tiny model
from scratch is not expected to judge harmlessness well; the test holds the accounting (every
pair ends in exactly one place) and that the run learns its training pairs, and prints the
held-out accuracy for the record."""

from __future__ import annotations

import gzip
import json

import numpy as np

from modeling.reward import RewardConfig
from modeling.reward_eval import accuracy_report, score_pair_stage
from modeling.train import Trainer
from tasks.preferences.ingest import ingest_comparisons
from tasks.preferences.readers import HHPairReader
from tasks.reward_tokens import pack_comparisons
from tasks.tokenizer import train_tokenizer
from tests.modeling.helpers import tiny_config

SEQ_LEN = 511


def hh_texts(path, limit: int) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["chosen"] for _, line in zip(range(limit), f)]


def test_real_hh_pairs_train_and_evaluate(tmp_path, ray_local, hh_harmless, one_thread):
    tokenizer = train_tokenizer(hh_texts(hh_harmless, 1500), tmp_path / "tokenizer", vocab_size=1000)
    ingested = ingest_comparisons("hh", [str(hh_harmless)], str(tmp_path / "data"), HHPairReader())
    totals = ingested["totals"]["by_source"]["hh"]
    stages = {split: pack_comparisons(ingested["stage_dir"], tokenizer, str(tmp_path / "data"), split=split,
                                      stage_name=f"pairs-{split}", seq_len=SEQ_LEN, seed=0)
              for split in ("train", "test")}
    counts = {split: stage["sources"]["hh"] for split, stage in stages.items()}
    # Every kept comparison is in one split, packed there or dropped as too long, never lost.
    assert counts["train"]["pairs"] + counts["test"]["pairs"] == totals["kept"]
    for split in ("train", "test"):
        c = counts[split]
        assert c["pairs"] + c["other_split"] == totals["kept"]
        assert c["pairs"] == c["pairs_packed"] + sum(c["dropped"].values())
    held_out_pairs = counts["test"]["pairs_packed"]
    assert held_out_pairs > 50

    config = RewardConfig(run_name="hh", output=str(tmp_path / "runs"), data=stages["train"]["stage_dir"],
                          model=tiny_config(vocab_size=1000, max_seq_len=SEQ_LEN + 1), epochs=1, seq_len=SEQ_LEN,
                          global_batch_tokens=16 * SEQ_LEN, micro_batch_rows=16, margins="none", export_hf=False,
                          optimizer={"lr": 3e-3, "weight_decay": 0.0}, schedule={"warmup_steps": 5})
    trainer = Trainer(config)
    history = trainer.train()
    report = accuracy_report(score_pair_stage(trainer.model, stages["test"]["stage_dir"]))
    train_report = accuracy_report(score_pair_stage(trainer.model, stages["train"]["stage_dir"], max_rows=400))
    quarter = max(1, len(history) // 4)
    first, last = (np.mean([m["loss"] for m in part]) for part in (history[:quarter], history[-quarter:]))
    print(f"HH harmless: {totals['kept']} pairs kept ({totals['quarantined']} quarantined); train "
          f"{counts['train']}, test {counts['test']}; {len(history)} steps, loss {first:.3f} -> {last:.3f}; "
          f"accuracy on training pairs {train_report['accuracy']:.3f}, held out {report['accuracy']:.3f} "
          f"over {report['pairs']} pairs")
    assert report["pairs"] == held_out_pairs and set(report["by_rating"]) == {"unrated"}
    assert last < first  # the ranking loss falls over the run
    assert train_report["accuracy"] > 0.6  # it learns the pairs it is trained on
