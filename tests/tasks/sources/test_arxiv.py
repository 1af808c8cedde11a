import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.documents import BadRecord, make_doc_id
from tasks.shards import part_location, quarantine_location
from tasks.sources.arxiv import (
    ArxivReader,
    clean_project,
    collect_macros,
    cut_to_body,
    expand_macros,
    find_main,
    inline_inputs,
    parse_arxiv_id,
    strip_comments,
)
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.steps import Drop
from tasks.synthetic.arxiv import BAD, DOCUMENT, expected_papers, gz, tar_gz, write_inputs

CORPORA = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora"
COMMENT = re.compile(r"(?<!\\)(?:\\\\)*%")  # a % that no backslash escapes
SECTIONING = re.compile(r"\\(?:part|chapter|section|subsection|subsubsection|paragraph|subparagraph)(?![A-Za-z@])")
PAPER = b"\\documentclass{article}\n\\begin{document}\n\\section{One} Kept text.\n\\end{document}\n"


def read(path, reader=None):
    return list((reader or ArxivReader()).read(ShardUnit("arxiv", 0, InputFile.describe(str(path)))))


def outcome(item):
    if isinstance(item, Drop):
        return item.reason
    return BAD if isinstance(item, BadRecord) else DOCUMENT


def assert_clean(text):
    assert not COMMENT.search(text) and r"\bibitem" not in text and r"\documentclass" not in text
    assert not SECTIONING.search(text), SECTIONING.search(text)


def tar_with(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as archive:  # GNU: raw byte names
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return packed.getvalue()


def member(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def test_synthetic_papers_match_their_ground_truth(tmp_path):
    paths = write_inputs(str(tmp_path), seed=5)
    for path, expected in zip(paths, expected_papers(seed=5), strict=True):
        (item,) = read(path)
        assert outcome(item) == expected.outcome, path
        if expected.outcome == BAD:
            assert item.locator == path and expected.error in item.error
            continue
        assert item.text.split("\n", 1)[0] == expected.starts_with
        assert [k for k in expected.kept if k not in item.text] == []
        assert [r for r in expected.removed if r in item.text] == []
        assert_clean(item.text)
        assert item.meta["arxiv_id"] == expected.arxiv_id and item.meta["title"] == expected.title
        assert item.id == make_doc_id("arxiv", expected.arxiv_id)
        assert item.meta["licence"] == "unknown" and item.meta["provenance"] == path


def test_generator_is_deterministic_and_seeded(tmp_path):
    first = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "a"), seed=1)]
    again = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "b"), seed=1)]
    other = [Path(p).read_bytes() for p in write_inputs(str(tmp_path / "c"), seed=2)]
    assert first == again and first[0] != other[0]


@pytest.mark.parametrize(
    ("source", "cleaned"),
    [
        ("a 50\\% b % gone\n", "a 50\\% b \n"),  # \% is text; the character before % stays
        ("x%gone\n", "x\n"),
        ("line\\\\% gone\n", "line\\\\\n"),  # \\ is a line break: the % after it opens a comment
        ("odd\\\\\\% kept % gone\n", "odd\\\\\\% kept \n"),
        ("% full line\n   % indented full line\nkept\n", "kept\n"),
        ("a\n\\begin{comment}\n% x\ngone\n\\end{comment}\nb\n", "a\n\nb\n"),
    ],
)
def test_comments(source, cleaned):
    assert strip_comments(source) == cleaned


@pytest.mark.parametrize(
    ("header", "title"),
    [(r"\paragraph{Bare}", "Bare"), (r"\chapter*{C}", "C"), (r"\part{P}", "P"), (r"\subparagraph[s]{S}", "S"),
     (r"\section {S}", "S"), (r"\section*[short]{A {Nested} Title}", "A {Nested} Title")],
)
def test_text_starts_at_any_sectioning_command_and_keeps_its_title_as_a_line(header, title):
    document = f"\\begin{{document}}\nPreamble text $\\partial x$ \\sectionmark{{m}}\n{header} Body.\n\\end{{document}}"
    assert cut_to_body(document) == f"{title}\nBody."


def test_preamble_section_commands_do_not_start_the_text():
    document = "\\titleformat{\\section}{x}\\renewcommand{\\section}{y}\n\\begin{document}\nAbstract.\n\\section{Real} Body."
    assert cut_to_body(document) == "Real\nBody."
    assert cut_to_body("\\begin{document} no header at all \\end{document}") == ""


