"""C4 as released: `c4-train.NNNNN-of-01024.json.gz`, one JSON object per line with text, url, timestamp."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.documents import BadRecord, Document
from tasks.sources.jsonl import JsonlReader
from tasks.stage import ShardUnit

LICENCE = "ODC-BY-1.0"


@dataclass(frozen=True)
class C4Reader(JsonlReader):
    text_field: str = "text"
    key_field: str = "url"

    def _parse(self, unit: ShardUnit, locator: str, raw: bytes) -> Document | BadRecord:
        item = super()._parse(unit, locator, raw)
        if isinstance(item, Document):
            item.meta.setdefault("language", "en")  # C4 en is English by construction (langdetect >= 0.99)
            item.meta["licence"] = LICENCE
        return item
