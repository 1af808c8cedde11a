"""A small Common Crawl WARC and WET file with known ground truth.

The WARC file is laid out as Common Crawl's: a warcinfo record, then request, response and
metadata records, each record its own gzip member. Its HTML pages wrap main-content paragraphs
(to keep) in a header menu, a cookie banner, a sidebar and a footer (to remove), in legacy
encodings declared in the HTTP header, in a meta tag, by a byte-order mark or not at all; beside
them a 404, a redirect, an image, an empty page, a page without text, a record whose
Content-Length is wrong, a page with bytes its declared charset forbids, a compressed and chunked
payload, and WARC/1.1 and WARC/0.18 records. The WET file holds conversion records, one empty and
one not UTF-8. :func:`expected_records` gives, for the same seed, what each document record must
become, in file order.

So that curation has something to judge, every page's paragraphs are its own (line dedup keeps
them), and after the fixed set come ``english_pages`` English pages in three styles
(:mod:`tasks.synthetic.english`): encyclopedic (written like the synthetic Wikipedia, so its
quality model scores them well), web (a travel blog) and spam (keyword stuffing, the quality
filter's tail). Each page's :attr:`ExpectedRecord.style` says which.

Deterministic for a seed: the same call writes byte-identical files.
"""

from __future__ import annotations

import gzip
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tasks.synthetic import english

WARC_NAME = "CC-MAIN-20230601000000-20230601010000-00000.warc.gz"
WET_NAME = "CC-MAIN-20230601000000-20230601010000-00000.warc.wet.gz"
CRAWL = "CC-MAIN-2023-23"
KEPT = "kept"
BAD = "bad"
EN = "https://en.example.org"
ENCYCLOPEDIC, WEB, SPAM = "encyclopedic", "web", "spam"
STYLES = (ENCYCLOPEDIC, WEB, SPAM)
CHUNKED = "Transfer-Encoding: chunked\r\n"
WARC_FIELDS = {"Content-Type": "application/warc-fields"}

SENTENCES = {
    "en": [
        "The old bridge across the river was rebuilt after the great flood and now carries a busy road.",
        "Farmers bring their vegetables to the market square every Saturday morning before sunrise.",
        "Visitors who walk along the water in the evening can watch herons fishing near the mill.",
        "The library on the hill keeps letters written by the founders of the town two centuries ago.",
        "Children learn to swim in the lake during the short summer, when the water is finally warm.",
        "A narrow railway once connected the quarry with the harbour, and its tunnels can still be visited.",
    ],
    "ru": [
        "Старый мост через реку восстановили после большого наводнения, и теперь по нему идёт оживлённая дорога.",
        "Каждую субботу рано утром фермеры привозят овощи на рыночную площадь в центре города.",
        "Вечером туристы гуляют вдоль берега и наблюдают, как цапли ловят рыбу возле мельницы.",
        "В библиотеке на холме хранятся письма, которые основатели города написали двести лет назад.",
        "Летом дети учатся плавать в озере, когда вода наконец становится тёплой.",
        "Узкая железная дорога когда-то соединяла карьер с гаванью, и её тоннели можно посетить до сих пор.",
    ],
    "zh": [
        "这座古老的石桥在大洪水之后重新修建，现在每天都有很多车辆经过。",
        "每个星期六早上，农民们都会把新鲜的蔬菜运到城市中心的市场出售。",
        "傍晚的时候，游客们沿着河边散步，看见白鹭在磨坊附近捕鱼。",
        "山上的图书馆保存着两百年前城市创建者写下的许多书信。",
        "夏天湖水变暖以后，孩子们就在湖里学习游泳，非常热闹。",
        "以前有一条窄轨铁路连接采石场和港口，现在仍然可以参观它的隧道。",
    ],
    "ja": [
        "古い石の橋は大きな洪水の後に建て直され、今では毎日たくさんの車が通っています。",
        "毎週土曜日の朝早く、農家の人々が町の中心の市場に新鮮な野菜を運んできます。",
        "夕方になると、旅行者は川沿いを散歩して、水車小屋の近くで魚を捕る鷺を眺めます。",
        "丘の上の図書館には、二百年前に町を作った人々が書いた手紙が保管されています。",
        "夏になって湖の水が温かくなると、子供たちは湖で泳ぎを習います。",
        "昔は細い鉄道が石切り場と港を結んでいて、そのトンネルは今でも見学できます。",
    ],
    "de": [
        "Die alte Brücke über den Fluss wurde nach dem großen Hochwasser neu gebaut und trägt heute eine belebte Straße.",
        "Jeden Samstag früh bringen die Bauern ihr Gemüse auf den Marktplatz, während die Bäckerei schon geöffnet hat.",
        "Wer abends am Ufer spazieren geht, kann die Reiher beim Fischen in der Nähe der Mühle beobachten.",
        "Die Bibliothek auf dem Hügel bewahrt Briefe auf, die die Gründer der Stadt vor zweihundert Jahren schrieben.",
        "Im kurzen Sommer lernen die Kinder im See schwimmen, wenn das Wasser endlich warm genug ist.",
        "Eine schmale Bahn verband früher den Steinbruch mit dem Hafen, und ihre Tunnel kann man noch heute besichtigen.",
    ],
    "fr": [
        "Le vieux pont sur la rivière a été reconstruit après la grande crue et porte aujourd'hui une route très fréquentée.",
        "Chaque samedi matin, les agriculteurs apportent leurs légumes sur la place du marché avant le lever du soleil.",
        "Les promeneurs qui longent l'eau le soir peuvent observer les hérons qui pêchent près du moulin.",
        "La bibliothèque sur la colline conserve des lettres écrites par les fondateurs de la ville il y a deux siècles.",
        "Pendant le court été, les enfants apprennent à nager dans le lac lorsque l'eau devient enfin tiède.",
        "Un petit chemin de fer reliait autrefois la carrière au port, et ses tunnels se visitent encore.",
    ],
    "es": [
        "El viejo puente sobre el río fue reconstruido después de la gran inundación y hoy soporta una carretera muy transitada.",
        "Cada sábado por la mañana, los campesinos llevan sus verduras a la plaza del mercado antes del amanecer.",
        "Quienes pasean junto al agua por la tarde pueden ver a las garzas pescando cerca del molino.",
        "La biblioteca de la colina guarda cartas escritas por los fundadores de la ciudad hace dos siglos.",
        "Durante el corto verano, los niños aprenden a nadar en el lago cuando el agua por fin está templada.",
        "Un pequeño tren unía antiguamente la cantera con el puerto, y todavía se pueden visitar sus túneles.",
    ],
}

