"""Pack comparisons into reward-model rows: one pair a row, the chosen answer then the rejected one.

A comparison is a context (an optional system message, then user and assistant turns ending with
a user turn), a chosen and a rejected answer to it, and a rating (`tasks.preferences.records`).
Each side is the Llama 2 chat encoding of context + answer (`tasks.chat_format.encode_dialogue`),
ending with the answer's EOS. A row of `seq_len + 1` tokens holds the chosen side at offset 0 and
the rejected side at `row_tokens // 2`, each followed by EOS padding to the end of its half (a
document of its own, as in `tasks.sft_tokens`), so `doc_starts` is `[0, chosen padding, half,
rejected padding]`, a padding start left out where a side fills its half. `answer_ends` reads the
two sides' last tokens back from them: the reward is read there, never where a pad id is found
(the padding is EOS, the same id as each side's last token).

The rating goes into the row's `label` column: its index in `RATINGS`, or `UNRATED` for a pair
without one (Anthropic HH), which the loss gives margin 0 (`tasks.preferences.records.margin`).

A pair with a side longer than half a row is dropped (`too_long`): the reward is read at the last
token, so cutting a side would score a text other than the one the annotator compared.

`pack_pairs` packs in-memory comparisons (tuples of context messages, chosen, rejected, rating);
`ComparisonPacker` packs one split of a finished comparison stage through the token stage's
shuffle and shards (`tasks.tokens.tokenize_and_pack`, `pack_comparisons`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.chat_format import encode_dialogue
from tasks.preferences.records import RATINGS, read_comparisons
from tasks.stage import ShardUnit, units_from_stage
from tasks.storage import resolve
from tasks.tokenizer import Tokenizer
from tasks.tokens import PackedPart, tokenize_and_pack

UNRATED = len(RATINGS)  # the label of a pair without a rating (codes 0..len(RATINGS) - 1 are RATINGS)
PAIR_PACKER = "comparison-pairs"

# (context messages, chosen answer, rejected answer, rating or None), messages as {"role", "content"}.
Pair = tuple[Sequence[Mapping[str, str]], str, str, str | None]


def rating_code(rating: str | None) -> int:
    if rating is None:
        return UNRATED
    if rating not in RATINGS:
        raise ValueError(f"rating {rating!r}; ratings are {', '.join(RATINGS)} or None (unrated)")
    return RATINGS.index(rating)


def pack_pairs(pairs: Iterable[Pair], tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart:
    """One row per pair that fits, in input order; counts `pairs`, `rows`, `tokens` (the two sides'),
    `padding_tokens`, and drops `too_long`. A context or answer that breaks Llama 2's format raises."""
    half = row_tokens // 2
    if half < 2:
        raise ValueError(f"rows of {row_tokens} tokens leave no room for a pair")
    rows: list[np.ndarray] = []
    starts: list[list[int]] = []
    labels: list[int] = []
    counts = {"pairs": 0, "tokens": 0}
    dropped: dict[str, int] = {}
    for number, (context, chosen, rejected, rating) in enumerate(pairs):
        counts["pairs"] += 1
        code = rating_code(rating)
        try:
            sides = [encode_dialogue(tokenizer, [*context, {"role": "assistant", "content": answer}]).ids
                     for answer in (chosen, rejected)]
        except ValueError as error:
            raise ValueError(f"comparison {number}: {error}") from None
        if max(map(len, sides)) > half:
            dropped["too_long"] = dropped.get("too_long", 0) + 1
            continue
        row = np.full(row_tokens, tokenizer.eos_id, dtype=dtype)
        row_starts = []
        for offset, ids, end in ((0, sides[0], half), (half, sides[1], row_tokens)):
            row[offset:offset + len(ids)] = ids
            row_starts.append(offset)
            if offset + len(ids) < end:
                row_starts.append(offset + len(ids))  # the padding after this side
            counts["tokens"] += len(ids)
        rows.append(row)
        starts.append(row_starts)
        labels.append(code)
    tokens = np.stack(rows) if rows else np.zeros((0, row_tokens), dtype=dtype)
    counts["rows"] = len(tokens)
    counts["padding_tokens"] = tokens.size - counts["tokens"]
    return PackedPart(tokens, pa.array(starts, pa.list_(pa.int32())), None, counts, dropped,
                      np.array(labels, dtype=np.int32))


def answer_ends(doc_starts: Sequence[int], row_tokens: int) -> tuple[int, int]:
    """The offsets of the chosen and the rejected side's last tokens in a pair row."""
    half = row_tokens // 2
    starts = sorted(int(s) for s in doc_starts)
    if starts[:1] != [0] or half not in starts:
        raise ValueError(f"doc_starts {starts} are not a pair row's (sides at 0 and {half} of {row_tokens})")
    after_half = [s for s in starts if s > half]
    return starts[1] - 1, (after_half[0] if after_half else row_tokens) - 1


@dataclass(frozen=True)
class ComparisonPacker:
    """The comparisons of one split (`train` or `test`) of a comparison stage's part; the others
    are counted as `other_split`."""

    split: str = "train"
    loss_mask: bool = False
    label: bool = True
    tail: str = "padded: each side's half of the row after its EOS is EOS padding"

    @property
    def name(self) -> str:
        return f"{PAIR_PACKER}:{self.split}"

    def pack(self, unit: ShardUnit, tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: packing comparisons needs an input part")
        other_split = 0

        def pairs() -> Iterable[Pair]:
            nonlocal other_split
            for comparison in read_comparisons(unit.input.uri):
                if comparison.split != self.split:
                    other_split += 1
                    continue
                context = [{"role": m.role, "content": m.content} for m in comparison.context]
                yield context, comparison.chosen, comparison.rejected, comparison.rating

        packed = pack_pairs(pairs(), tokenizer, row_tokens, dtype)
        packed.counts["other_split"] = other_split
        return packed


def pack_comparisons(comparison_stage: str, tokenizer: Tokenizer, out_root: str, *, split: str, stage_name: str,
                     seq_len: int, seed: int, rows_per_shard: int = 16384) -> dict[str, Any]:
    """Pack one split of a finished comparison stage into shuffled pair rows; return the token stage's manifest."""
    units = units_from_stage(resolve(comparison_stage))
    if not units:
        raise ValueError(f"{comparison_stage}: the comparison stage has no parts")
    return tokenize_and_pack(units, tokenizer, out_root, stage_name=stage_name, seq_len=seq_len, seed=seed,
                             rows_per_shard=rows_per_shard, packer=ComparisonPacker(split))
