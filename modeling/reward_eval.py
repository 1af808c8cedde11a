"""Reward-model evaluation: accuracy on held-out comparisons, overall and per rating (Llama 2's
Table 8), and the scores given to chosen and rejected answers.

`score_pair_stage` scores every pair of a pair stage (`tasks.reward_tokens`) once, in stage order;
`accuracy_report` counts a pair right when its chosen answer gets the strictly higher reward (a tie
is wrong: a model that scores everything alike must not look half right). Unrated pairs (Anthropic
HH's) are reported under `unrated`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modeling.reward import RewardModel, batch_of_pairs, margin_table
from tasks.preferences.records import RATINGS
from tasks.reward_tokens import UNRATED
from tasks.token_reader import TokenReader

UNRATED_NAME = "unrated"


def rating_name(code: int) -> str:
    return RATINGS[code] if code < UNRATED else UNRATED_NAME


@dataclass
class PairScores:
    """The rewards of a stage's pairs, one entry per pair."""

    chosen: np.ndarray
    rejected: np.ndarray
    labels: np.ndarray  # rating codes (tasks.reward_tokens.rating_code)

    @property
    def right(self) -> np.ndarray:
        return self.chosen > self.rejected


def score_pair_stage(model: RewardModel, stage: str, *, batch_rows: int = 16,
                     max_rows: int | None = None) -> PairScores:
    """Every pair in the rows of the pair stage `stage` (or in its first `max_rows`), scored by `model`
    in eval mode, `batch_rows` rows at once."""
    reader = TokenReader(stage, 0, 1, seed=0)
    total = reader.rows_per_epoch if max_rows is None else min(max_rows, reader.rows_per_epoch)
    device = model.score.weight.device
    margins = margin_table("none")
    chosen, rejected, labels = [], [], []
    rows = iter(reader)
    model.eval()
    with torch.no_grad():
        for start in range(0, total, batch_rows):
            batch_rows_read = [next(rows) for _ in range(min(batch_rows, total - start))]
            batch_chosen, batch_rejected = batch_of_pairs(batch_rows_read, device, margins).rewards(model)
            chosen.append(batch_chosen.cpu().numpy())
            rejected.append(batch_rejected.cpu().numpy())
            labels.extend(code for row in batch_rows_read for code in row.labels)
    empty = np.zeros(0, dtype=np.float32)
    return PairScores(np.concatenate(chosen) if chosen else empty, np.concatenate(rejected) if rejected else empty,
                      np.array(labels, dtype=np.int64))


def accuracy_report(scores: PairScores) -> dict[str, Any]:
    """{"pairs", "accuracy", "mean_chosen", "mean_rejected", "by_rating": {rating: {"pairs", "accuracy"}}},
    the ratings in Llama 2's order, those without pairs left out."""
    by_rating = {}
    for code in range(UNRATED + 1):
        picked = scores.labels == code
        if picked.any():
            by_rating[rating_name(code)] = {"pairs": int(picked.sum()), "accuracy": float(scores.right[picked].mean())}
    n = len(scores.labels)
    return {
        "pairs": n,
        "accuracy": float(scores.right.mean()) if n else None,
        "mean_chosen": float(scores.chosen.mean()) if n else None,
        "mean_rejected": float(scores.rejected.mean()) if n else None,
        "by_rating": by_rating,
    }