# Boilerplate around every page's main content: none of it may reach a document.
MENU = ("Front page headlines", "Sports results today", "Weekend shop deals")
COOKIE_BANNER = "We use cookies to improve your browsing experience. Accept all cookies"
SIDEBAR = ("Ten best hotels near the coast", "Why ticket prices went up this spring")
FOOTER = ("Copyright 2023 Example Media Group. All rights reserved.", "Subscribe to our newsletter for weekly deals")
BOILERPLATE = (*MENU, COOKIE_BANNER, *SIDEBAR, *FOOTER)


@dataclass(frozen=True)
class ExpectedRecord:
    """One document record of a synthetic file and what reading it must give."""

    url: str
    outcome: str  # KEPT, BAD, or the reason of the Drop ("commoncrawl:http_404")
    main: tuple[str, ...] = ()  # text the document must keep
    language: str | None = None
    charset: str | None = None  # the Python codec the page must be decoded with
    charset_source: str | None = None  # bom, http, meta or detected
    style: str | None = None  # of an English page's text: ENCYCLOPEDIC, WEB or SPAM


@dataclass
class _Record:
    warc_type: str
    url: str
    block: bytes
    expected: ExpectedRecord | None = None  # None: not a document record
    version: str = "WARC/1.0"
    content_length_error: int = 0  # added to the true Content-Length: a malformed record
    headers: dict[str, str] = field(default_factory=dict)


