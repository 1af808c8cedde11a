"""Books (Project Gutenberg) and arXiv reader throughput and memory on the real sample corpora.

    python bench/ingest_books_arxiv.py [--copies 10] [--corpora ../shared/corpora]

Throughput: the six sample books and the two sample papers (the HoTT book project as a .tar.gz,
the Bitcoin paper as a .gz), each repeated ``--copies`` times as separate input files, read by
the reader alone and then end to end by ``run_shard`` (one unit per file, Parquet part written).
MB/s counts input bytes as stored (for arXiv also the LaTeX bytes once unpacked).

Memory: peak RSS of a fresh process that reads one input, for the largest sample and for an
input 10x larger (the book's text repeated; every .tex file of the project repeated), to show
that memory follows one record, not the file count.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tasks.sources.arxiv import ArxivReader
from tasks.sources.books import BooksReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard

DEFAULT_CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"
READERS = {"books": BooksReader, "arxiv": ArxivReader}


def book_inputs(corpora: Path, folder: Path, copies: int) -> list[Path]:
    paths = []
    for copy in range(copies):
        for book in sorted((corpora / "books").glob("pg*.txt")):
            target = folder / f"c{copy}-{book.name}"
            shutil.copyfile(book, target)
            paths.append(target)
    return paths


def project_tar_gz(project: Path, target: Path, repeat: int = 1) -> Path:
    """The project folder as arXiv serves it; ``repeat`` multiplies every .tex file but main.tex (the chapters)."""
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(project.iterdir()):
            data = path.read_bytes()
            if path.suffix == ".tex" and path.name != "main.tex":
                data *= repeat
            info = tarfile.TarInfo(path.name)
            info.size = len(data)
            archive.addfile(info, fileobj=io.BytesIO(data))
    return target


def arxiv_inputs(corpora: Path, folder: Path, copies: int) -> list[Path]:
    hott = project_tar_gz(corpora / "arxiv" / "hott-book", folder / "hott.tar.gz")
    bitcoin = folder / "bitcoin.gz"
    bitcoin.write_bytes(gzip.compress((corpora / "arxiv" / "bitcoin" / "bitcoin.tex").read_bytes()))
    paths = []
    for copy in range(copies):
        for source in (hott, bitcoin):
            target = folder / f"c{copy}-{source.name}"
            shutil.copyfile(source, target)
            paths.append(target)
    return paths


def latex_bytes(path: Path) -> int:
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path) as archive:
            return sum(m.size for m in archive.getmembers() if m.name.endswith(".tex"))
    return len(gzip.decompress(path.read_bytes()))


def throughput(source: str, paths: list[Path], out: Path) -> dict:
    reader = READERS[source]()
    units = [ShardUnit(source, n, InputFile.describe(str(p))) for n, p in enumerate(paths)]
    started = time.perf_counter()
    docs = sum(1 for unit in units for _ in reader.read(unit))
    reader_seconds = time.perf_counter() - started
    spec = StageSpec(root=str(out), name=f"bench-{source}", reader=reader)
    started = time.perf_counter()
    kept = sum(run_shard(spec, unit).kept for unit in units)
    stage_seconds = time.perf_counter() - started
    stored = sum(p.stat().st_size for p in paths) / 1e6
    return {
        "inputs": len(paths), "documents": docs, "kept": kept, "input_MB": round(stored, 1),
        "reader_MB_s": round(stored / reader_seconds, 2), "reader_docs_s": round(docs / reader_seconds, 1),
        "run_shard_MB_s": round(stored / stage_seconds, 2), "run_shard_docs_s": round(kept / stage_seconds, 1),
    }


def peak_rss(source: str, path: Path) -> dict:
    """Run the reader on one input in a fresh process: its peak RSS, and how far above the imports, in MB."""
    result = subprocess.run([sys.executable, __file__, "--rss", source, str(path)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure_rss(source: str, path: str) -> None:
    # Imports (pyarrow, Ray's deps) peak above what reading needs: restart the high-water mark after them.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_mb("VmRSS")
    items = list(READERS[source]().read(ShardUnit(source, 0, InputFile.describe(path))))
    peak = _status_mb("VmHWM")
    text = sum(len(getattr(i, "text", "")) for i in items)
    print(json.dumps({"input_MB": round(Path(path).stat().st_size / 1e6, 2), "text_MB": round(text / 1e6, 2),
                      "rss_after_imports_MB": round(before, 1), "peak_rss_MB": round(peak, 1),
                      "peak_over_imports_MB": round(peak - before, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--rss", nargs=2, metavar=("SOURCE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        measure_rss(*args.rss)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "books").mkdir()
        (root / "arxiv").mkdir()
        books = book_inputs(args.corpora, root / "books", args.copies)
        papers = arxiv_inputs(args.corpora, root / "arxiv", args.copies)
        print("books", json.dumps(throughput("books", books, root / "out")))
        arxiv = throughput("arxiv", papers, root / "out")
        arxiv["latex_MB"] = round(sum(latex_bytes(p) for p in papers) / 1e6, 1)
        print("arxiv", json.dumps(arxiv))

        largest = max(books[:6], key=lambda p: p.stat().st_size)
        (doc,) = BooksReader().read(ShardUnit("books", 0, InputFile.describe(str(largest))))
        big_book = root / "big-book.txt"
        start, end = "*** START OF THE PROJECT GUTENBERG EBOOK X ***", "*** END OF THE PROJECT GUTENBERG EBOOK X ***"
        big_book.write_text(f"Title: X\n{start}\n" + (doc.text + "\n\n") * 10 + f"{end}\n", encoding="utf-8")
        big_paper = project_tar_gz(args.corpora / "arxiv" / "hott-book", root / "big-hott.tar.gz", repeat=10)
        for source, base, big in (("books", largest, big_book), ("arxiv", papers[0], big_paper)):
            print(f"{source} peak RSS  1x", json.dumps(peak_rss(source, base)))
            print(f"{source} peak RSS 10x", json.dumps(peak_rss(source, big)))


if __name__ == "__main__":
    main()
