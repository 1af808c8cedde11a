"""Common Crawl reader throughput against the bare libraries on the same records; memory at 10x.

    python bench/ingest_commoncrawl.py [--megabytes 8] [--sample PATH]

The input is the sample WARC repeated to about --megabytes of gzip data (concatenated gzip
members are still a valid WARC.gz). Reported, best of --repeats runs:
- our reader (CommonCrawlReader over the file: member-wise gzip, charset chain, main-content
  extraction, title, fastText language ID, metadata), and the same without language ID;
- the bare loop: fastwarc's ArchiveIterator over the response records, resiliparse's charset
  detection and decoding, resiliparse's main-content extraction; no checks, no metadata;
- the ratio of the two times: the overhead our reader adds.
MB/s is of compressed input. Peak RSS is measured in a fresh process reading the 1x and a 10x input
with our reader: streaming, it should stay flat.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_SAMPLE = REPO / ".." / "shared" / "corpora" / "commoncrawl" / "CC-MAIN-2020-34-sample.warc.gz"


def read_ours(path: Path, language_id: bool = True) -> int:
    from tasks.documents import Document
    from tasks.sources import commoncrawl
    from tasks.stage import InputFile, ShardUnit

    detect = commoncrawl.detect_language
    if not language_id:
        commoncrawl.detect_language = lambda text: ("", 0.0)
    try:
        unit = ShardUnit("commoncrawl", 0, InputFile(str(path), path.stat().st_size, ""))
        return sum(isinstance(item, Document) for item in commoncrawl.CommonCrawlReader().read(unit))
    finally:
        commoncrawl.detect_language = detect


def read_bare(path: Path) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    docs = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, record_types=WarcRecordType.response):
            payload = record.reader.read()
            html = bytes_to_str(payload, detect_encoding(payload))
            if extract_plain_text(html, main_content=True).strip():
                docs += 1
    return docs


def best_of(repeats: int, fn, *args) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - started)
    return min(times), result


def repeat_file(sample: Path, target: Path, megabytes: float) -> Path:
    data = sample.read_bytes()
    copies = max(1, round(megabytes * 1e6 / len(data)))
    with open(target, "wb") as out:
        for _ in range(copies):
            out.write(data)
    return target


def peak_rss_mb(path: Path) -> float:
    """Peak RSS of a fresh interpreter that imports the reader and reads ``path`` through."""
    out = subprocess.run(
        [sys.executable, __file__, "--measure-rss", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=8.0, help="compressed size of the timed input")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure-rss", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_rss:
        read_ours(args.measure_rss)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    with tempfile.TemporaryDirectory() as tmp:
        small = repeat_file(args.sample, Path(tmp) / "bench.warc.gz", args.megabytes)
        mb = small.stat().st_size / 1e6
        read_ours(small)  # loads the language model and warms the caches before any timing
        rows = [
            ("our reader", *best_of(args.repeats, read_ours, small)),
            ("our reader without language ID", *best_of(args.repeats, read_ours, small, False)),
            ("bare fastwarc + resiliparse", *best_of(args.repeats, read_bare, small)),
        ]
        print(f"input: {mb:.1f} MB gzip ({args.sample.name} repeated)")
        for name, seconds, docs in rows:
            print(f"{name:32s} {seconds:7.2f} s  {mb / seconds:6.2f} MB/s  {docs / seconds:8.0f} docs/s  ({docs} docs)")
        print(f"overhead: ours / bare = {rows[0][1] / rows[2][1]:.2f}x (without language ID {rows[1][1] / rows[2][1]:.2f}x)")

        large = repeat_file(args.sample, Path(tmp) / "large.warc.gz", args.megabytes * 10)
        print(f"peak RSS: {peak_rss_mb(small):.0f} MB reading {mb:.0f} MB, "
              f"{peak_rss_mb(large):.0f} MB reading {large.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
