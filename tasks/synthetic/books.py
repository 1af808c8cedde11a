"""Project Gutenberg e-books with known ground truth.

Four files: a modern e-book in UTF-8 with a byte-order mark (START/END markers, producer credits,
a "Character set encoding" line, characters outside latin-1); a 1990s e-text in ISO-8859-1 with
no encoding line (its SMALL PRINT header, "This etext was prepared by" credit and "End of The
Project Gutenberg Etext" footer); an e-book that is all boilerplate; an empty file. Both books
use CRLF line ends, trailing spaces and runs of blank lines that the reader must normalise.
:func:`expected_books` gives, for the same seed, what each file must become.

:func:`shaped_book` lays one e-book out in each of the shapes copies of Gutenberg files come in
(no blank lines between paragraphs, CR or CRLF line ends, separator lines holding only spaces,
tabs or form feeds), opening with one of :data:`CREDITS` (real credits' shapes, 1 to 5 lines) and
with a paragraph inside the text that starts like a credit and is text.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass, field

from tasks.synthetic import write_files

DOCUMENT = "document"
DROPPED = "books:no_text_after_boilerplate"
BAD = "bad"

FRENCH = "ça été cœur naïf fenêtre où déjà élève forêt château pâle soeur garçon bientôt très".split()
GERMAN = "Straße Mädchen schön über Grüße Bäume fröhlich weiß Flüsse Größe Würde hören".split()
PLAIN = "the of and river house garden morning letter window winter bridge quiet".split()

LICENCE = """\
***** This file should be named {number}.txt or {number}.zip *****

*** START: FULL LICENSE ***

THE FULL PROJECT GUTENBERG LICENSE
PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK

