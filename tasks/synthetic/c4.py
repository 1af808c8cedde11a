"""Synthetic C4 files (`c4-train.NNNNN-of-01024.json.gz`) with the faults real inputs have.

Deterministic for a seed: the same call writes byte-identical files (gzip with a fixed mtime). About
1 line in 50 is broken (invalid JSON, no text, a non-UTF-8 byte) and about 1 document in 10 is a
single sentence, so stages exercise quarantine and drops as well as the happy path.
"""

from __future__ import annotations

import gzip
import io
import json
import random

from tasks.storage import atomic_output, resolve

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an had they you were their one all we can her has there been if more when will would "
    "who so no model data token corpus train llama web crawl book paper wiki river mountain city "
    "music history science language people world system energy water light number small large"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    return " ".join(words).capitalize() + rng.choice(".?!")


def _document_line(rng: random.Random, file_index: int, line_index: int) -> bytes:
    url = f"https://example.org/{file_index}/{line_index}"
    fault = rng.random()
    if fault < 0.007:
        return b'{"url": "' + url.encode() + b'", "text": "unterminated'
    if fault < 0.014:
        return json.dumps({"url": url, "title": "no text field"}).encode()
    if fault < 0.02:
        return json.dumps({"url": url, "text": "caf"}).encode()[:-2] + b'\xe9"}'
    sentences = 1 if rng.random() < 0.1 else rng.randint(4, 30)
    text = "\n".join(_sentence(rng) for _ in range(sentences))
    timestamp = f"2019-04-{1 + line_index % 28:02d}T{line_index % 24:02d}:00:00Z"
    record = {"url": url, "text": text, "timestamp": timestamp}
    return json.dumps(record, ensure_ascii=False, sort_keys=True).encode()


def write_inputs(folder: str, seed: int = 0, files: int = 2, docs_per_file: int = 200) -> list[str]:
    """Write ``files`` C4-style files under ``folder``; return their URIs in order."""
    location = resolve(folder)
    uris = []
    for file_index in range(files):
        rng = random.Random(f"{seed}:{file_index}")
        body = b"\n".join(_document_line(rng, file_index, i) for i in range(docs_per_file)) + b"\n"
        compressed = io.BytesIO()
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
            gz.write(body)
        target = location.join(f"c4-train.{file_index:05d}-of-01024.json.gz")
        with atomic_output(target) as stream:
            stream.write(compressed.getvalue())
        uris.append(target.uri)
    return uris