@pytest.mark.parametrize(
    "tail",
    [r"\appendix \section{A}", r"\begin{references} R", r"\begin{thebibliography}{9} \bibitem{x} X", r"\bibliography{refs}",
     r"\printbibliography", r"\end{document} trailing"],
)
def test_text_ends_before_bibliography_appendix_or_end_of_document(tail):
    assert cut_to_body(f"\\section{{S}} Body.\n{tail}\nafter") == "S\nBody."


def test_argument_free_macros_expand_others_stay():
    macros = collect_macros(
        [
            r"\newcommand{\a}{alpha}\newcommand*\b{beta \a}\def\c{[\b]}\renewcommand{\a}{ALPHA}",
            r"\newcommand{\f}[1]{f(#1)}\def\g#1{g#1}\def\loop{\loop x}\def\ping{\pong}\def\pong{\ping}",
        ]
    )
    assert macros == {"a": "ALPHA", "b": "beta ALPHA", "c": "[beta ALPHA]"}  # later definitions win
    assert expand_macros(r"\a \ab \c{} \f{1} \loop \\a", macros) == r"ALPHA \ab [beta ALPHA]{} \f{1} \loop \\a"


def test_macro_bomb_is_left_as_written():
    letters = "abcdefghi"
    bomb = r"\def\ma{" + "x" * 50 + "}" + "".join(rf"\def\m{b}{{" + rf"\m{a}" * 4 + "}" for a, b in zip(letters, letters[1:]))
    macros = collect_macros([bomb])
    assert len(macros["md"]) == 50 * 4**3 and "me" not in macros and "mi" not in macros  # 50 * 4**8 characters: refused
    assert expand_macros(r"\mi \md", macros) == "\\mi " + "x" * 3200


def test_inputs_are_inlined_recursively_with_cycles_guarded():
    files = {
        "main.tex": r"A \input{sub/one} B \include{two.tex} C \input missing D",
        "sub/one.tex": r"one[\input{sub/deep}]",
        "sub/deep.tex": r"deep[\input{main}]",
        "two.tex": r"two[\input{two}]",
    }
    assert inline_inputs(files, "main.tex", 10_000) == r"A one[deep[\input{main}]] B two[\input{two}] C \input missing D"


def test_main_file_choice():
    wrapper = {"book.tex": r"\input{opts}\input{main}", "main.tex": r"\documentclass{book}\input{ch}", "ch.tex": "x" * 100,
               "cover.tex": r"\documentclass{letter}" + "y" * 500, "opts.tex": ""}
    assert find_main(wrapper, 10_000) == "main.tex"  # conventional name; the wrapper has no \documentclass
    parts = {"paper.tex": r"\documentclass{article}\input{fig}", "fig.tex": r"\documentclass{standalone}" + "z" * 900}
    assert find_main(parts, 10_000) == "paper.tex"  # a \documentclass file that another inputs is a part
    sizes = {"a.tex": r"\documentclass{article}\input{long}", "long.tex": "w" * 300, "b.tex": r"\documentclass{article}" + "v" * 200}
    assert find_main(sizes, 10_000) == "a.tex"  # the most text once inlined
    assert find_main({"z.tex": "plain TeX", "y.tex": r"\input z"}, 10_000) == "y.tex"  # no \documentclass anywhere


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("2101.00001.tar.gz", ("2101.00001", None)), ("2101.00001v3.gz", ("2101.00001", "v3")), ("0704.0001.gz", ("0704.0001", None)),
     ("hep-th9901001.gz", ("hep-th/9901001", None)), ("math.GT0309136v2.gz", ("math/0309136", "v2")), ("hott-book.tar.gz", (None, None))],
)
def test_arxiv_ids_from_file_names(name, parsed):
    assert parse_arxiv_id(name) == parsed


