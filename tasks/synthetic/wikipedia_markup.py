"""Wikipedia dumps of adversarial wikitext: real-world markup shapes around prose whose text is known.

Each article is English-like prose (:mod:`tasks.synthetic.english`) with markup drawn at random from
the shapes real dumps hold, balanced and broken: references of every form (named, self-closing,
grouped, upper case, spanning lines, citation templates nesting templates, never closed), infoboxes
nesting templates, links, files and tables; wiki tables nested, indented, inside templates, opened
by a template or by pipe templates, never closed; file links with nested links, templates and
external links in their captions, under the wiki's localised namespace names and aliases;
galleries, image maps, formulas, code listings, comments (one never closed), magic words,
categories, interlanguage links, HTML wrappers (some never closed, some closing nothing), line
breaks, templates nested past the parser's depth limit, and stray closers.

Every removed construct carries coined words of its own (``zq...``, never in prose): none may reach
the text. :class:`MarkupArticle` ``kept`` lists, in order, the sentences and section titles the text
must show exactly; word-level markup (bold, links, spans, nowiki, unclosed ``[[``) sits inside those
sentences and must leave them unchanged.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from tasks.synthetic.english import SYLLABLES, encyclopedic_paragraph
from tasks.synthetic.wikipedia import article_xml, write_multistream

# Per language: the dump's own File, Media and Category names (as <siteinfo> lists them), the file
# prefixes articles write (local name, aliases, English), the local "thumb" option.
LANGUAGES = {
    "en": ("File", "Media", "Category", ("File", "Image", "file", " File "), "thumb"),
    "de": ("Datei", "Medium", "Kategorie", ("Datei", "Bild", "File", "datei"), "mini"),
    "ru": ("Файл", "Медиа", "Категория", ("Файл", "Изображение", "File", "файл"), "мини"),
    "bg": ("Файл", "Медия", "Категория", ("Файл", "Картинка", "Image", "Изображение"), "мини"),
}
OTHER_WIKIS = ("fr", "es", "it", "pl", "nl", "sv", "zh", "ja", "pt", "uk", "simple", "be-tarask")

SECRET = "@S"  # each occurrence becomes a fresh coined word that must not reach the text
FILE = "@F"
CATEGORY = "@C"
THUMB = "@T"

# Blocks on lines of their own between paragraphs; the whole block goes.
BLOCKS = {
    "infobox": """{{Infobox settlement
| name = @S
| image = [[@F:@S.jpg|250px|@S caption [[@S]]]]
| coordinates = {{coord|1|2|N|3|4|E|display=inline,title}}
| population = 1234<ref>{{cite web |url=http://example.org/@S |title=@S {{lang|fr|@S}} |date={{date|2020}}}}</ref>
| leader = [[@S|@S]] {{small|(@S)}}
| map =
{| class="wikitable"
| @S || {{flag|@S}}
|}
| footnotes = <ref name="@S" /> {{efn|@S {{nowrap|@S}}}}
}}""",
    "wikitable": """{| class="wikitable sortable" style="text-align:center"
|+ @S caption<ref>@S</ref>
! scope="col" | @S !! @S
|-
| [[@S]] || {{flagicon|@S}} [[@S|@S]]<ref name="@S">{{cite book|title=@S|author={{nowrap|@S}}}}</ref>
|-
| colspan="2" |
{| class="wikitable"
|-
| @S
|}
|- style="background:#eee"
| ''@S'' || '''@S''' || <span>@S</span>
|}""",
    "indented_table": """:{| class="wikitable"
! @S
|-
| @S
|}""",
    "table_in_template": """{{Navbox
| name = @S
| list1 =
{| class="plainlinks"
| [[@S]] || {{@S}}
|}
| list2 = {{flatlist|
* [[@S]]
}}
}}""",
    "pipe_template_table": """{{(!}} class="wikitable"
{{!}} @S {{!!}} @S
{{!)}}
{{{!}} class="wikitable"
{{!}}-
{{!}} @S
{{!}}}""",
    "html_table": """<table class="@S"><tr><td>@S</td><td>[[@S]]</td></tr></table>""",
    "file_line": """[[@F:@S.jpg|@T|right|upright=1.2|@S caption with [[@S|@S]] and {{convert|5|km}}<ref>@S</ref> [[@S]]]]""",
    "image_line": """[[@F:@S.png|left|200px|alt=@S|@S {{lang|de|@S}}]]""",
    "file_multiline_caption": """[[@F:@S.svg|@T|@S first line
second @S line with [[@S]]]]""",
    "file_external_caption": """[[@F:@S.jpg|@T|Photo by [http://example.org/@S @S]]]""",
    "file_in_file": """[[@F:@S.jpg|@T|[[@F:@S.png|20px]] @S [[@S|@S]]]]""",
    "gallery": """<gallery mode="packed" heights="150px" caption="@S">
@F:@S.jpg|@S [[@S]] {{@S}}
@S.png|''@S''
</gallery>""",
    "imagemap": """<imagemap>
@F:@S.jpg|@T|@S
rect 0 0 10 10 [[@S]]
desc none
</imagemap>""",
    "math_block": """:<math display="block">\\frac{@S}{2} + x^{{2}} \\left\\{ [[ \\right\\} ''' |}</math>""",
    "syntaxhighlight": """<syntaxhighlight lang="lua" line>
local @S = [[long string]] -- {{not a template}}
print('''@S''') --[[ {| ]]
</syntaxhighlight>""",
    "source": """<source lang="c">int @S[2][[3]]; /* {{ @S }} |} */</source>""",
    "comment_block": """<!-- @S {{@S}} [[@S]]
{| class="wikitable"
| @S
|}
-->""",
    "magic_words": "__TOC__\n__NOEDITSECTION__",
    "hatnotes": """{{Main|@S}}
{{See also|@S|@S}}""",
    "deep_templates": "{{@S|" * 60 + "@S" + "}}" * 60,
    "templatestyles": """<templatestyles src="@S/styles.css" />{{DEFAULTSORT:@S}}""",
    "includeonly": """<includeonly>@S [[@S]]</includeonly>""",
    "parser_function": """{{#if:{{{1|}}}|@S|@S [[@S]]}}""",
}
# Closers whose opener is elsewhere: a template opened the table, an edit left braces behind.
STRAY_BLOCKS = {
    "template_opened_table": """{{Election box begin |title=@S}}
{{Election box candidate |party=@S |candidate=[[@S]] |votes=1234}}
! @S !! @S
|-
| [[@S]] || @S
|}""",
    "stray_closers": "}}\n]]",
}
# Openers never closed; the paragraph after them starts after a blank line. An article has these or
# stray closers, not both: a later closer would pair with the opener (in MediaWiki too) and take
# the prose between.
UNCLOSED_BLOCKS = {
    "unclosed_infobox": """{{Infobox person
| name = @S
| birth_date = {{birth date|1900|1|1}}
| spouse = [[@S]]""",
    "unclosed_table": """{| class="wikitable"
! @S
|-
| @S || [[@S]]""",
    "unclosed_file": """[[@F:@S.jpg|@T|@S caption [[@S]] {{@S}}""",
}
# After a sentence's full stop, before the space: the construct goes, the sentences stay.
AFTER_SENTENCE = {
    "ref": "<ref>@S</ref>",
    "ref_cite": "<ref name=\"@S\">{{cite web |url=http://example.org/@S |title=@S {{!}} @S |website={{lang|fr|@S}}}}</ref>",
    "ref_self_closing": "<ref name=@S />",
    "ref_self_closing_quoted": '<ref name="@S"/>',
    "ref_self_closing_spaced": '<ref name="@S"/ >',
    "ref_upper_case": "<REF>@S</REF>",
    "ref_group": '<ref group="note">@S [[@S]] {{efn|@S {{@S|@S}}}}</ref>',
    "ref_group_unquoted": "<ref group=lower-alpha name=@S>@S</ref>",
    "ref_spanning_lines": """<ref>
{{cite book
 | title = @S
 | author = {{nowrap|@S}}
 | url = http://example.org/@S
}}
</ref>""",
    "ref_template_in_link": "<ref>[[@S|{{@S|@S}}]] [http://example.org/@S @S]</ref>",
    "citation_needed": "{{citation needed|date=May 2020}}",
    "sfn": "{{sfn|@S|2001|p=5}}",
    "efn": "{{efn|@S [[@S]] {{@S}}}}",
    "inline_comment": "<!-- @S [[@S]] -->",
    "inline_math": "<math>@S^{{2}}</math>",
    "icon": "[[@F:@S.svg|20px|link=]]",
    "flagicon": "{{flagicon|@S}}",
}
# At the end of a paragraph, never closed: the rest of the paragraph is the construct's.
PARAGRAPH_END = {
    "unclosed_ref_cite": "<ref>{{cite web |url=http://example.org/@S |title=@S |work={{lang|de|@S}}}}",
    "unclosed_ref_lines": "<ref name=\"@S\">{{cite news\n|title=@S\n|date=2020\n}}",
    "unclosed_ref_attribute": '<ref name="@S',
}
UNCLOSED_PARAGRAPH_END = {"unclosed_template": "{{cite web |title=@S |date=2020"}
# Word-level markup inside a sentence: the word reads the same.
WORD_MARKUP = (
    "'''{w}'''", "''{w}''", "'''''{w}'''''", "[[{w}]]", "[[@S|{w}]]", "[[:@C:@S|{w}]]", "<span class=\"@S\">{w}</span>",
    "<small>{w}</small>", "<abbr title=\"@S\">{w}</abbr>", "[http://example.org/@S {w}]", "<nowiki>{w}</nowiki>",
    "{w}<nowiki/>", "<b>{w}</b>", "<sup>{w}</sup>", "{w}<!-- @S -->", "<small>{w}", "{w}</span>", "{w}</div>",
    "{w}</ref>",
)
UNCLOSED_WORD_MARKUP = ("[[{w}",)
WRAPPERS = (
    '<div class="@S">\n{p}\n</div>', "<blockquote>{p}</blockquote>", "<center>{p}</center>", '<div style="@S">{p}'
)
SENTENCE_BREAKS = (" ", " ", " ", " ", "<br />", "<br>", "</br>", "<br/>")
HEADING_MARKUP = ("{t}", "{t}<ref>@S</ref>", "{{{{anchor|@S}}}}{t}", "{t} <!-- @S -->", "''{t}''")


@dataclass(frozen=True)
class MarkupArticle:
    title: str
    page_id: int
    wikitext: str
    kept: tuple[str, ...]  # sentences and section titles, in the order the text must show them
    hidden: tuple[str, ...]  # coined words inside removed markup: none may appear in the text
    constructs: tuple[str, ...]  # the names of the shapes this article uses


def write_markup_dump(
    folder: str, language: str = "en", seed: int = 0, articles: int = 50
) -> tuple[str, list[MarkupArticle]]:
    """Write ``<language>wiki-...-multistream.xml.bz2`` into ``folder``; returns its path and its articles."""
    media, media_alias, category, _, _ = LANGUAGES[language]
    rng = random.Random(f"{seed}:{language}")
    built = [_Article(rng, language).build(page_id) for page_id in range(1, articles + 1)]
    header = (
        f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="{language}">\n'
        f"  <siteinfo>\n    <dbname>{language}wiki</dbname>\n    <namespaces>\n"
        f'      <namespace key="-2" case="first-letter">{media_alias}</namespace>\n'
        '      <namespace key="0" case="first-letter" />\n'
        f'      <namespace key="6" case="first-letter">{media}</namespace>\n'
        f'      <namespace key="14" case="first-letter">{category}</namespace>\n'
        "    </namespaces>\n  </siteinfo>\n"
    )
    path = Path(folder) / f"{language}wiki-20220601-pages-articles-multistream.xml.bz2"
    write_multistream(path, header, [article_xml(a.title, a.page_id, a.wikitext) for a in built])
    return str(path), built


class _Article:
    """One article being written: its wikitext pieces, what must stay, what must go."""

    def __init__(self, rng: random.Random, language: str) -> None:
        self.rng = rng
        _, _, self.category, self.file_prefixes, self.thumb = LANGUAGES[language]
        broken = rng.choice(("unclosed", "stray", "balanced"))
        self.blocks = BLOCKS | (STRAY_BLOCKS if broken == "stray" else {})
        self.broken_blocks = UNCLOSED_BLOCKS if broken == "unclosed" else {}
        self.paragraph_ends = PARAGRAPH_END | (UNCLOSED_PARAGRAPH_END if broken == "unclosed" else {})
        self.word_markup = WORD_MARKUP + (UNCLOSED_WORD_MARKUP if broken == "unclosed" else ())
        self.kept: list[str] = []
        self.hidden: list[str] = []
        self.used: list[str] = []

    def build(self, page_id: int) -> MarkupArticle:
        rng = self.rng
        title = self._phrase(2).title()
        pieces = []
        if rng.random() < 0.5:
            pieces.append(self._fill("{{Short description|@S}}\n{{Use dmy dates|date=May 2020}}"))
        for _ in range(rng.randint(0, 2)):
            pieces.append(self._block())
        pieces.append(self._paragraph(title, lead=True))
        for _ in range(rng.randint(2, 4)):
            level = "=" * rng.choice((2, 2, 3))
            heading = self._phrase(2).title()
            self.kept.append(heading)
            pieces.append(f"{level}{self._heading(heading)}{level}")
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.6:
                    pieces.append(self._block())
                pieces.append(self._paragraph(title))
        pieces.append(self._fill('== References ==\n{{Reflist}}\n<references>\n<ref name="@S">@S</ref>\n</references>'))
        links = [f"[[{self.category}:@S]]", f"[[{self.category}:@S|@S]]"]
        links += [f"[[{code}:@S]]" for code in rng.sample(OTHER_WIKIS, 3)]
        pieces.append(self._fill("\n".join(links)))
        self.used.append("categories_interlanguage")
        wikitext = "\n".join(_joined(rng, pieces))
        if rng.random() < 0.25:  # MediaWiki hides everything after a comment that never ends
            wikitext += self._fill("\n<!-- @S [[@S]] {{@S}}\n\n== @S ==\n@S")
            self.used.append("unclosed_comment")
        return MarkupArticle(title, page_id, wikitext, tuple(self.kept), tuple(self.hidden), tuple(self.used))

    def _block(self) -> str:
        if self.broken_blocks and self.rng.random() < 0.3:
            name = self.rng.choice(sorted(self.broken_blocks))
            self.used.append(name)
            return self._fill(self.broken_blocks[name]) + "\n"  # the blank line that ends its paragraph
        name = self.rng.choice(sorted(self.blocks))
        self.used.append(name)
        return self._fill(self.blocks[name])

    def _paragraph(self, subject: str, lead: bool = False) -> str:
        rng = self.rng
        sentences = [encyclopedic_paragraph(rng, subject, 1) for _ in range(rng.randint(2, 4))]
        self.kept.extend(sentences)
        form = rng.random()
        if form < 0.1:
            self.used.append("pre")
            return f"<pre>\n{' '.join(sentences)}\n</pre>"  # shown as written, markup and all
        written = [self._word_markup(sentence) + self._after_sentence() for sentence in sentences]
        if lead:
            written[0] = written[0].replace(subject, f"'''{subject}'''", 1)
        if form < 0.25:
            self.used.append("list")
            return "\n".join(f"{rng.choice('*#:')} {sentence}" for sentence in written)
        text = written[0] + "".join(rng.choice(SENTENCE_BREAKS) + sentence for sentence in written[1:])
        if form < 0.4:
            self.used.append("wrapper")
            text = self._fill(rng.choice(WRAPPERS)).replace("{p}", text)
        if rng.random() < 0.25:
            name = rng.choice(sorted(self.paragraph_ends))
            self.used.append(name)
            text += self._fill(self.paragraph_ends[name]) + "\n"  # the blank line that ends the paragraph
        return text

    def _after_sentence(self) -> str:
        if self.rng.random() < 0.5:
            return ""
        name = self.rng.choice(sorted(AFTER_SENTENCE))
        self.used.append(name)
        return self._fill(AFTER_SENTENCE[name])

    def _word_markup(self, sentence: str) -> str:
        words = sentence.split(" ")
        plain = [number for number, word in enumerate(words) if word.isalpha()]
        for number in self.rng.sample(plain, min(len(plain), self.rng.randint(0, 3))):
            shape = self.rng.choice(self.word_markup)
            self.used.append("word:" + shape)
            if shape == "[[{w}]]" and len(words[number]) > 2 and self.rng.random() < 0.3:
                words[number] = f"[[{words[number][:-1]}]]{words[number][-1]}"  # a link trail
            else:
                words[number] = self._fill(shape.replace("{w}", words[number]))
        return " ".join(words)

    def _heading(self, text: str) -> str:
        shape = self.rng.choice(HEADING_MARKUP)
        self.used.append("heading:" + shape)
        return f" {self._fill(shape.format(t=text))} "

    def _fill(self, template: str) -> str:
        template = template.replace(CATEGORY, self.category).replace(THUMB, self.thumb)
        template = re.sub(FILE, lambda _: self.rng.choice(self.file_prefixes), template)
        return re.sub(SECRET, lambda _: self._secret(), template)

    def _secret(self) -> str:
        word = "zq" + "".join(self.rng.choice(SYLLABLES) for _ in range(2)) + str(len(self.hidden))
        self.hidden.append(word)
        return word

    def _phrase(self, words: int) -> str:
        return " ".join(self._word() for _ in range(words))

    def _word(self) -> str:
        return "".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(2, 3)))


def _joined(rng: random.Random, pieces: list[str]) -> list[str]:
    """Pieces on their own lines, a blank line between some of them (as editors leave them)."""
    return [piece + ("\n" if rng.random() < 0.5 else "") for piece in pieces[:-1]] + pieces[-1:]
