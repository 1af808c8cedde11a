"""A labelled PII set: positives in many real formats inside prose, and hard negatives beside them.

Positives: e-mail addresses (subdomains, plus tags), phone numbers (E.164, international and
national formats of several countries with spaces, dots, dashes, parentheses), IPv4 and IPv6
addresses (full, compressed, link-local, IPv4-mapped), card numbers of seven networks with and
without separators, US SSNs, IBANs of several countries. Each is labelled by kind and character
span. Hard negatives carry no label: version and section numbers, ISBN-10/13, DOIs, dates, prices,
git hashes, UUIDs, order and invoice numbers, timestamps, card numbers failing Luhn, IBANs failing
mod-97, SSNs in never-issued ranges.

Deterministic for a seed. Phone numbers are libphonenumber-valid for their country (the set checks
each one), so that a miss is the detector's, not the generator's.
"""

from __future__ import annotations

import functools
import ipaddress
import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import phonenumbers
from stdnum import ean, iban, isbn, luhn
from stdnum.us import ssn

# National formats are written for these regions: a detector must be configured with them.
NATIONAL_PHONE_REGIONS = ("US", "GB", "DE", "FR")
INTERNATIONAL_PHONE_REGIONS = NATIONAL_PHONE_REGIONS + ("IN", "BR", "JP", "AU", "ES", "IT")

FIRST = ["anna", "jose", "li", "maria", "olu", "sven", "priya", "tom", "zoe", "marc"]
LAST = ["smith", "garcia", "chen", "muller", "okafor", "larsen", "rao", "dubois", "kim", "nowak"]
DOMAINS = [
    "example.com", "mail.example.co.uk", "cs.uni-example.edu", "sales.dept.example.org",
    "example.io", "post.example.de", "example-mail.fr", "corp.example.net",
]
PROSE = (
    "the committee met again on tuesday to review the plan and agreed to publish the report after a "
    "short delay while the figures were checked by two independent teams from the regional office"
).split()

# (network, prefixes, length, grouping)
CARD_NETWORKS = [
    ("visa", ["4"], 16, (4, 4, 4, 4)),
    ("mastercard", ["51", "53", "55", "2221", "2500", "2720"], 16, (4, 4, 4, 4)),
    ("amex", ["34", "37"], 15, (4, 6, 5)),
    ("discover", ["6011", "65"], 16, (4, 4, 4, 4)),
    ("jcb", ["3528", "3589"], 16, (4, 4, 4, 4)),
    ("diners", ["36"], 14, (4, 6, 4)),
    ("unionpay", ["62"], 19, (4, 4, 4, 4, 3)),
]
# Country: BBAN as (count, class) pieces, n digits, a upper-case letters, c alphanumerics.
IBAN_FORMATS = {
    "DE": [(18, "n")],
    "GB": [(4, "a"), (14, "n")],
    "NL": [(4, "a"), (10, "n")],
    "CH": [(5, "n"), (12, "n")],
    "AT": [(16, "n")],
    "PL": [(24, "n")],
    "IE": [(4, "a"), (14, "n")],
    "ES": [(20, "n")],
}
POSITIVE_TEMPLATES = {
    "EMAIL_ADDRESS": ["Write to {} for details.", "Contact: {}", "please email {} before friday", "(reply to {})"],
    "PHONE_NUMBER": ["Call us at {}.", "Tel: {}", "Phone number: {}", "reach her on {} after six", "fax {}, or"],
    "IP_ADDRESS": ["the server at {} refused it.", "Host {} logged the login.", "from IP {}:", "ping {}"],
    "CREDIT_CARD": ["Card: {}", "charged to {} yesterday.", "card number {} exp 12/27"],
    "US_SSN": ["SSN {}.", "social security number: {}", "her SSN is {}"],
    "IBAN": ["IBAN: {}", "pay into {} by monday.", "account {} (BIC ABCDDEFFXXX)"],
}


@dataclass(frozen=True, slots=True)
class LabelledSpan:
    start: int
    end: int
    kind: str


@dataclass(frozen=True, slots=True)
class LabelledText:
    text: str
    spans: tuple[LabelledSpan, ...]
    negatives: tuple[str, ...]  # the kinds of hard negative written into the text


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(count))