def test_project_that_is_not_utf8_is_skipped_naming_the_file(tmp_path):
    path = tmp_path / "2101.00002.tar.gz"
    path.write_bytes(tar_gz({"main.tex": PAPER, "sec/latin.tex": "caf\xe9".encode("latin-1")}))
    (bad,) = read(path)
    assert bad.locator == str(path) and "'sec/latin.tex' is not UTF-8" in bad.error


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ([(member("/etc/passwd.tex"), PAPER)], "'/etc/passwd.tex' has a path outside the project"),
        ([(member("ok.tex"), PAPER), (member("a/../../b.tex"), PAPER)], "'a/../../b.tex' has a path outside"),
        ([(member("ok.tex"), PAPER), (member("link.tex", tarfile.SYMTYPE, "/etc/passwd"), None)],
         "'link.tex' is a link (to '/etc/passwd')"),
        ([(member("ok.tex"), PAPER), (member("hard.tex", tarfile.LNKTYPE, "ok.tex"), None)], "'hard.tex' is a link"),
        ([(member("ok.tex"), PAPER), (member("dev", tarfile.CHRTYPE), None)], "'dev' is a special file"),
        ([(member("fifo", tarfile.FIFOTYPE), None)], "'fifo' is a special file"),
        ([(member("figure.png"), b"\x89PNG"), (member("refs.bib"), b"@x")], "no .tex file among 2 members"),
    ],
)
def test_hostile_or_useless_archives_are_quarantined_naming_the_member(tmp_path, members, error):
    path = tmp_path / "2101.00003.tar.gz"
    path.write_bytes(gz(tar_with(*members)))
    (bad,) = read(path)
    assert isinstance(bad, BadRecord) and bad.locator == str(path) and error in bad.error


def test_decompression_bombs_stop_at_the_limit(tmp_path):
    reader = ArxivReader(max_unpacked_bytes=1 << 20, max_record_bytes=1 << 16, max_members=5)
    lying = tmp_path / "declared.tar.gz"  # the header declares the size: refused before any of it is read
    lying.write_bytes(gz(tar_with((member("main.tex"), PAPER), (member("zeros.bin"), bytes(2 << 20)))))
    assert "'zeros.bin' unpacks past the 1048576-byte limit" in read(lying, reader)[0].error
    single = tmp_path / "2101.00004.gz"
    single.write_bytes(gz(b"\\section{x}" + bytes(4 << 20)))  # 4 MiB of zeros in a 4 KiB file
    assert "more than 65536 bytes of LaTeX, over the max_record_bytes limit of 65536" in read(single, reader)[0].error
    many = tmp_path / "many.tar.gz"
    many.write_bytes(gz(tar_with(*[(member(f"f{n}.tex"), b"x") for n in range(6)])))
    assert "more than 5 members" in read(many, reader)[0].error
    too_much_tex = tmp_path / "tex.tar.gz"
    too_much_tex.write_bytes(gz(tar_with((member("a.tex"), PAPER), (member("b.tex"), b"%" * 70_000))))
    assert "bytes of LaTeX, over the max_record_bytes limit of 65536 (at member 'b.tex')" in read(too_much_tex, reader)[0].error
    endless = tmp_path / "endless.gz"
    endless.write_bytes(gz(b"\\section{x}" + bytes(3 << 20)))
    assert "unpacks past the 1048576-byte limit" in read(endless, ArxivReader(max_unpacked_bytes=1 << 20))[0].error


def test_truncated_empty_and_non_gzip_files(tmp_path):
    truncated = tmp_path / "2101.00005.tar.gz"
    truncated.write_bytes(tar_gz({"main.tex": PAPER * 200, "more.tex": bytes(range(256)) * 100})[:-600])
    empty = tmp_path / "2101.00006.gz"
    empty.write_bytes(b"")
    plain = tmp_path / "2101.00007.gz"
    plain.write_bytes(PAPER)
    empty_gzip = tmp_path / "2101.00008.gz"
    empty_gzip.write_bytes(gz(b""))
    for path, error in [(truncated, "unreadable archive"), (empty, "empty"), (plain, "Not a gzipped file"), (empty_gzip, "empty")]:
        (bad,) = read(path)
        assert isinstance(bad, BadRecord) and bad.locator == str(path) and error in bad.error, (path, bad)


def test_pdf_only_and_section_less_papers_are_dropped_with_a_reason(tmp_path):
    pdf = tmp_path / "2101.00009.gz"
    pdf.write_bytes(gz(b"%PDF-1.4 ..."))
    bare = tmp_path / "2101.00010.gz"
    bare.write_bytes(gz(b"\\documentclass{article}\\begin{document}Only an abstract.\\end{document}"))
    assert read(pdf) == [Drop("arxiv:not_latex")]
    assert read(bare) == [Drop("arxiv:no_section")]