def write_inputs(folder: str, seed: int = 0, english_pages: int = 12) -> list[str]:
    """Write the WARC and the WET file into ``folder``; return their paths (WARC first).

    ``english_pages`` styled pages follow the fixed set (a third of each style): more for benchmarks.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    warc_records, wet_records = _records(seed, english_pages)
    paths = []
    for name, records in ((WARC_NAME, warc_records), (WET_NAME, wet_records)):
        rng = random.Random(f"{seed}:{name}")
        members = [_gzip(_serialise(r, rng)) for r in [_warcinfo(name), *records]]
        path = out / name
        path.write_bytes(b"".join(members))
        paths.append(str(path))
    return paths


def expected_records(seed: int = 0, english_pages: int = 12) -> dict[str, list[ExpectedRecord]]:
    """For each file name, what its response/conversion records must become, in file order."""
    warc_records, wet_records = _records(seed, english_pages)
    return {
        WARC_NAME: [r.expected for r in warc_records if r.expected is not None],
        WET_NAME: [r.expected for r in wet_records if r.expected is not None],
    }


def _records(seed: int, english_pages: int) -> tuple[list[_Record], list[_Record]]:
    rng = random.Random(seed)
    return _warc_records(rng, english_pages), _wet_records(rng)


def _paragraphs(rng: random.Random, language: str, count: int = 3, style: str = WEB) -> tuple[str, ...]:
    """``count`` paragraphs, each a line of its own that other pages are unlikely to repeat."""
    if language == "en":
        return tuple(_english_paragraph(rng, style) for _ in range(count))
    return tuple(" ".join(rng.sample(SENTENCES[language], rng.randint(2, 3))) for _ in range(count))


def _english_paragraph(rng: random.Random, style: str) -> str:
    if style == ENCYCLOPEDIC:
        return english.encyclopedic_paragraph(rng, english.coined_name(rng))
    return english.spam_paragraph(rng) if style == SPAM else english.web_paragraph(rng)


def _html(title: str, paragraphs: tuple[str, ...], head: str = "") -> str:
    menu = "".join(f'<li><a href="/s{n}">{item}</a></li>' for n, item in enumerate(MENU))
    sidebar = "".join(f'<li><a href="/r{n}">{item}</a></li>' for n, item in enumerate(SIDEBAR))
    body = "".join(f"<p>{p}</p>\n" for p in paragraphs)
    return (
        f"<!DOCTYPE html>\n<html><head>{head}<title>{title}</title></head><body>\n"
        f'<header><div class="logo">Example Media</div><nav><ul>{menu}</ul></nav></header>\n'
        f'<div id="cookie-banner" class="cookie-consent">{COOKIE_BANNER}</div>\n'
        f'<div class="container"><aside class="sidebar"><h3>Related stories</h3><ul>{sidebar}</ul></aside>\n'
        f"<main><article><h1>{title}</h1>\n{body}</article></main></div>\n"
        f"<footer><p>{FOOTER[0]}</p><p>{FOOTER[1]}</p></footer>\n</body></html>\n"
    )


def _http(status: str, content_type: str | None, body: bytes, extra: str = "") -> bytes:
    header = f"HTTP/1.1 {status}\r\n"
    if content_type is not None:
        header += f"Content-Type: {content_type}\r\n"
    header += f"{extra}Content-Length: {len(body)}\r\n\r\n"
    return header.encode("ascii") + body


def _page(
    rng: random.Random,
    n: int,
    language: str,
    encoding: str,
    content_type: str,
    charset: str,
    source: str,
    head: str = "",
    prefix: bytes = b"",
    style: str = WEB,
    **record: object,
) -> _Record:
    url = f"https://{language}.example.org/articles/{n}"
    paragraphs = _paragraphs(rng, language, style=style)
    body = prefix + _html(f"Article {n}", paragraphs, head).encode(encoding)
    expected = ExpectedRecord(url, KEPT, paragraphs, language, charset, source, style if language == "en" else None)
    return _Record("response", url, _http("200 OK", content_type, body), expected, **record)


def _dropped(path: str, reason: str, block: bytes) -> _Record:
    url = f"{EN}/{path}"
    return _Record("response", url, block, ExpectedRecord(url, f"commoncrawl:{reason}"))


def _chunked(data: bytes, size: int = 64) -> bytes:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


def _warc_records(rng: random.Random, english_pages: int) -> list[_Record]:
    en = _paragraphs(rng, "en")
    compressed_url = f"{EN}/articles/compressed"
    compressed = _chunked(gzip.compress(_html("Compressed", en).encode(), mtime=0))
    bad_charset_url = f"{EN}/articles/bad-bytes"
    bad_charset = _html("Bad bytes", ("Broken \xff\xfe bytes",)).encode("latin-1")
    wrong_length_url = f"{EN}/articles/wrong-length"
    pages = [
        _page(rng, 1, "en", "utf-8", "text/html; charset=utf-8", "utf-8", "http"),
        _page(rng, 2, "ru", "cp1251", "text/html; charset=windows-1251", "cp1251", "http"),
        _page(rng, 3, "zh", "gbk", "text/html", "gb18030", "meta", head='<meta charset="gbk">'),
        _page(rng, 4, "zh", "gb2312", "text/html; charset=gb2312", "gb18030", "http"),
        _page(
            rng, 5, "ja", "euc-jp", "text/html", "euc_jp", "meta",
            head='<meta http-equiv="Content-Type" content="text/html; charset=EUC-JP">',
        ),
        _page(rng, 6, "de", "latin-1", "text/html; charset=ISO-8859-1", "cp1252", "http"),
        _Record(
            "response", wrong_length_url,
            _http("200 OK", "text/html; charset=utf-8", _html("Wrong length", _paragraphs(rng, "en")).encode()),
            ExpectedRecord(wrong_length_url, BAD), content_length_error=+37,
        ),
        _Record(
            "response", bad_charset_url, _http("200 OK", "text/html; charset=utf-8", bad_charset),
            ExpectedRecord(bad_charset_url, BAD),
        ),
        _page(rng, 7, "fr", "latin-1", "text/html", "cp1252", "detected"),
        _page(rng, 8, "ru", "cp1251", "text/html", "cp1251", "detected"),
        # The header carries a server default, the page says (rightly) UTF-8.
        _page(rng, 9, "es", "utf-8", "text/html; charset=ISO-8859-1", "utf-8", "meta", head='<meta charset="utf-8">'),
        _page(rng, 10, "en", "utf-8", "text/html", "utf-8", "bom", prefix=b"\xef\xbb\xbf", version="WARC/1.1"),
        _Record(
            "response", compressed_url,
            _http("200 OK", "text/html; charset=utf-8", compressed, "Content-Encoding: gzip\r\n" + CHUNKED),
            ExpectedRecord(compressed_url, KEPT, en, "en", "utf-8", "http", WEB), version="WARC/0.18",
        ),
        _dropped("missing", "http_404", _http("404 Not Found", "text/html", _html("Not found", ("No such page.",)).encode())),
        _dropped("moved", "http_301", _http("301 Moved Permanently", "text/html", b"", f"Location: {EN}/articles/1\r\n")),
        _dropped("logo.png", "not_html", _http("200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(64))),
        _dropped("empty", "empty", _http("200 OK", "text/html", b"")),
        _dropped("script-only", "no_text", _http("200 OK", "text/html", b"<html><body><script>var x;</script></body></html>")),
        _page(rng, 11, "en", "utf-8", "text/html; charset=utf-8", "utf-8", "http"),
        *(
            _page(rng, 12 + i, "en", "utf-8", "text/html; charset=utf-8", "utf-8", "http", style=STYLES[i % 3])
            for i in range(english_pages)
        ),
    ]
    records = []
    for page in pages:
        request = f"GET {page.url.split('/', 3)[3]} HTTP/1.1\r\nHost: {page.url.split('/')[2]}\r\n\r\n".encode()
        records.append(_Record("request", page.url, request))
        records.append(page)
        records.append(_Record("metadata", page.url, b"fetchTimeMs: 120\r\n", headers=WARC_FIELDS))
    return records


def _wet_records(rng: random.Random) -> list[_Record]:
    records = []
    for n, language in enumerate(("en", "de", "ru")):
        url = f"https://{language}.example.org/articles/{n}"
        text = "\n".join((f"Article {n}",) + _paragraphs(rng, language))
        style = WEB if language == "en" else None
        records.append(_Record("conversion", url, text.encode(), ExpectedRecord(url, KEPT, (text,), language, style=style)))
    blank, not_utf8 = f"{EN}/blank", "https://de.example.org/latin"
    records.append(_Record("conversion", blank, b"", ExpectedRecord(blank, "commoncrawl:empty")))
    records.append(_Record("conversion", not_utf8, "Grüße aus Köln".encode("latin-1"), ExpectedRecord(not_utf8, BAD)))
    url = "https://fr.example.org/articles/9"
    text = "\n".join(("Article 9",) + _paragraphs(rng, "fr"))
    records.append(_Record("conversion", url, text.encode(), ExpectedRecord(url, KEPT, (text,), "fr")))
    return records


def _warcinfo(name: str) -> _Record:
    fields = f"software: llamaline synthetic\r\nisPartOf: {CRAWL}\r\noperator: nobody\r\n".encode()
    return _Record("warcinfo", "", fields, headers={"WARC-Filename": name, **WARC_FIELDS})


def _serialise(record: _Record, rng: random.Random) -> bytes:
    date = datetime(2023, 6, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(86_400))
    headers = {
        "WARC-Type": record.warc_type,
        "WARC-Date": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}>",
    }
    if record.url:
        headers["WARC-Target-URI"] = record.url
    if record.warc_type in ("request", "response"):
        headers["Content-Type"] = f"application/http; msgtype={record.warc_type}"
    elif record.warc_type == "conversion":
        headers["Content-Type"] = "text/plain"
    headers.update(record.headers)
    headers["Content-Length"] = str(len(record.block) + record.content_length_error)
    head = record.version + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + record.block + b"\r\n\r\n"


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