def _group(digits: str, sizes: Iterable[int], separator: str) -> str:
    pieces, at = [], 0
    for size in sizes:
        pieces.append(digits[at : at + size])
        at += size
    return separator.join(p for p in pieces if p)


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice(
        [f"{first}.{last}", f"{first}+{rng.choice(['news', 'shop', 'x1'])}", f"{first[0]}{last}{rng.randint(1, 99)}",
         f"{first}_{last}", f"{first.upper()}.{last.capitalize()}"]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


@functools.cache
def _example_number(region: str, kind: int) -> phonenumbers.PhoneNumber:
    return phonenumbers.example_number_for_type(region, kind)  # parses metadata: slow, and never mutated here


def valid_phone(rng: random.Random, region: str) -> phonenumbers.PhoneNumber:
    kind = rng.choice([phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE])
    example = _example_number(region, kind)
    national = str(example.national_number)
    for _ in range(100):
        number = phonenumbers.PhoneNumber()
        number.merge_from(example)  # keeps Italy's leading zero and the like
        number.national_number = int(national[:-4] + _digits(rng, 4))
        if phonenumbers.is_valid_number_for_region(number, region):
            return number
    raise RuntimeError(f"no valid {region} number found near the example {example}")


def phone(rng: random.Random) -> str:
    region = rng.choice(INTERNATIONAL_PHONE_REGIONS)
    number = valid_phone(rng, region)
    international = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    styles = [
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164),
        international,
        international.replace(" ", "-").replace("+-", "+"),
    ]
    if region in NATIONAL_PHONE_REGIONS:
        national = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
        styles.append(national)
        if region == "US":
            digits = str(number.national_number)
            styles += [_group(digits, (3, 3, 4), "-"), _group(digits, (3, 3, 4), "."), f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"]
        else:
            styles += [national.replace(" ", "."), national.replace(" ", "-")]
    return rng.choice(styles)


def ip_address(rng: random.Random) -> str:
    choice = rng.randrange(7)
    if choice == 0:
        return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if choice == 1:
        return rng.choice([f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}", f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"])
    groups = [rng.randint(0x2001, 0x2a0f)] + [rng.randint(0, 0xFFFF) for _ in range(7)]
    if choice in (2, 3):  # compressed: a run of zero groups in the middle
        zero_from, zeros = rng.randint(2, 5), rng.randint(2, 3)
        groups[zero_from : zero_from + zeros] = [0] * zeros
    address = ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups))
    if choice == 4:
        return address.exploded
    if choice == 5:
        return f"fe80::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"
    if choice == 6:
        return f"::ffff:{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return address.compressed


def _card_digits(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def card(rng: random.Random, valid: bool = True) -> str:
    _, prefixes, length, grouping = rng.choice(CARD_NETWORKS)
    digits = _card_digits(rng, rng.choice(prefixes), length)
    if not valid:
        digits = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
    return _group(digits, grouping, rng.choice(["", " ", "-"]))


def us_ssn(rng: random.Random) -> str:
    while True:
        area, group, serial = rng.randint(1, 899), rng.randint(1, 99), rng.randint(1, 9999)
        number = f"{area:03d}-{group:02d}-{serial:04d}"
        if ssn.is_valid(number):
            return number.replace("-", rng.choice(["-", "-", " "]))


def _bban(rng: random.Random, country: str) -> str:
    alphabet = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits + string.ascii_uppercase}
    return "".join(rng.choice(alphabet[cls]) for count, cls in IBAN_FORMATS[country] for _ in range(count))


def _with_check_digits(country: str, bban: str) -> str:
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - number % 97:02d}{bban}"


def iban_number(rng: random.Random, valid: bool = True) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    for _ in range(1000):  # some countries add a national check digit of their own
        number = _with_check_digits(country, _bban(rng, country))
        if iban.is_valid(number):
            break
    else:
        raise RuntimeError(f"no valid {country} IBAN generated")
    if not valid:
        wrong = (int(number[2:4]) + rng.randint(1, 90)) % 97 + 2
        number = f"{number[:2]}{wrong:02d}{number[4:]}"
        if iban.is_valid(number):
            number = f"{number[:2]}{(wrong + 1) % 97 + 2:02d}{number[4:]}"
    return number if rng.random() < 0.4 else " ".join(number[i : i + 4] for i in range(0, len(number), 4))


def _isbn13(rng: random.Random) -> str:
    body = rng.choice(["978", "979"]) + _digits(rng, 9)
    return isbn.format(body + ean.calc_check_digit(body))  # hyphenated by registration group


def _isbn10(rng: random.Random) -> str:
    body = "978" + _digits(rng, 9)
    return isbn.format(isbn.to_isbn10(body + ean.calc_check_digit(body)))


