"""The timestamp recogniser: every format logs and mails write is found whole; numbers that are not times are left alone."""

import random

import pytest

from tasks.curate.timestamps import find_timestamps
from tasks.synthetic.timestamps import FORMATS, timestamp

SURROUNDINGS = ["{}", "at {} ok", "[{}]", "ts={},next", '"{}"', "({})", "{}: message", "time: {}", "on {}.", "{}\tweb01"]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_is_found_whole_and_no_further(name):
    rng = random.Random(name)
    for n in range(200):
        written = timestamp(rng, name)
        line = SURROUNDINGS[n % len(SURROUNDINGS)].format(written)
        at = line.index(written)
        spans = list(find_timestamps(line))
        covered = {i for start, end in spans for i in range(start, end)}
        assert all(i in covered for i in range(at, at + len(written)) if line[i].isdigit()), (line, spans)
        beyond = [line[i] for i in covered if not at <= i < at + len(written)]
        assert not any(c.isalnum() for c in beyond), (line, spans)  # a bracket around it at most


@pytest.mark.parametrize(
    "text",
    [
        "Apache/2.4.41 (Ubuntu) nginx/1.25.3 kernel 5.15.0-89-generic build 10.0.19045.3693",
        "hosts 10.11.12.13, 192.168.1.10:8080 and 8.8.8.8",
        "fe80::10:20, 2001:db8::14:33:38 and [2001:db8::1]:5060, MAC 00:1a:2b:3c:4d:5e",
        "call +1-202-555-0143, (202) 555-0143, +44 (0)1772 285411, 030 12345678 or 01 23 45 67 89",
        "ISBN 978-3-16-148410-0, uuid 550e8400-e29b-41d4-a716-446655440000, sha 3f786850e387550fdab836ed7e6dc881de23001b",
        "SKU-20131111, IMG_20131111_143338.jpg, job-20131111-000123, v20131111",
        "mobile 13812345678, order 2345678901, 12345678901234 bytes",
    ],
)
def test_numbers_that_are_not_times_are_left_alone(text):
    assert [text[start:end] for start, end in find_timestamps(text)] == []


def test_a_timestamp_next_to_a_phone_number_stops_where_it_ends():
    text = "Nov 11 14:33:38 +441772285411 and 2013-11-11 14:33:38 +0200 2025550143"
    assert [text[start:end] for start, end in find_timestamps(text)] == ["Nov 11 14:33:38", "2013-11-11 14:33:38 +0200"]
