"""Wikipedia reader throughput against its bare parts, and its memory on a 10x larger dump.

    python bench/ingest_wikipedia.py [--copies 250] [--repeat 3]

On a synthetic bz2 multistream dump (``copies`` x 12 pages, a few MB of XML) reports MB/s of
uncompressed XML and documents/s for:
- our WikipediaReader (decompression, XML, wikitext cleaning, documents);
- bare XML iteration: the same iterparse loop with element clearing, no page handling;
- the bare wikitext parser: ``mwparserfromhell.parse(text).strip_code()`` over the same articles'
  wikitext, already in memory.
The ratios of our time to each bare time are our overhead. Then the peak RSS of a fresh process
reading the dump and one 10 times larger: a streamed reader stays flat. Quality beside speed: on
the adversarial dumps of :mod:`tasks.synthetic.wikipedia_markup` (4 languages), the share of
articles whose text keeps wiki markup (``<ref``, ``{|``, ``|}``, ``[[``, ``]]``, ``{{``, ``}}``,
``'''``, ``<!--``) or words of removed markup, ours and the bare parser's.
"""

from __future__ import annotations

import argparse
import bz2
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import mwparserfromhell

from tasks.documents import Document
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, ShardUnit
from tasks.synthetic.wikipedia import write_inputs
from tasks.synthetic.wikipedia_markup import LANGUAGES, write_markup_dump

MARKUP = ("<ref", "{|", "|}", "[[", "]]", "{{", "}}", "'''", "<!--")
MARKUP_ARTICLES = 50  # per language


def kept_documents(path: str) -> list[Document]:
    unit = ShardUnit("wikipedia", 0, InputFile.describe(path))
    return [item for item in WikipediaReader().read(unit) if isinstance(item, Document)]


def read_with_reader(path: str) -> int:
    return len(kept_documents(path))


def iterate_xml(path: str) -> int:
    pages = 0
    with bz2.open(path) as stream:
        context = ET.iterparse(stream, events=("start", "end"))
        _, root = next(context)
        for event, elem in context:
            if event == "end" and elem.tag.endswith("}page"):
                pages += 1
                root.clear()
    return pages


def wikitexts_of(path: str, page_ids: set[str]) -> list[str]:
    """The wikitext of the given pages, in dump order."""
    texts = []
    with bz2.open(path) as stream:
        context = ET.iterparse(stream, events=("start", "end"))
        _, root = next(context)
        for event, elem in context:
            if event == "end" and elem.tag.endswith("}page"):
                ns = elem.tag[: -len("page")]
                if elem.findtext(ns + "id") in page_ids:
                    texts.append(elem.findtext(f"{ns}revision/{ns}text"))
                root.clear()
    return texts


def strip_all(texts: list[str]) -> int:
    return sum(len(mwparserfromhell.parse(text).strip_code()) for text in texts)


def best_of(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def peak_rss_mib(path: str) -> float:
    """Peak RSS of a fresh interpreter that imports the reader and reads the whole dump."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-of", path], check=True, capture_output=True, text=True
    ).stdout
    return float(out.strip())


def markup_shares(folder: str) -> tuple[int, int, int]:
    """Articles, and how many keep markup or removed words: in our documents, in bare strip_code."""
    articles = ours = bare = 0
    for language in LANGUAGES:
        path, built = write_markup_dump(folder, language, seed=0, articles=MARKUP_ARTICLES)
        texts = {d.meta["page_id"]: d.text for d in kept_documents(path)}
        for article in built:
            articles += 1
            ours += _keeps_markup(texts.get(article.page_id, ""), article.hidden)
            bare += _keeps_markup(mwparserfromhell.parse(article.wikitext).strip_code(), article.hidden)
    return articles, ours, bare


def _keeps_markup(text: str, hidden: tuple[str, ...]) -> bool:
    return any(marker in text for marker in MARKUP) or any(word in text for word in hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=250, help="copies of the 12-page synthetic set")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--rss-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_of:
        read_with_reader(args.rss_of)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return

    with tempfile.TemporaryDirectory() as tmp:
        (path,) = write_inputs(str(Path(tmp) / "small"), copies=args.copies)
        (large,) = write_inputs(str(Path(tmp) / "large"), copies=10 * args.copies)
        with bz2.open(path) as f:
            xml_mb = len(f.read()) / 1e6
        compressed_mb = Path(path).stat().st_size / 1e6
        texts = wikitexts_of(path, {str(d.meta["page_id"]) for d in kept_documents(path)})
        docs = len(texts)

        t_xml = best_of(args.repeat, iterate_xml, path)
        t_parser = best_of(args.repeat, strip_all, texts)
        t_ours = best_of(args.repeat, read_with_reader, path)
        rss_small, rss_large = peak_rss_mib(path), peak_rss_mib(large)
        articles, ours_marked, bare_marked = markup_shares(str(Path(tmp) / "markup"))

    print(f"dump: {xml_mb:.1f} MB XML ({compressed_mb:.2f} MB bz2), {docs} articles kept")
    print(f"WikipediaReader       {t_ours:7.3f} s  {xml_mb / t_ours:7.2f} MB/s  {docs / t_ours:8.0f} docs/s")
    print(f"bare XML iteration    {t_xml:7.3f} s  {xml_mb / t_xml:7.2f} MB/s   ours / bare = {t_ours / t_xml:.1f}x")
    print(f"bare parse+strip_code {t_parser:7.3f} s  (same {docs} articles)   ours / bare = {t_ours / t_parser:.2f}x")
    print(f"peak RSS: {rss_small:.0f} MiB on {xml_mb:.1f} MB XML, {rss_large:.0f} MiB on {10 * xml_mb:.0f} MB XML")
    print(
        f"adversarial markup, {articles} articles: markup left in ours {ours_marked} ({ours_marked / articles:.1%}), "
        f"in bare parse+strip_code {bare_marked} ({bare_marked / articles:.1%})"
    )


if __name__ == "__main__":
    main()
