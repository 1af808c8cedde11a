from collections import Counter

from tasks.synthetic.commoncrawl import ENCYCLOPEDIC, KEPT, SPAM, STYLES, WARC_NAME, WEB, WET_NAME, expected_records


def test_english_pages_come_in_three_styles_after_the_fixed_set():
    fixed = expected_records(seed=1, english_pages=0)
    grown = expected_records(seed=1, english_pages=30)
    assert len(grown[WARC_NAME]) == len(fixed[WARC_NAME]) + 30
    assert Counter(r.style for r in grown[WARC_NAME][-30:]) == {ENCYCLOPEDIC: 10, WEB: 10, SPAM: 10}
    # Only English pages have a style; every kept English page has one.
    for records in grown.values():
        for record in records:
            assert (record.style in STYLES) == (record.outcome == KEPT and record.language == "en"), record.url


def test_no_english_paragraph_repeats_across_the_pages_of_a_seed():
    """CCNet's line dedup would remove a repeated paragraph: each English page's text must be its own."""
    for seed in range(4):
        records = expected_records(seed)
        paragraphs = [p for r in records[WARC_NAME] if r.style for p in r.main]
        paragraphs += [line for r in records[WET_NAME] if r.style for line in r.main[0].splitlines()[1:]]
        assert len(paragraphs) > 50
        assert [p for p, n in Counter(paragraphs).items() if n > 1] == [], seed