To protect the Project Gutenberg-tm mission of promoting the free
distribution of electronic works, by using or distributing this work
(or any other work associated in any way with the phrase "Project
Gutenberg"), you agree to comply with all the terms of the Full Project
Gutenberg-tm License (available with this file or online at
http://gutenberg.org/license).
"""

MODERN_HEADER = """\
The Project Gutenberg EBook of {title}, by {author}

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.  You may copy it, give it away or
re-use it under the terms of the Project Gutenberg License included
with this eBook or online at www.gutenberg.org


Title: {title}
       {subtitle}

Author: {author}

Release Date: March 3, 2011 [EBook #{number}]

Language: French

Character set encoding: UTF-8

*** START OF THIS PROJECT GUTENBERG EBOOK {upper} ***




Produced by Marie Dupont and the Online Distributed
Proofreading Team at http://www.pgdp.net



"""
MODERN_FOOTER = """


End of the Project Gutenberg EBook of {title}, by {author}

*** END OF THIS PROJECT GUTENBERG EBOOK {upper} ***

"""

OLD_HEADER = """\
**The Project Gutenberg Etext of {title}, by {author}**
#3 in our series by {author}

Copyright laws are changing all over the world, be sure to check
the copyright laws for your country before posting these files!!

**Welcome To The World of Free Plain Vanilla Electronic Texts**

**Etexts Readable By Both Humans and By Computers, Since 1971**

*These Etexts Prepared By Hundreds of Volunteers and Donations*

{title}

June, 1996  [Etext #{number}]

**The Project Gutenberg Etext of {title}, by {author}**
******This file should be named grimm10.txt or grimm10.zip*****

**START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here?  You know: lawyers.
They tell us you might sue us if there is something wrong with
your copy of this etext, even if you got it for free from
someone other than us, and even if what's wrong is not our
fault.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*



This etext was prepared by Hans Beispiel, Musterstadt,
with thanks to the University Library.


"""
OLD_FOOTER = """

End of The Project Gutenberg Etext of {title}

"""


# Shaped as real producer credits are: wrapped where the credit says "and the", "Distributed", a
# first name, inside a parenthesis; followed by an all-capitals title or a chapter heading.
CREDITS = (
    "Produced by Aloysius",
    "Produced by Rick Niles, Melissa Er-Raqabi, Ronald Holder and the\n"
    "Online Distributed Proofreading Team at http://www.pgdp.net",
    "Transcribed from the 1908 Longmans, Green, and Co. edition by David\nPrice, email ccx074@pglaf.org",
    "Produced by Chuck Greif and the Online Distributed\n"
    "Proofreading Team at http://www.pgdp.net (This file was\n"
    "produced from images available at The Internet Archive)",
    "E-text prepared by Juliet Sutherland, Sankar Viswanathan,\n"
    "and the Project Gutenberg Online Distributed Proofreading Team\n"
    "(http://www.pgdp.net) from page images generously made available\n"
    "by Internet Archive/American Libraries",
    "This eBook was produced by Marie Dupont, Jean Martin,\n"
    "the Bibliotheque nationale de France (BnF/Gallica) and\n"
    "the Online Distributed Proofreading Team at\n"
    "http://www.pgdp.net (This file was produced from images\n"
    "generously made available by Gallica)",
)
SHAPES = ("blank_lines", "crlf", "cr", "whitespace_lines", "form_feeds", "no_blank_lines", "no_blank_lines_crlf")
CREDIT_LIKE_PARAGRAPH = "Produced by the river and the winter, the garden\nwas quiet that morning."


@dataclass(frozen=True)
class ExpectedBook:
    """What one file must become."""

    file_name: str
    outcome: str  # DOCUMENT, the drop reason, or BAD
    text: str = ""  # the document's exact text
    meta: dict = field(default_factory=dict)  # keys the document's meta must hold, with these values
    error: str = ""  # for BAD: a phrase of the error


def write_inputs(folder: str, seed: int = 0) -> list[str]:
    """Write the files into ``folder`` and return their paths, in the order of :func:`expected_books`."""
    return write_files(folder, ((expected.file_name, data) for expected, data in _books(seed)))


def expected_books(seed: int = 0) -> list[ExpectedBook]:
    return [expected for expected, _ in _books(seed)]


def _books(seed: int) -> list[tuple[ExpectedBook, bytes]]:
    rng = random.Random(seed)
    return [_modern(rng), _old(rng), _boilerplate_only(rng), (ExpectedBook("pg00000-empty.txt", BAD, error="empty"), b"")]


def _paragraphs(rng: random.Random, words: list[str], count: int) -> list[str]:
    """Wrapped paragraphs as Gutenberg sets them (about 70 columns); some are chapter titles."""
    paragraphs = []
    for n in range(count):
        if n % 8 == 0:
            paragraphs.append(f"CHAPTER {n // 8 + 1}")
            continue
        sentences = []
        for _ in range(rng.randint(2, 5)):
            sentence = " ".join(rng.choice(words + PLAIN) for _ in range(rng.randint(6, 16)))
            sentences.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?"))
        paragraphs.append("\n".join(textwrap.wrap(" ".join(sentences), 70)))
    return paragraphs


def _typeset(paragraphs: list[str]) -> str:
    """The raw body: chapter titles padded by runs of blank lines and trailing spaces."""
    parts = []
    for paragraph in paragraphs:
        if paragraph.startswith("CHAPTER"):
            parts.append(f"\n\n\n{paragraph}   \n\n")
        else:
            parts.append(paragraph)
    return "\n\n".join(parts)


def _crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def _modern(rng: random.Random) -> tuple[ExpectedBook, bytes]:
    number = 40000 + rng.randrange(10000)
    names = {"title": "Le Château “Pâle”", "author": "Émile Exemple", "number": number}
    names.update(subtitle="Roman — première partie", upper=names["title"].upper())
    paragraphs = _paragraphs(rng, FRENCH, 48)
    raw = MODERN_HEADER.format(**names) + _typeset(paragraphs) + MODERN_FOOTER.format(**names) + LICENCE.format(**names)
    expected = ExpectedBook(
        f"pg{number}.txt",
        DOCUMENT,
        text="\n\n".join(paragraphs),
        meta={
            "title": f"{names['title']} {names['subtitle']}",
            "author": names["author"],
            "language": "fr",
            "release_date": "2011-03-03",
            "ebook_number": str(number),
            "licence": "Project Gutenberg License",
            "encoding": "utf-8-sig",
        },
    )
    return expected, b"\xef\xbb\xbf" + _crlf(raw).encode("utf-8")


def _old(rng: random.Random) -> tuple[ExpectedBook, bytes]:
    number = 2000 + rng.randrange(1000)
    names = {"title": "Grimms Märchen für Kinder", "author": "Brüder Grimm", "number": number}
    paragraphs = _paragraphs(rng, GERMAN, 40)
    raw = OLD_HEADER.format(**names) + _typeset(paragraphs) + OLD_FOOTER.format(**names) + LICENCE.format(**names)
    expected = ExpectedBook(
        f"grimm{number}.txt",
        DOCUMENT,
        text="\n\n".join(paragraphs),
        meta={"title": names["title"], "author": names["author"], "ebook_number": str(number)},
    )
    return expected, _crlf(raw).encode("latin-1")


def _boilerplate_only(rng: random.Random) -> tuple[ExpectedBook, bytes]:
    number = 50000 + rng.randrange(10000)
    names = {"title": "Nothing Here", "author": "Nobody", "subtitle": "", "number": number, "upper": "NOTHING HERE"}
    raw = MODERN_HEADER.format(**names) + MODERN_FOOTER.format(**names) + LICENCE.format(**names)
    return ExpectedBook(f"pg{number}.txt", DROPPED), raw.encode("ascii")


def shaped_book(shape: str, credit: str, seed: int = 0) -> tuple[bytes, str]:
    """An e-book opening with ``credit``, laid out in ``shape``, and the exact text it must become.

    Without blank lines the paragraphs cannot be told apart: the text is their lines, one after another.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; shapes: {SHAPES}")
    rng = random.Random(seed)
    paragraphs = _paragraphs(rng, PLAIN, 24)
    paragraphs.insert(5, CREDIT_LIKE_PARAGRAPH)
    if seed % 2:
        paragraphs.insert(0, "THE QUIET RIVER\nA Tale")  # a title page, as most books open
    names = {"title": "The Quiet River", "author": "Ann Example", "number": 30000 + rng.randrange(10000)}
    names.update(subtitle="", upper=names["title"].upper())
    header = MODERN_HEADER.format(**names).split("Produced by")[0].replace("Language: French", "Language: English")
    body = credit + "\n\n\n" + _typeset(paragraphs)
    lines = (header + body + MODERN_FOOTER.format(**names) + LICENCE.format(**names)).split("\n")
    if shape.startswith("no_blank_lines"):
        lines = [line for line in lines if line.strip()]
    elif shape == "whitespace_lines":
        lines = [line or " \t " for line in lines]
    elif shape == "form_feeds":
        lines = [line or "\f" for line in lines]
    raw = "\n".join(lines)
    if shape.endswith("crlf"):
        raw = _crlf(raw)
    elif shape == "cr":
        raw = raw.replace("\n", "\r")
    separator = "\n" if shape.startswith("no_blank_lines") else "\n\n"
    return raw.encode("utf-8"), separator.join(paragraphs)
