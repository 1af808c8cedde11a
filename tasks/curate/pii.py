"""PII scrubbing with fast pattern matchers, as pretraining pipelines do (Dolma, datatrove).

Found and replaced by a typed placeholder (``|||EMAIL_ADDRESS|||`` ...): e-mail addresses, IBANs
(mod-97 and the country's format, python-stdnum), credit-card numbers (13-19 digits, Luhn, a card
network's prefix), US SSNs (no 000/666/9xx area, 00 group, 0000 serial, known published numbers),
IPv4/IPv6 addresses (validated by :mod:`ipaddress`; all of them as Dolma does, or only public
ones as datatrove does), and phone numbers (libphonenumber's matcher: any number written with a
``+`` country code, national formats of the configured regions).

Detectors run from the most specific to the loosest, and a later one never claims text an
earlier one found: a card number is not also a phone number. Right after e-mail addresses, dates,
times and timestamps (:mod:`tasks.curate.timestamps`) are claimed as not PII. Claimed text is
masked before the next detector runs, so that no number finder sees a piece of a timestamp
("2013-11-11 14" of "2013-11-11 14:33:38" is a valid US number to libphonenumber). Other look-alikes that are not PII are guarded against: version and
section numbers before an IPv4 (also product tokens: "Chrome/120.0.0.0"), ISBN/DOI/order-number
context, prices, hex hashes and UUIDs (no match starts or ends inside a longer token).

Phone numbers: with a + country code libphonenumber's VALID leniency decides; written nationally
the digits must also be grouped as the country groups them (EXACT_GROUPING: "503 2862953", an
HTTP status and a byte count, is not grouped as a US number is). A bare run of digits is a phone number only where
the text says so ("Tel:", "phone=", "call", a SIP user part before "@"): logs are full of ids,
counters and byte counts that are valid numbers somewhere. Each detector first runs a cheap test
("@" in the text, a regex for its shape) and validates only the candidates it finds.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from stdnum import iban, luhn
from stdnum.us import ssn

from tasks.curate.timestamps import find_timestamps
from tasks.documents import Document
from tasks.steps import Drop, Step

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
IP_ADDRESS = "IP_ADDRESS"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
IBAN = "IBAN"
# Detection order: the most specific shapes first, so that they win a contested span.
KINDS = (EMAIL_ADDRESS, IBAN, CREDIT_CARD, US_SSN, IP_ADDRESS, PHONE_NUMBER)
TIMESTAMP = "TIMESTAMP"  # claimed as not PII, right after e-mail addresses
FINDER_ORDER = (EMAIL_ADDRESS, TIMESTAMP, *KINDS[1:])
MASK = "|"  # over claimed text: not a digit, letter or separator of any number
DEFAULT_MAX_HITS = 5  # Dolma drops documents with more PII spans than this

IpScope = Literal["all", "public"]

# Patterns test the character before a match right after their first character, not before it:
# a pattern that starts with a character class lets the regex engine skip to candidates fast.

_EMAIL_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
EMAIL_PATTERN = re.compile(
    rf"(?<![A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]){_EMAIL_ATOM}(?:\.{_EMAIL_ATOM})*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
# "email=jo@example.com" in a log: the key is not part of the address.
EMAIL_KEY_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*=(?=[^=@]+@)")
# "logo@2x.png" is an image name (retina assets), not an address.
FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf"})

IPV4_PATTERN = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\w|\.\d)")
IPV6_PATTERN = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){1,8}(?:\.\d{1,3}){0,3}(?!\w|:[0-9A-Fa-f:]|\.\d)"
)
# An IPv4-shaped number after these words is a version, build or section number.
VERSION_CONTEXT = re.compile(
    r"\b(?:version|versions|ver\.?|release|build|firmware|kernel|rev\.?|revision|section|chapter|§|oid)\s*:?\s*$",
    re.IGNORECASE,
)
# A product token ("Chrome/120.0.0.0", RFC 9110's product/version) names a version; a lower-case
# path segment ("/hosts/10.0.0.1") does not.
PRODUCT_TOKEN_BEFORE = re.compile(r"(?:^|[^\w/])[A-Z][\w.-]*/$")

CARD_PATTERN = re.compile(r"\d(?<![\w.,+-]\d)(?:[ -]?\d){12,18}(?!\w|[.,-]\d)")
# Visa, Mastercard (51-55, 2221-2720), Amex, Diners, Discover, JCB, UnionPay, Maestro: no card
# network starts with 0, 1, 7, 8 or 9, which rules out ISBN-13s (978/979) among others.
CARD_NETWORK_PREFIX = re.compile(r"(?:4|5[0-9]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[0-8]|6)")

SSN_SEPARATED = re.compile(r"(\d(?<![\w-]\d)\d\d)([- ])(\d{2})\2(\d{4})(?!\w|-\d)")
SSN_BARE = re.compile(r"\d(?<![\w-]\d)\d{8}(?!\w|-\d)")
# A bare nine-digit run is an SSN only where the text says so just before it.
SSN_WORDS = re.compile(r"ssn|ss#|social security", re.IGNORECASE)
SSN_CONTEXT = re.compile(r"(?:ssn|ss#|social security(?: number| no\.?)?)\W{0,6}$", re.IGNORECASE)

IBAN_PATTERN = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")

PHONE_CANDIDATE = re.compile(
    r"[+(\d](?<![\w.\-+].)(?:(?<=\+)\(?\d|(?<=\()\d|(?<=\d))[\d \t.\-()/\u00a0]{5,24}\d\)?(?![\w\-/]|\.\d)"
)
PHONE_MIN_DIGITS = 7
# What says that a bare run of digits is a phone number, just before it: a phone word, an Asterisk
# dial string ("SIP/trunk/2025550143"), a caller ID ('"Jo Smith" <2025550143>').
PHONE_CUE = re.compile(
    r"\b(?:tel|t[eé]l[eé]phone|telefon|phone|ph|mobile?|mob|cell|handy|fax|sms|whatsapp|call(?:ed|ing|er|erid)?"
    r"|cid|clid|ani|dnis|msisdn|dial(?:l?ed)?|ext(?:ension)?)\b(?:\s*(?:number|no\.?|nr\.?|#))?"
    r"(?:\s+(?:me|us|him|her|them))?(?:\s+(?:on|at))?[\s.:=#'\"(\uff1a-]*$"
    r"|(?:电话|電話|传真|傳真|手机|手機|热线|熱線)[\s:\uff1a]*$"
    r"|\b(?:PJSIP|SIP|IAX2|DAHDI|Local)/(?:[\w-]+/)?$|\"\s?<$",
    re.IGNORECASE,
)
# An area code with its trunk 0, a hyphen, the subscriber number: "021-54098575", "030-1234567".
# Common in China, Germany, the Netherlands, and not how libphonenumber groups them.
TRUNK_AREA_HYPHEN = re.compile(r"0\d{1,4}-\d{6,8}")
# "0.548095", "12345.678901": a decimal number, not a phone number written with one dot.
DECIMAL = re.compile(r"(?:0|[1-9]\d*)\.\d+")
# Numbers named as something else just before: identifiers that happen to parse as phones.
IDENTIFIER_CONTEXT = re.compile(
    r"(?:\b(?:isbn(?:-1[03])?|issn|doi|arxiv|pmid|sku|order|invoice|tracking|serial|account|ref(?:erence)?)"
    r"(?:\s*(?:no\.?|nr\.?|number|id|#))?|(?<!caller )(?<!caller-)\bid|#)[\s.:#=-]*$",
    re.IGNORECASE,
)
DATE_SHAPE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
CURRENCY_BEFORE = re.compile(r"(?:[$€£¥₹]|\b(?:USD|EUR|GBP|JPY|CHF|INR))\s?$")
CURRENCY_AFTER = re.compile(r"^\s?(?:[$€£¥₹]|(?:USD|EUR|GBP|JPY|CHF|INR)\b)")
CONTEXT_CHARS = 24

# A finder's hit: start, end, and whether it is PII (False: a look-alike that claims its text).
Found = tuple[int, int, bool]


@dataclass(frozen=True, slots=True, order=True)
class PIISpan:
    start: int
    end: int
    kind: str


def _preceding(text: str, start: int) -> str:
    return text[max(0, start - CONTEXT_CHARS) : start]


def find_emails(text: str) -> Iterator[Found]:
    if "@" not in text:
        return
    for match in EMAIL_PATTERN.finditer(text):
        if match.group().rsplit(".", 1)[1].lower() not in FILE_SUFFIXES:
            key = EMAIL_KEY_PREFIX.match(match.group())
            yield match.start() + (key.end() if key else 0), match.end(), True


def claim_timestamps(text: str) -> Iterator[Found]:
    for start, end in find_timestamps(text):
        yield start, end, False


def _longest_valid_prefix(candidate: str, is_valid: Callable[[str], bool], min_chars: int) -> int:
    """Length of the longest prefix, ending before a space or dash, that ``is_valid``; 0 if none.

    A match can run on into a following group ("... 1111 12/25", "... 00 BIC"): cutting at group
    boundaries from the end finds the number without letting a longer run pass as one.
    """
    cuts = [len(candidate)] + [m.start() for m in re.finditer(r"[ -]", candidate)][::-1]
    for cut in cuts:
        if cut < min_chars:
            break
        if is_valid(candidate[:cut]):
            return cut
    return 0


def _is_iban(candidate: str) -> bool:
    return iban.is_valid(candidate)


def find_ibans(text: str) -> Iterator[Found]:
    for match in IBAN_PATTERN.finditer(text):
        if length := _longest_valid_prefix(match.group(), _is_iban, 15):
            yield match.start(), match.start() + length, True
        else:  # a mistyped IBAN or a code of that shape: its digit groups are not cards or phones
            yield *match.span(), False


# How printed cards group their digits: 16 digits, 19 (UnionPay), Amex 15, Diners 14.
CARD_GROUPINGS = frozenset({(4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4)})


def _card_grouping_ok(candidate: str) -> bool:
    separators = set(re.findall(r"[ -]", candidate))
    if not separators:
        return True
    groups = tuple(len(g) for g in re.split(r"[ -]", candidate))
    return len(separators) == 1 and groups in CARD_GROUPINGS


def _card_shaped(candidate: str) -> bool:
    digits = re.sub(r"[ -]", "", candidate)
    return 13 <= len(digits) <= 19 and CARD_NETWORK_PREFIX.match(digits) is not None and _card_grouping_ok(candidate)


def find_cards(text: str) -> Iterator[Found]:
    for match in CARD_PATTERN.finditer(text):
        if length := _longest_valid_prefix(match.group(), _card_shaped, 13):
            # Failing Luhn, it is a mistyped card or an account-style number: not a phone either.
            is_card = luhn.is_valid(re.sub(r"[ -]", "", match.group()[:length]))
            yield match.start(), match.start() + length, is_card


def find_ssns(text: str) -> Iterator[Found]:
    for match in SSN_SEPARATED.finditer(text):
        area, _, group, serial = match.groups()
        if ssn.is_valid(f"{area}-{group}-{serial}"):
            yield *match.span(), True
    if not SSN_WORDS.search(text):
        return
    for match in SSN_BARE.finditer(text):
        if SSN_CONTEXT.search(_preceding(text, match.start())) and ssn.is_valid(match.group()):
            yield *match.span(), True


def _is_version(text: str, start: int) -> bool:
    return VERSION_CONTEXT.search(_preceding(text, start)) is not None


def _is_product_version(text: str, start: int) -> bool:
    return PRODUCT_TOKEN_BEFORE.search(_preceding(text, start)) is not None


def _ipv6(candidate: str) -> tuple[ipaddress.IPv6Address, int] | None:
    """The address and its length: a sentence may put a colon right after it ("2001:db8::1: denied")."""
    for length in (len(candidate), len(candidate) - 1) if candidate.endswith(":") else (len(candidate),):
        try:
            return ipaddress.IPv6Address(candidate[:length]), length
        except ValueError:
            continue
    return None


def find_ips(text: str, scope: IpScope = "all") -> Iterator[Found]:
    # IPv6 first: an IPv4-mapped address ("::ffff:192.0.2.1") ends in an IPv4 one.
    if ":" in text:
        for match in IPV6_PATTERN.finditer(text):
            candidate = match.group()
            # Scoped names in code ("abc::def") parse as IPv6 too; real addresses carry a digit.
            if not any(c.isdigit() for c in candidate):
                continue
            if parsed := _ipv6(candidate):
                address, length = parsed
                yield match.start(), match.start() + length, scope == "all" or address.is_global
    for match in IPV4_PATTERN.finditer(text):
        try:
            address = ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        if not (_is_version(text, match.start()) or _is_product_version(text, match.start())):
            yield *match.span(), scope == "all" or address.is_global


def _said_to_be_a_phone(text: str, start: int, end: int) -> bool:
    """A phone cue just before, or the user part of a SIP address ("2025550143@trunk") after."""
    return PHONE_CUE.search(_preceding(text, start)) is not None or text[end : end + 1] == "@"


def _written_as_a_phone(text: str, start: int, end: int) -> bool:
    """Said to be a phone number, or written as area code-subscriber ("0512-55111066")."""
    return _said_to_be_a_phone(text, start, end) or TRUNK_AREA_HYPHEN.fullmatch(text, start, end) is not None


def _unsaid_bare_digits(text: str, start: int, end: int) -> bool:
    """Digits alone that the text does not say are a phone number: an id, a counter, a hex id of decimal digits."""
    return text[start:end].isdigit() and not _said_to_be_a_phone(text, start, end)


def _phone_lookalike(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    # After a slash only a number with its country code ("SIP/+441772285411") or one said to be a
    # phone: otherwise it is a piece of a path or a fraction.
    after_slash = (
        start > 0 and text[start - 1] == "/" and not (raw.startswith("+") or _said_to_be_a_phone(text, start, end))
    )
    return (
        DATE_SHAPE.fullmatch(raw) is not None
        or DECIMAL.fullmatch(raw) is not None
        or _unsaid_bare_digits(text, start, end)
        or after_slash
        or IDENTIFIER_CONTEXT.search(_preceding(text, start)) is not None
        or _is_version(text, start)
        or CURRENCY_BEFORE.search(_preceding(text, start)) is not None
        or CURRENCY_AFTER.match(text[end : end + 5]) is not None
        or (end < len(text) and (text[end].isalnum() or text[end] in "-/"))
        or (start > 0 and (text[start - 1].isalnum() or text[start - 1] in ".-"))
    )


def find_phones(text: str, regions: Sequence[str] = ("US",)) -> Iterator[Found]:
    """Numbers libphonenumber finds valid for one of ``regions`` (or by their + country code).

    The matcher is run on each phone-shaped run of the text only: on a whole long document it
    would cost far more, and runs with fewer than 7 digits are never numbers.
    """
    for candidate in PHONE_CANDIDATE.finditer(text):
        window = candidate.group()
        if sum(c.isdigit() for c in window) < PHONE_MIN_DIGITS or _unsaid_bare_digits(text, *candidate.span()):
            continue
        offset = candidate.start()
        found: set[tuple[int, int]] = set()
        # With a + country code the region plays no part: one pass is enough, and the number may
        # be grouped in any of the ways people write it. Without one, only as its country groups it,
        # unless the text says it is a phone number or it is written as area code-subscriber.
        international = window.lstrip("(").startswith("+")
        passes = [(phonenumbers.Leniency.VALID if international else phonenumbers.Leniency.EXACT_GROUPING, None)]
        if not international and (_said_to_be_a_phone(text, offset, candidate.end()) or TRUNK_AREA_HYPHEN.search(window)):
            passes.append((phonenumbers.Leniency.VALID, _written_as_a_phone))
        for leniency, accept in passes:
            for region in regions[:1] if international else regions:
                for match in phonenumbers.PhoneNumberMatcher(window, region, leniency=leniency):
                    span = (offset + match.start, offset + match.end)
                    if span in found or (accept and not accept(text, *span)) or _phone_lookalike(text, *span):
                        continue
                    found.add(span)
        for start, end in sorted(found):
            yield start, end, True


class PIIDetector:
    """Finds PII spans: sorted, never overlapping, each of one kind."""

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        phone_regions: Sequence[str] = ("US",),
        ip_scope: IpScope = "all",
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {list(KINDS)}")
        bad_regions = [r for r in phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if bad_regions:
            raise ValueError(f"not libphonenumber regions: {bad_regions} (ISO 3166 alpha-2, e.g. 'US', 'GB')")
        if ip_scope not in ("all", "public"):
            raise ValueError(f"ip_scope must be 'all' or 'public', got {ip_scope!r}")
        finders: dict[str, Callable[[str], Iterator[Found]]] = {
            EMAIL_ADDRESS: find_emails,
            TIMESTAMP: claim_timestamps,
            IBAN: find_ibans,
            CREDIT_CARD: find_cards,
            US_SSN: find_ssns,
            IP_ADDRESS: lambda text: find_ips(text, ip_scope),
            PHONE_NUMBER: lambda text: find_phones(text, tuple(phone_regions)),
        }
        self._finders = [(kind, finders[kind]) for kind in FINDER_ORDER if kind in kinds or kind == TIMESTAMP]

    def find(self, text: str) -> list[PIISpan]:
        # Claimed text, PII or not (kind None): a later, looser detector never looks inside it.
        claimed: list[tuple[int, int, str | None]] = []
        for kind, finder in self._finders:
            taken = []
            for start, end, is_pii in finder(text):
                at = bisect.bisect_left(claimed, (start,))
                overlaps_next = at < len(claimed) and claimed[at][0] < end
                overlaps_previous = at > 0 and claimed[at - 1][1] > start
                if not (overlaps_next or overlaps_previous):
                    claimed.insert(at, (start, end, kind if is_pii else None))
                    taken.append((start, end))
            if taken:  # later finders see neither the claimed text nor pieces of it
                text = _masked(text, sorted(taken))
        return [PIISpan(start, end, kind) for start, end, kind in claimed if kind is not None]


def _masked(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with each span overwritten by a character no finder takes for part of a number."""
    pieces, position = [], 0
    for start, end in spans:
        pieces += [text[position:start], MASK * (end - start)]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def placeholder(kind: str) -> str:
    return f"|||{kind}|||"


