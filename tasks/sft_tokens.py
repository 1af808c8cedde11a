"""Pack a dialogue stage into fine-tuning rows: Llama 2's chat format, loss on answers only.

Each dialogue of a finished dialogue stage (`tasks.dialogues`) becomes one example, its ids and
loss mask as Meta's `chat_completion` builds them (`tasks.chat_format`); a dialogue whose meta
says `train_on: last_answer` (`tasks.dialogues.records.train_on`; Ghost Attention's) has the loss
on its last answer and that answer's EOS only, counted `last_answer_only`. A part's examples
are packed into rows of `seq_len + 1` tokens by best-fit decreasing (`tasks.tokens.RowBuilder`: as dense as
TRL's "bfd" packing); the rest of a row is padding (EOS ids, never trained on, its own document). An example is never split across rows, so with the document mask and
positions restarting per example (`modeling.objectives`) a packed row trains exactly as its
examples would alone. An example longer than a row is cut to the row; if no answer token is left
it is dropped with the reason `answer_truncated` (it would train on nothing), otherwise counted
`truncated`. Every dialogue is one example or one drop: `dialogues = examples + dropped`.

The rows then go through the token stage's shuffle and shards (`tasks.tokens`) with a `loss_mask`
column; the manifest counts dialogues, examples, answer and padding tokens per source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.chat_format import encode_dialogue
from tasks.dialogues.records import read_dialogues, train_on
from tasks.stage import ShardUnit, units_from_stage
from tasks.storage import resolve
from tasks.tokenizer import Tokenizer
from tasks.tokens import PackedPart, RowBuilder, tokenize_and_pack

SFT_STAGE = "sft-tokens"


@dataclass(frozen=True)
class DialoguePacker:
    name: str = "dialogues"
    loss_mask: bool = True
    labels: bool = False
    tail: str = "padded: a row's room after its last whole example is EOS padding, not trained on"

    def pack(self, unit: ShardUnit, tokenizer: Tokenizer, row_tokens: int, dtype: np.dtype) -> PackedPart:
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: packing dialogues needs an input part")
        rows = RowBuilder(row_tokens, tokenizer.eos_id)
        counts = {"dialogues": 0, "examples": 0, "tokens": 0, "answer_tokens": 0, "truncated": 0,
                  "last_answer_only": 0}
        dropped: dict[str, int] = {}
        for dialogue in read_dialogues(unit.input.uri):
            counts["dialogues"] += 1
            messages = [{"role": m.role, "content": m.content} for m in dialogue.messages]
            try:
                last_answer_only = train_on(dialogue.meta) == "last_answer"
                example = encode_dialogue(tokenizer, messages, last_answer_only=last_answer_only)
            except ValueError as error:  # a finished dialogue stage holds only valid dialogues
                raise ValueError(f"{unit.input.uri}: dialogue {dialogue.id}: {error}") from None
            ids, mask = example.ids[:row_tokens], example.loss_mask[:row_tokens]
            if not any(mask):
                dropped["answer_truncated"] = dropped.get("answer_truncated", 0) + 1
                continue
            counts["truncated"] += len(example.ids) > row_tokens
            counts["last_answer_only"] += last_answer_only
            counts["examples"] += 1
            counts["tokens"] += len(ids)
            counts["answer_tokens"] += sum(mask)
            rows.add(ids, mask)
        built = rows.finish(dtype)
        counts["rows"] = len(built.tokens)
        counts["padding_tokens"] = len(built.tokens) * row_tokens - counts["tokens"]
        doc_starts = pa.array(built.doc_starts, pa.list_(pa.int32()))
        return PackedPart(built.tokens, doc_starts, built.loss_mask, counts, dropped)


def pack_dialogues(dialogue_stage: str, tokenizer: Tokenizer, out_root: str, *, stage_name: str = SFT_STAGE,
                   seq_len: int, seed: int, rows_per_shard: int = 16384) -> dict[str, Any]:
    """Pack a finished dialogue stage into shuffled fine-tuning rows; return the token stage's manifest."""
    units = units_from_stage(resolve(dialogue_stage))
    if not units:
        raise ValueError(f"{dialogue_stage}: the dialogue stage has no parts")
    return tokenize_and_pack(units, tokenizer, out_root, stage_name=stage_name, seq_len=seq_len, seed=seed,
                             rows_per_shard=rows_per_shard, packer=DialoguePacker())
