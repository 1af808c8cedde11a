"""Sample text the benchmarks share: the Gutenberg books of ../shared/corpora."""

from __future__ import annotations

from pathlib import Path

BOOKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora" / "books"


def book_paragraphs() -> list[str]:
    paragraphs = []
    for book in sorted(BOOKS.glob("pg*.txt")):
        text = book.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
        paragraphs += [p for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise SystemExit(f"no books found in {BOOKS}")
    return paragraphs