def redact(text: str, spans: Sequence[PIISpan]) -> str:
    pieces, position = [], 0
    for span in spans:
        pieces.append(text[position : span.start])
        pieces.append(placeholder(span.kind))
        position = span.end
    pieces.append(text[position:])
    return "".join(pieces)


class PIIScrubber(Step):
    """Replaces PII with typed placeholders; counts go to ``meta["pii"]`` ({kind: count}).

    A document with more than ``max_hits`` spans is dropped ("pii:too_many_hits"): a page that
    is mostly contact data (a directory, a leaked list) is not worth keeping scrubbed.
    ``max_hits=None`` never drops.
    """

    name = "pii"

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        phone_regions: Sequence[str] = ("US",),
        ip_scope: IpScope = "all",
        max_hits: int | None = DEFAULT_MAX_HITS,
    ) -> None:
        super().__init__()
        if max_hits is not None and max_hits < 0:
            raise ValueError(f"max_hits must be >= 0 or None, got {max_hits}")
        self.detector = PIIDetector(kinds, phone_regions, ip_scope)
        self.max_hits = max_hits

    def apply(self, doc: Document) -> Document | Drop:
        spans = self.detector.find(doc.text)
        if self.max_hits is not None and len(spans) > self.max_hits:
            return self.drop("too_many_hits")
        doc.meta["pii"] = dict(sorted(Counter(span.kind for span in spans).items()))
        if spans:
            doc.text = redact(doc.text, spans)
        return doc
