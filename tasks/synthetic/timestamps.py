"""Dates, times and timestamps as logs, mail and exports write them, each format by name.

ISO 8601 (T or space, fractions of 3 to 9 digits after "." or ",", zones Z, +02:00, +0200, zone
names), compact forms, dd-Mon-yyyy and Erlang's dd-Mon-yyyy::hh:mm:ss, BSD syslog, Apache access
and error logs, ctime and date(1), RFC 2822 and HTTP dates, US and European numeric dates, 12-hour
clocks, MySQL's legacy yymmdd, epoch seconds/millis/micros, kernel uptime stamps, bare times, the
long forms mail clients write in quote headers. Deterministic for a generator's state.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

# Ten-digit epoch seconds: what logs of this century hold.
EARLIEST = datetime(2001, 9, 10, tzinfo=timezone.utc)
LATEST = datetime(2033, 5, 17, tzinfo=timezone.utc)
UTC_OFFSETS_MINUTES = (0, 0, 60, 120, -300, -420, -480, 330, 540, -180)
ZONE_NAMES = ("UTC", "GMT", "CET", "CEST", "EST", "PDT", "IST")


def moment(rng: random.Random) -> datetime:
    seconds = rng.randrange(int(EARLIEST.timestamp()), int(LATEST.timestamp()))
    zone = timezone(timedelta(minutes=rng.choice(UTC_OFFSETS_MINUTES)))
    return datetime.fromtimestamp(seconds, zone).replace(microsecond=rng.randrange(1_000_000))


def _offset(t: datetime, colon: bool) -> str:
    raw = t.strftime("%z")  # +0200
    return f"{raw[:3]}:{raw[3:]}" if colon else raw


def _millis(t: datetime) -> str:
    return f"{t.microsecond // 1000:03d}"


def _nanos(t: datetime, rng: random.Random) -> str:
    return f"{t.microsecond:06d}{rng.randrange(1000):03d}"


def _hour12(t: datetime, pad: bool) -> str:
    hour = t.hour % 12 or 12
    return f"{hour:02d}" if pad else str(hour)


def _meridiem(t: datetime, rng: random.Random) -> str:
    word = "PM" if t.hour >= 12 else "AM"
    return word if rng.random() < 0.8 else word.lower()


def _syslog_day(t: datetime) -> str:
    return f"{t:%b} {t.day:>2}"  # "Nov  1": space-padded day


def _iso_zone(t: datetime, rng: random.Random) -> str:
    return rng.choice(["Z", _offset(t, colon=True), _offset(t, colon=False)])


FORMATS: dict[str, Callable[[datetime, random.Random], str]] = {
    "iso8601": lambda t, r: f"{t:%Y-%m-%dT%H:%M:%S}{r.choice(['', _iso_zone(t, r)])}",
    "iso8601_millis": lambda t, r: f"{t:%Y-%m-%dT%H:%M:%S}.{_millis(t)}{_iso_zone(t, r)}",
    "iso8601_micros": lambda t, r: f"{t:%Y-%m-%dT%H:%M:%S.%f}{r.choice(['', _iso_zone(t, r)])}",
    "iso8601_nanos": lambda t, r: f"{t:%Y-%m-%dT%H:%M:%S}.{_nanos(t, r)}Z",
    "iso8601_hours_minutes": lambda t, r: f"{t:%Y-%m-%dT%H:%M}{_iso_zone(t, r)}",
    "iso8601_basic": lambda t, r: f"{t:%Y%m%dT%H%M%S}{r.choice(['', 'Z', _offset(t, colon=False)])}",
    "iso_space": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S}",
    "iso_space_comma_millis": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S},{_millis(t)}",
    "iso_space_millis_offset": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S}.{_millis(t)} {_offset(t, colon=False)}",
    "iso_space_offset": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S}{r.choice(['', ' '])}{_offset(t, r.random() < 0.5)}",
    "iso_space_zone_name": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S}.{_millis(t)} {r.choice(ZONE_NAMES)}",
    "iso_space_ticks": lambda t, r: f"{t:%Y-%m-%d %H:%M:%S.%f}{r.randrange(10)}",  # .NET: 7 digits
    "iso_date": lambda t, r: f"{t:%Y-%m-%d}",
    "compact": lambda t, r: f"{t:%Y%m%d%H%M%S}",
    "compact_date": lambda t, r: f"{t:%Y%m%d}",
    "compact_millis": lambda t, r: f"{t:%Y%m%d%H%M%S}{_millis(t)}",
    "slash_ymd": lambda t, r: f"{t:%Y/%m/%d %H:%M:%S}",
    "dot_ymd": lambda t, r: r.choice([f"{t:%Y.%m.%d}", f"{t:%Y.%m.%d %H:%M:%S}", f"{t:%Y.%m.%d-%H.%M.%S}"]),
    "dot_dmy": lambda t, r: r.choice([f"{t:%d.%m.%Y}", f"{t:%d.%m.%Y %H:%M:%S}", f"{t:%d.%m.%Y %H:%M}", f"{t.day}.{t.month}.{t:%Y}"]),
    "slash_dmy": lambda t, r: r.choice([f"{t:%d/%m/%Y}", f"{t:%d/%m/%Y %H:%M}", f"{t:%d/%m/%Y %H:%M:%S}"]),
    "dash_dmy": lambda t, r: r.choice([f"{t:%d-%m-%Y}", f"{t:%d-%m-%Y %H:%M:%S}"]),
    "us_12h": lambda t, r: f"{t.month}/{t.day}/{t:%Y} {_hour12(t, r.random() < 0.3)}:{t:%M:%S} {_meridiem(t, r)}",
    "us_short": lambda t, r: r.choice([f"{t:%m/%d/%y %H:%M}", f"{t.month}/{t.day}/{t:%y}", f"{t:%m/%d/%Y}"]),
    "dd_mon_yyyy": lambda t, r: r.choice([f"{t:%d-%b-%Y}", f"{t:%d-%b-%y}", f"{t:%d %b %Y}"]),
    "dd_mon_yyyy_time": lambda t, r: f"{t:%d-%b-%Y %H:%M:%S}.{_millis(t)}",
    "erlang": lambda t, r: f"{t:%d-%b-%Y::%H:%M:%S}",
    "syslog": lambda t, r: f"{_syslog_day(t)} {t:%H:%M:%S}",
    "syslog_micros": lambda t, r: f"{_syslog_day(t)} {t:%H:%M:%S.%f}",
    "apache_access": lambda t, r: f"[{t:%d/%b/%Y:%H:%M:%S} {_offset(t, colon=False)}]",
    "apache_error": lambda t, r: f"[{t:%a %b %d %H:%M:%S.%f %Y}]",
    "ctime": lambda t, r: f"{t:%a} {_syslog_day(t)} {t:%H:%M:%S %Y}",
    "date_command": lambda t, r: f"{t:%a} {_syslog_day(t)} {t:%H:%M:%S} {r.choice(ZONE_NAMES)} {t:%Y}",
    "rfc2822": lambda t, r: f"{t:%a}, {t.day if r.random() < 0.3 else f'{t:%d}'} {t:%b %Y %H:%M:%S} {_offset(t, colon=False)}",
    "rfc2822_comment": lambda t, r: f"{t:%a, %d %b %Y %H:%M:%S} {_offset(t, colon=False)} ({r.choice(ZONE_NAMES)})",
    "rfc2822_no_weekday": lambda t, r: f"{t:%d %b %Y %H:%M:%S} {_offset(t, colon=False)}",
    "http_date": lambda t, r: f"{t:%a, %d %b %Y %H:%M:%S} GMT",
    "rfc850": lambda t, r: f"{t:%A, %d-%b-%y %H:%M:%S} GMT",
    "mysql_legacy": lambda t, r: f"{t:%y%m%d} {t.hour:>2}:{t:%M:%S}",
    "epoch_seconds": lambda t, r: str(int(t.timestamp())),
    "epoch_millis": lambda t, r: f"{int(t.timestamp())}{_millis(t)}",
    "epoch_fraction": lambda t, r: f"{int(t.timestamp())}.{r.choice([_millis(t), f'{t.microsecond:06d}', str(r.randint(1, 99))])}",
    "kernel_uptime": lambda t, r: f"[{int(10 ** r.uniform(0, 7)):>5}.{t.microsecond:06d}]",  # seconds since boot
    "time": lambda t, r: f"{t:%H:%M:%S}",
    "time_fraction": lambda t, r: r.choice([f"{t:%H:%M:%S.%f}", f"{t:%H:%M:%S}.{_millis(t)}", f"{t:%H:%M:%S},{_millis(t)}"]),
    "time_hours_minutes": lambda t, r: f"{t:%H:%M}",
    "time_12h": lambda t, r: f"{_hour12(t, False)}:{t:%M} {_meridiem(t, r)}",
    "long_us": lambda t, r: f"{t:%B} {t.day}, {t:%Y}",
    "long_day_month": lambda t, r: f"{t.day} {t:%B %Y}",
    "mail_quote": lambda t, r: f"{t:%a, %b} {t.day}, {t:%Y} at {_hour12(t, False)}:{t:%M} {_meridiem(t, r)}",
    "outlook_sent": lambda t, r: f"{t:%A, %B} {t.day}, {t:%Y} {_hour12(t, False)}:{t:%M} {_meridiem(t, r)}",
}


def timestamp(rng: random.Random, name: str | None = None) -> str:
    """A moment written in the format ``name``, or in one drawn at random."""
    return FORMATS[name or rng.choice(sorted(FORMATS))](moment(rng), rng)
