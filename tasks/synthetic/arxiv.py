"""arXiv source files with known ground truth.

Three papers as arXiv serves them: a multi-file ``.tar.gz`` project (a main file that inputs a
macro file and two section files from a subfolder, with and without ``.tex``; macros defined by
``\\newcommand``, ``\\newcommand*``, ``\\def`` and one with an argument; full-line, inline and
``comment``-environment comments; an escaped ``\\%``; a bare ``\\paragraph``; an abstract before
the first section; bibliography and appendix at the end; a second file with ``\\documentclass``,
a figure and a ``.bib``; an ``\\input`` cycle); a single gzipped ``.tex`` with an old-style id and
a ``thebibliography``; and a hostile archive whose member climbs out with ``../``.
:func:`expected_papers` gives, for the same seed, what each file must become.

Deterministic for a seed: archives carry fixed times and owners, so the bytes repeat.
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from dataclasses import dataclass

from tasks.synthetic import write_files

DOCUMENT = "document"
BAD = "bad"

WORDS = "model data layer loss graph token kernel sample bound proof gradient signal noise prior".split()


@dataclass(frozen=True)
class ExpectedPaper:
    """What one file must become."""

    file_name: str
    outcome: str  # DOCUMENT or BAD
    arxiv_id: str = ""
    title: str = ""
    starts_with: str = ""  # the text's first line
    kept: tuple[str, ...] = ()  # phrases the text contains
    removed: tuple[str, ...] = ()  # phrases and markup it must not contain
    error: str = ""  # for BAD: a phrase of the error


def write_inputs(folder: str, seed: int = 0) -> list[str]:
    """Write the papers into ``folder`` and return their paths, in the order of :func:`expected_papers`."""
    return write_files(folder, ((expected.file_name, data) for expected, data in _papers(seed)))


def expected_papers(seed: int = 0) -> list[ExpectedPaper]:
    return [expected for expected, _ in _papers(seed)]


def tar_gz(members: dict[str, bytes]) -> bytes:
    """A gzipped tar of regular files, byte-identical for the same members."""
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(data))
    return gz(packed.getvalue())


def gz(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed:
        compressed.write(data)
    return out.getvalue()


def _sentence(rng: random.Random, tag: str) -> str:
    """A sentence carrying a unique tag, so that a test can tell where each one went."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
    return f"{tag} {words}."


def _papers(seed: int) -> list[tuple[ExpectedPaper, bytes]]:
    rng = random.Random(seed)
    number = 1 + rng.randrange(9000)
    return [_project(rng, f"2101.{number:05d}"), _single(rng, number), _hostile(f"2101.{number + 1:05d}")]


