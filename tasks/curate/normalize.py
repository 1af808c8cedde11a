"""CCNet's text normalisation, applied before hashing lines (dedup) and before tokenising (quality).

:func:`normalize` lowercases, strips accents (combining marks after NFD decomposition), turns every
decimal digit (any script) into ``0``, maps CJK and typographic punctuation to ASCII and removes
control characters (C0, DEL, C1: newlines and tabs included, so call it per line). The same
function must run at training and at scoring time: a model only knows the text it was trained on.

:func:`normalize_for_dedup` is CCNet's cheaper variant for line hashing: no accent stripping, and
the mapped punctuation is removed instead of replaced.
"""

from __future__ import annotations

import re
import unicodedata

# CCNet's table: full-width and CJK punctuation, typographic quotes and dashes -> ASCII. "１" -> '"'
# looks odd but is CCNet's, and digits are turned into 0 before this table is applied anyway.
UNICODE_PUNCTUATION = {
    "，": ",",
    "。": ".",
    "、": ",",
    "„": '"',
    "”": '"',
    "“": '"',
    "«": '"',
    "»": '"',
    "１": '"',
    "」": '"',
    "「": '"',
    "《": '"',
    "》": '"',
    "´": "'",
    "∶": ":",
    "：": ":",
    "？": "?",
    "！": "!",
    "（": "(",
    "）": ")",
    "；": ";",
    "–": "-",
    "—": " - ",
    "．": ". ",
    "～": "~",
    "’": "'",
    "…": "...",
    "━": "-",
    "〈": "<",
    "〉": ">",
    "【": "[",
    "】": "]",
    "％": "%",
    "►": "-",
}
_PUNCTUATION_TABLE = str.maketrans(UNICODE_PUNCTUATION)
_PUNCTUATION_CLASS = "".join(re.escape(c) for c in UNICODE_PUNCTUATION)
_NON_PRINTING_CLASS = "".join(re.escape(chr(c)) for c in [*range(0, 32), *range(127, 160)])
_NON_PRINTING = re.compile(f"[{_NON_PRINTING_CLASS}]")
_PUNCTUATION_OR_NON_PRINTING = re.compile(f"[{_PUNCTUATION_CLASS}{_NON_PRINTING_CLASS}]")
# \d in Python's re is Unicode Nd: Arabic-Indic, Devanagari, full-width digits all become 0.
_DIGIT = re.compile(r"\d")


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text)
    if decomposed.isascii():
        return decomposed
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def normalize(line: str) -> str:
    """CCNet's ``normalize`` with its defaults (accents, case, numbers, punctuation replaced)."""
    line = line.strip()
    if not line:
        return line
    line = strip_accents(line.lower())
    line = _DIGIT.sub("0", line)
    line = line.translate(_PUNCTUATION_TABLE)
    return _NON_PRINTING.sub("", line)


def normalize_for_dedup(line: str) -> str:
    """CCNet's ``normalize_for_dedup``: lowercase, digits -> 0, mapped punctuation and control chars removed."""
    line = line.strip()
    if not line:
        return line
    line = _DIGIT.sub("0", line.lower())
    return _PUNCTUATION_OR_NON_PRINTING.sub("", line)
