"""Pack comparisons into reward-model rows: several pairs a row, each its chosen then its rejected side.

A comparison is a context (an optional system message, then user and assistant turns ending with
a user turn), a chosen and a rejected answer to it, and a rating (`tasks.preferences.records`).
Each side is the Llama 2 chat encoding of context + answer (`tasks.chat_format.encode_dialogue`),
ending with the answer's EOS. A pair is its two sides laid end to end, chosen first; pairs are
packed whole into rows of `seq_len + 1` tokens by best-fit decreasing on their length
(`tasks.tokens.RowBuilder`, as fine-tuning examples are), and a row's room after its last pair is
EOS padding, a document of its own. A row's `doc_starts` are every side's start in order
`[c1, r1, c2, r2, ...]`, then the padding's if there is any: an even count means a full row, an odd
one that the last document is padding. `answer_ends` reads each side's last token back from them:
the reward is read there, never where a pad id is found (the padding is EOS, the same id as each
side's last token). Packed so, a pair costs about its own tokens of compute, not a whole row (with
Llama 2's rows of 4096 tokens, 300-token sides would leave 3496 tokens of padding).

A row's `labels` are its pairs' ratings, in the pairs' order: each one's index in `RATINGS`, or
`UNRATED` for a pair without one (Anthropic HH), which the loss gives margin 0
(`tasks.preferences.records.margin`).

A pair whose two sides together exceed a row is dropped (`too_long`): the reward is read at the
last token, so cutting a side would score a text other than the one the annotator compared.
Counts reconcile: `pairs = pairs_packed + dropped`.

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
from tasks.tokens import PackedPart, RowBuilder, tokenize_and_pack

UNRATED = len(RATINGS)  # the label of a pair without a rating (codes 0..len(RATINGS) - 1 are RATINGS)
PAIR_PACKER = "packed-comparison-pairs"  # named anew with the layout: a stage of one pair a row is never reused

# (context messages, chosen answer, rejected answer, rating or None), messages as {"role", "content"}.
Pair = tuple[Sequence[Mapping[str, str]], str, str, str | None]


def rating_code(rating: str | None) -> int:
    if rating is None:
        return UNRATED
    if rating not in RATINGS:
        raise ValueError(f"rating {rating!r}; ratings are {', '.join(RATINGS)} or None (unrated)")
    return RATINGS.index(rating)


def pack_pairs(pairs: Iterable[Pair], tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart:
    """Rows of whole pairs by best-fit decreasing; counts `pairs`, `pairs_packed`, `rows`, `tokens` (the
    sides'), `padding_tokens`, and drops `too_long`. A context or answer that breaks Llama 2's format raises."""
    rows = RowBuilder(row_tokens, tokenizer.eos_id)
    codes: list[int] = []
    counts = {"pairs": 0, "pairs_packed": 0, "tokens": 0}
    dropped: dict[str, int] = {}
    for number, (context, chosen, rejected, rating) in enumerate(pairs):
        counts["pairs"] += 1
        code = rating_code(rating)
        try:
            chosen_ids, rejected_ids = (
                encode_dialogue(tokenizer, [*context, {"role": "assistant", "content": answer}]).ids
                for answer in (chosen, rejected))
        except ValueError as error:
            raise ValueError(f"comparison {number}: {error}") from None
        if len(chosen_ids) + len(rejected_ids) > row_tokens:
            dropped["too_long"] = dropped.get("too_long", 0) + 1
            continue
        rows.add(chosen_ids + rejected_ids, doc_starts=(0, len(chosen_ids)))
        codes.append(code)
        counts["pairs_packed"] += 1
        counts["tokens"] += len(chosen_ids) + len(rejected_ids)
    built = rows.finish(dtype)
    counts["rows"] = len(built.tokens)
    counts["padding_tokens"] = built.tokens.size - counts["tokens"]
    labels = pa.array([[codes[n] for n in items] for items in built.items], pa.list_(pa.int32()))
    return PackedPart(built.tokens, pa.array(built.doc_starts, pa.list_(pa.int32())), None, counts, dropped, labels)


def answer_ends(doc_starts: Sequence[int], row_tokens: int) -> list[tuple[int, int]]:
    """Per pair of a pair row, in order, the offsets of its chosen and its rejected side's last tokens."""
    starts = [int(s) for s in doc_starts]
    if len(starts) < 2 or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) \
            or starts[-1] >= row_tokens:
        raise ValueError(f"doc_starts {starts} are not a pair row's (sides from 0 on, ascending, within "
                         f"{row_tokens} tokens)")
    ends = [start - 1 for start in starts[1:]] + [row_tokens - 1]
    return [(ends[n], ends[n + 1]) for n in range(0, len(starts) - 1, 2)]


@dataclass(frozen=True)
class ComparisonPacker:
    """The comparisons of one split (`train` or `test`) of a comparison stage's part; the others
    are counted as `other_split`."""

    split: str = "train"
    loss_mask: bool = False
    labels: bool = True
    tail: str = "padded: a row's room after its last whole pair is EOS padding"

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
    """Pack one split of a finished comparison stage into shuffled rows of pairs; return the token stage's manifest."""
    units = units_from_stage(resolve(comparison_stage))
    if not units:
        raise ValueError(f"{comparison_stage}: the comparison stage has no parts")
    return tokenize_and_pack(units, tokenizer, out_root, stage_name=stage_name, seq_len=seq_len, seed=seed,
                             rows_per_shard=rows_per_shard, packer=ComparisonPacker(split))