def test_bulk_tar_goes_on_after_bad_papers(tmp_path):
    good = tar_gz({"main.tex": PAPER})
    bulk = tmp_path / "arXiv_src_2101_001.tar"
    bulk.write_bytes(
        tar_with(
            (member("2101", tarfile.DIRTYPE), None),
            (member("2101/2101.00001.gz"), good[: len(good) // 2]),
            (member("2101/2101.00002.gz", tarfile.SYMTYPE, "/etc/passwd"), None),
            (member("2101/2101.00003.pdf"), b"%PDF"),
            (member("2101/2101.00004.gz"), good),
            (member("2101/caf\udce9.gz"), good),  # a name that is not UTF-8 (byte 0xE9)
        )
    )
    items = read(bulk)
    assert [outcome(i) for i in items] == [BAD, BAD, "arxiv:no_latex_source", DOCUMENT, DOCUMENT]
    assert items[4].meta["provenance"] == f"{bulk}:2101/caf\\xe9.gz"  # printable: it must go into Parquet
    assert items[0].locator == f"{bulk}:2101/2101.00001.gz" and "unreadable archive" in items[0].error
    assert items[1].locator == f"{bulk}:2101/2101.00002.gz" and "is a link" in items[1].error
    assert items[3].meta["arxiv_id"] == "2101.00004" and items[3].text == "One\nKept text."


def test_run_shard_over_a_bulk_tar(tmp_path):
    papers = write_inputs(str(tmp_path / "raw"))
    bulk = tmp_path / "raw" / "bulk.tar"
    with tarfile.open(bulk, "w") as archive:
        for path in papers:
            archive.add(path, arcname=f"2101/{Path(path).name}")
    spec = StageSpec(root=str(tmp_path / "out"), name="ingest", reader=ArxivReader())
    receipt = run_shard(spec, ShardUnit("arxiv", 0, InputFile.describe(str(bulk))))
    assert (receipt.docs_in, receipt.kept, receipt.quarantined) == (3, 2, 1)
    table = pq.read_table(part_location(spec.stage_dir, "arxiv", 0).path)
    ids = [json.loads(m)["arxiv_id"] for m in table.column("meta").to_pylist()]
    assert ids == [p.arxiv_id for p in expected_papers() if p.outcome == DOCUMENT]
    (line,) = open(quarantine_location(spec.stage_dir, "arxiv", 0).path).readlines()
    assert json.loads(line)["locator"].endswith(f"bulk.tar:2101/{expected_papers()[2].file_name}")


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")
def test_real_hott_book_project(tmp_path):
    folder = CORPORA / "arxiv" / "hott-book"
    path = tmp_path / "hott-book.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        archive.add(folder, arcname=".")
    (doc,) = read(path)
    assert doc.meta["main_file"] == "main.tex"  # seven files have \documentclass
    assert doc.meta["title"] == "Homotopy Type Theory: Univalent Foundations of Mathematics"
    assert doc.id == make_doc_id("arxiv", "file:hott-book.tar.gz") and "arxiv_id" not in doc.meta
    text = doc.text
    assert text.startswith("Preface\n")
    lines = text.split("\n")
    assert lines.index("Type theory") < lines.index("Real numbers")  # chapter titles kept as lines, in order
    assert_clean(text)
    assert r"\include{" not in text and r"\input{macros}" not in text and r"\appendix" not in text
    # macros.tex defines \UU and \N without arguments: expanded, definitions gone.
    assert not re.search(r"\\(UU|N)(?![A-Za-z])", text) and r"\newcommand{\N}" not in text
    assert r"\ensuremath{\mathbb{N}}\xspace" in text
    assert len(text) > 1_000_000


@pytest.mark.skipif(not CORPORA.is_dir(), reason=f"real sample corpora not found at {CORPORA}")
def test_real_single_file_paper(tmp_path):
    path = tmp_path / "0811.0001.gz"  # the bulk format of a single-file paper
    path.write_bytes(gzip.compress((CORPORA / "arxiv" / "bitcoin" / "bitcoin.tex").read_bytes()))
    (doc,) = read(path)
    assert doc.meta["title"] == "Bitcoin: A Peer-to-Peer Electronic Cash System" and doc.meta["arxiv_id"] == "0811.0001"
    assert doc.text.startswith("Introduction\n") and "\nCalculations\n" in doc.text
    assert "Satoshi Nakamoto" not in doc.text and r"\printbibliography" not in doc.text  # title block and references
    assert_clean(doc.text)


def test_clean_project_example():
    files = {
        "ms.tex": "\\documentclass{article}\n\\newcommand{\\R}{\\mathbb{R}}\n\\title{T}\\begin{document}\n"
        "\\section{S}\n$x\\in\\R$ % c\n\\bibliography{b}\n"
    }
    paper = clean_project(files, 10_000)
    assert (paper.main_file, paper.title, paper.text) == ("ms.tex", "T", "S\n$x\\in\\mathbb{R}$")
