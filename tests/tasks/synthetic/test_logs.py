"""The log and mail line generator: deterministic, every family, spans that point at valid values."""

import ipaddress
from collections import Counter

import phonenumbers

from tasks.synthetic.logs import FAMILIES, PII_SHARE, log_lines
from tasks.synthetic.pii import NATIONAL_PHONE_REGIONS


def _is_valid_value(kind: str, value: str) -> bool:
    if kind == "EMAIL_ADDRESS":
        local, _, domain = value.partition("@")
        return bool(local) and "." in domain and " " not in value
    if kind == "IP_ADDRESS":
        return ipaddress.ip_address(value) is not None
    for region in NATIONAL_PHONE_REGIONS:  # with a + country code the region is not used
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(value, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def test_lines_are_deterministic_and_cover_every_family():
    first, again, other = log_lines(3, 600), log_lines(3, 600), log_lines(4, 600)
    assert first == again and first != other
    assert set(Counter(line.negatives[0] for line in first)) == set(FAMILIES)
    clean = sum(not line.spans for line in first)
    assert abs(clean / len(first) - (1 - PII_SHARE)) < 0.06


def test_planted_spans_are_valid_values_and_clean_lines_are_full_of_numbers():
    lines = log_lines(5, 3000)
    kinds = Counter()
    for line in lines:
        for span in line.spans:
            value = line.text[span.start : span.end]
            assert value == value.strip() and _is_valid_value(span.kind, value), (span.kind, value, line.text)
            kinds[span.kind] += 1
    assert min(kinds[kind] for kind in ("EMAIL_ADDRESS", "IP_ADDRESS", "PHONE_NUMBER")) > 300
    clean = [line.text for line in lines if not line.spans]
    assert sum(sum(c.isdigit() for c in text) >= 7 for text in clean) > 0.7 * len(clean)