HARD_NEGATIVES: dict[str, Callable[[random.Random], str]] = {
    "version": lambda r: r.choice([f"version {r.randint(1, 12)}.{r.randint(0, 30)}.{r.randint(0, 99)}.{r.randint(0, 999)}",
                                         f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}.{r.randint(0, 99)}",
                                         f"release {r.randint(1, 11)}.0.{r.randint(10000, 22999)}.{r.randint(1, 999)}",
                                         f"section {r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}"]),
    "isbn": lambda r: r.choice([f"ISBN {_isbn13(r)}", f"ISBN-10: {_isbn10(r)}", _isbn13(r), f"ISBN {_isbn10(r)}"]),
    "doi": lambda r: r.choice([f"doi:10.{r.randint(1000, 9999)}/{r.randint(100000, 9999999)}",
                                     f"https://doi.org/10.{r.randint(1000, 9999)}/j.cell.{r.randint(2000, 2024)}.{r.randint(1, 12):02d}.{r.randint(1, 99):03d}"]),
    "date": lambda r: r.choice([f"{r.randint(1990, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                                      f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(1990, 2030)}",
                                      f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.{r.randint(1990, 2030)}"]),
    "price": lambda r: r.choice([f"${r.randint(1, 999)},{r.randint(0, 999):03d},{r.randint(0, 999):03d}.{r.randint(0, 99):02d}",
                                       f"€ {r.randint(1, 999)}.{r.randint(0, 999):03d}.{r.randint(0, 999):03d},{r.randint(0, 99):02d}",
                                       f"{r.randint(1, 999)} {r.randint(0, 999):03d} {r.randint(0, 999):03d} EUR",
                                       f"USD {r.randint(1, 999)},{r.randint(0, 999):03d},{r.randint(0, 999):03d}"]),
    "hash": lambda r: r.choice(["".join(r.choice("0123456789abcdef") for _ in range(n)) for n in (7, 12, 40, 64)]),
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
    "order": lambda r: r.choice([f"Order #{_digits(r, 10)}", f"invoice no. {r.randint(2015, 2025)}-{_digits(r, 6)}",
                                       f"tracking number {_digits(r, 12)}", f"SKU {_digits(r, 8)}"]),
    "bad_luhn": lambda r: card(r, valid=False),
    "bad_iban": lambda r: iban_number(r, valid=False),
    "bad_ssn": lambda r: r.choice([f"000-{r.randint(10, 99)}-{r.randint(1000, 9999)}", f"666-{r.randint(10, 99)}-{r.randint(1000, 9999)}",
                                         f"9{r.randint(0, 99):02d}-{r.randint(10, 99)}-{r.randint(1000, 9999)}", f"{r.randint(100, 665)}-00-{r.randint(1000, 9999)}"]),
    "timestamp": lambda r: r.choice([f"{r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
                                           str(r.randint(1_000_000_000, 1_999_999_999)), f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
                                           f"{r.randint(2000, 2030)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}{r.randint(0, 235959):06d}"]),
}

POSITIVES: dict[str, Callable[[random.Random], str]] = {
    "EMAIL_ADDRESS": email,
    "PHONE_NUMBER": phone,
    "IP_ADDRESS": ip_address,
    "CREDIT_CARD": card,
    "US_SSN": us_ssn,
    "IBAN": iban_number,
}


def _prose(rng: random.Random) -> str:
    start = rng.randrange(len(PROSE) - 8)
    words = PROSE[start : start + rng.randint(4, 8)]
    return " ".join(words).capitalize() + "."


def labelled_text(rng: random.Random) -> LabelledText:
    pieces: list[str] = [_prose(rng)]
    length = len(pieces[0])
    spans: list[LabelledSpan] = []
    negatives: list[str] = []
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.55:
            kind = rng.choice(sorted(POSITIVES))
            value = POSITIVES[kind](rng)
            before, after = rng.choice(POSITIVE_TEMPLATES[kind]).split("{}")
            start = length + 1 + len(before)
            spans.append(LabelledSpan(start, start + len(value), kind))
            piece = f"{before}{value}{after}"
        else:
            kind = rng.choice(sorted(HARD_NEGATIVES))
            negatives.append(kind)
            piece = f"See {HARD_NEGATIVES[kind](rng)} in the notes."
        pieces.append(piece)
        length += 1 + len(piece)
        if rng.random() < 0.5:
            pieces.append(_prose(rng))
            length += 1 + len(pieces[-1])
    return LabelledText(" ".join(pieces), tuple(spans), tuple(negatives))


def labelled_texts(seed: int = 0, count: int = 2000) -> list[LabelledText]:
    rng = random.Random(seed)
    return [labelled_text(rng) for _ in range(count)]


@dataclass
class SpanScore:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        labelled = self.true_positives + self.false_negatives
        return self.true_positives / labelled if labelled else 1.0


def score_spans(
    texts: Iterable[LabelledText], predict: Callable[[str], Iterable[tuple[int, int, str]]]
) -> dict[str, SpanScore]:
    """Exact span-level scores per kind (start, end and kind must all match), plus "all"."""
    scores = {kind: SpanScore() for kind in [*POSITIVES, "all"]}
    for sample in texts:
        gold = {(s.start, s.end, s.kind) for s in sample.spans}
        found = set(predict(sample.text))
        for start, end, kind in found:
            hit = (start, end, kind) in gold
            for key in (kind, "all"):
                if hit:
                    scores[key].true_positives += 1
                else:
                    scores[key].false_positives += 1
        for _, _, kind in gold - found:
            scores[kind].false_negatives += 1
            scores["all"].false_negatives += 1
    return scores
