"""Dates, times and timestamps in text: digit runs that parse as phone numbers or IPv6 but are neither.

libphonenumber, given "2013-11-11 14" cut out of "2013-11-11 14:33:38", finds the valid US number
(201) 311-1114, and "2013::14:53:40" out of Erlang's "10-Oct-2013::14:53:40" is a valid IPv6
address. Number finders that first mask what this module finds never see such runs.

Found: ISO 8601 dates and date-times (T or space, fractions of 1-9 digits after "." or ",",
zones Z/+02:00/+0200) with -, / or . between the date's fields; basic ISO and compact
yyyymmdd[hhmmss[fff]]; dd.mm.yyyy, dd-mm-yyyy, dd/mm/yy[yy] and US mm/dd/yyyy with an optional
clock (12-hour too); dd-Mon-yyyy with the Apache (":"), Erlang ("::") or plain clock, RFC 2822
and HTTP dates; syslog "Nov 11 14:33:38", ctime and date(1); "November 11, 2013"; MySQL's
legacy "131111 14:33:38"; epoch seconds, millis, micros and nanos of 2001-2033 (ten digits
from 1), with or without a fraction; kernel uptime stamps "[12345.678901]"; bare clocks.
A match never starts or ends inside a longer token, so version numbers, IPv4 addresses and
hh:mm-looking IPv6 groups ("fe80::10:20") are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_MONTH_2 = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
_DAY_2 = r"(?:0[1-9]|[12]\d|3[01])"
_HOUR_2 = r"(?:[01]\d|2[0-3])"
_MINUTE = r"[0-5]\d"
_SECOND = r"(?:[0-5]\d|60)"
_FRACTION = r"(?:[.,]\d{1,9})"
_OFFSET = rf"(?:Z|\s?[+-]{_HOUR_2}:?{_MINUTE}(?!\d))"
_MERIDIEM = r"(?:\s?(?:[AaPp]\.?[Mm]\.?)(?![A-Za-z]))"
_CLOCK = rf"(?:[01]?\d|2[0-3]):{_MINUTE}(?::{_SECOND}{_FRACTION}?)?{_MERIDIEM}?"
_MONTH_ABBR = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_MONTH_WORD = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December"
    r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?"
)

_BRANCHES = (
    # ISO 8601 and its slash/dot cousins: 2013-11-11T14:33:38.123+02:00, 2013/11/11 14:33:38,
    # 2013.11.11-14.33.38
    rf"{_YEAR}(?:-{_MONTH}-{_DAY}|/{_MONTH}/{_DAY}|\.{_MONTH}\.{_DAY})"
    rf"(?:(?:T|\s{{1,2}}|_){_CLOCK}{_OFFSET}?|-{_HOUR_2}\.{_MINUTE}\.{_SECOND})?",
    # basic ISO and compact: 20131111T143338Z, 20131111143338123, 20131111
    rf"{_YEAR}{_MONTH_2}{_DAY_2}(?:T?{_HOUR_2}{_MINUTE}(?:{_SECOND}(?:\d{{3}}|{_FRACTION})?)?(?:Z|[+-]{_HOUR_2}{_MINUTE})?)?",
    # day and month name: 10/Oct/2000:13:55:36 -0700, 10-Oct-2013::14:53:40, 11 Nov 2013 14:33:38 +0000
    rf"{_DAY}[-/ ]{_MONTH_WORD}[-/ ](?:{_YEAR}|\d\d)(?:(?:::?|\s){_CLOCK}{_OFFSET}?)?",
    # numeric day-month-year or US month/day/year, with a clock: 11.11.2013 14:33, 11/11/2013 2:33:38 PM
    rf"(?:{_DAY}\.{_MONTH}\.{_YEAR}|[0-3]?\d/[0-3]?\d/(?:{_YEAR}|\d\d)|[0-3]?\d-[0-3]?\d-{_YEAR})(?:,?\s{{1,2}}{_CLOCK})?",
    # MySQL before 5.6: 131111 14:33:38
    rf"\d\d{_MONTH_2}{_DAY_2}\s{{1,2}}{_CLOCK}",
    # epoch seconds (2001-2033), millis, micros, nanos, maybe with a fraction
    r"1\d{9}(?:\d{3}){0,3}(?:\.\d{1,9})?",
    # seconds since boot, as the kernel stamps its lines
    r"\[\s*\d{1,10}\.\d{6}\]",
    # month first: syslog Nov 11 14:33:38, ctime Mon Nov 11 14:33:38 2013, date(1) ... UTC 2013
    rf"{_MONTH_ABBR}\s{{1,2}}{_DAY}\s{_CLOCK}(?:\s(?:[A-Z]{{2,5}}\s)?{_YEAR})?",
    # November 11, 2013; Nov 11, 2013
    rf"{_MONTH_WORD}\s{_DAY}(?:st|nd|rd|th)?,?\s{_YEAR}",
    # a clock alone: 14:33:38.123456, 2:33 PM, 14:33 +0200
    rf"{_CLOCK}{_OFFSET}?",
)
TIMESTAMP_PATTERN = re.compile(
    r"(?<![\w.:+/@-])(?:" + "|".join(_BRANCHES) + r")(?![\w@]|[.:]\d)",
)


def find_timestamps(text: str) -> Iterator[tuple[int, int]]:
    """Spans of dates, times and timestamps, left to right, never overlapping."""
    for match in TIMESTAMP_PATTERN.finditer(text):
        yield match.span()