def _project(rng: random.Random, arxiv_id: str) -> tuple[ExpectedPaper, bytes]:
    s = {tag: _sentence(rng, tag) for tag in ("INTRO", "METHOD", "RESULTS", "PARAGRAPH", "ABSTRACT", "APPENDIX")}
    main = rf"""\documentclass[11pt]{{article}}
\usepackage{{amsmath,amssymb,comment}}
\input{{macros}}
\newcommand{{\method}}{{SynthNet}}
\newcommand{{\norm}}[1]{{\left\| #1 \right\|}}
\title{{A Synthetic Study of \method\\ on \dataset}}
\begin{{document}}
\maketitle
\begin{{abstract}}
{s["ABSTRACT"]}
\end{{abstract}}
% SECRET-PREAMBLE-COMMENT \section{{Commented out}}

\section{{Introduction}}
{s["INTRO"]} We test \method{{}} on \dataset. % SECRET-INLINE-COMMENT
   % SECRET-INDENTED-COMMENT
Accuracy rose by 50\% on \dataset.\\% SECRET-AFTER-LINEBREAK
\input{{sections/method}}
\include{{sections/results.tex}}

\paragraph{{Bare paragraph}} {s["PARAGRAPH"]}
\begin{{comment}}
SECRET-COMMENT-ENVIRONMENT
\end{{comment}}

\bibliographystyle{{plain}}
\bibliography{{refs}}

\appendix
\section{{Proofs}}
{s["APPENDIX"]}
\end{{document}}
"""
    macros = r"""\def\dataset{ToyCorpus}
\newcommand*{\R}{\mathbb{R}}
\newcommand\vocab{V_{\R}}
"""
    method = rf"""\subsection{{Method}}
{s["METHOD"]} Each token lives in $\vocab$ and we bound $\norm{{x}}$.
"""
    results = rf"""\subsection{{Results}}
{s["RESULTS"]}
\input{{main}}
"""
    supplement = r"""\documentclass{article}
\begin{document}
\section{Supplement}
SECRET-SUPPLEMENT is another document, not this paper.
\end{document}
"""
    files = {
        "main.tex": main,
        "macros.tex": macros,
        "sections/method.tex": method,
        "sections/results.tex": results,
        "supplement.tex": supplement,
    }
    members = {name: text.encode() for name, text in files.items()}
    members["refs.bib"] = b"@article{key, title={SECRET-BIB}}\n"
    members["figures/plot.png"] = bytes(range(256)) * 4
    expected = ExpectedPaper(
        f"{arxiv_id}.tar.gz",
        DOCUMENT,
        arxiv_id=arxiv_id,
        title="A Synthetic Study of SynthNet on ToyCorpus",
        starts_with="Introduction",
        kept=(
            s["INTRO"], s["METHOD"], s["RESULTS"], s["PARAGRAPH"], "\nBare paragraph\n",
            "We test SynthNet{} on ToyCorpus.", r"Accuracy rose by 50\% on ToyCorpus.\\",
            r"$V_{\mathbb{R}}$", r"$\norm{x}$", "\nMethod\n", "\nResults\n",
            r"\input{main}",  # the cycle back to the main file stays as written
        ),
        removed=(
            s["ABSTRACT"], s["APPENDIX"], "SECRET", r"\method", r"\dataset", r"\vocab", r"\newcommand{\method}",
            r"\input{sections", r"\include", r"\bibliography{", r"\appendix", r"\begin{comment}", r"\documentclass",
        ),
    )
    return expected, tar_gz(members)


def _single(rng: random.Random, number: int) -> tuple[ExpectedPaper, bytes]:
    s = {tag: _sentence(rng, tag) for tag in ("TITLEPAGE", "INTRO", "BODY")}
    old_number = f"99{number % 100000:05d}"
    tex = rf"""\documentstyle[12pt]{{article}}
\def\ket{{|\psi\rangle}}
\begin{{document}}
\title{{Strings on a Lattice}}
\maketitle
{s["TITLEPAGE"]}
\section*{{Introduction}}
{s["INTRO"]} The state \ket{{}} evolves. % SECRET-COMMENT
\section{{Body}}
{s["BODY"]}
\begin{{thebibliography}}{{9}}
\bibitem{{a}} A. Author, SECRET-REFERENCE.
\end{{thebibliography}}
\end{{document}}
"""
    expected = ExpectedPaper(
        f"hep-th{old_number}.gz",
        DOCUMENT,
        arxiv_id=f"hep-th/{old_number}",
        title="Strings on a Lattice",
        starts_with="Introduction",
        kept=(s["INTRO"], s["BODY"], r"The state |\psi\rangle{} evolves.", "\nBody\n"),
        removed=(s["TITLEPAGE"], "SECRET", r"\bibitem", r"\begin{thebibliography}", r"\ket"),
    )
    # CRLF line ends, as papers written on Windows have them.
    return expected, gz(tex.replace("\n", "\r\n").encode())


def _hostile(arxiv_id: str) -> tuple[ExpectedPaper, bytes]:
    members = {
        "paper.tex": b"\\documentclass{article}\\begin{document}\\section{A} text\\end{document}\n",
        "../../outside/evil.tex": b"\\section{Evil}\n",
    }
    return ExpectedPaper(f"{arxiv_id}.tar.gz", BAD, error="'../../outside/evil.tex'"), tar_gz(members)
