"""PII scrubbing: span-level quality on the labelled synthetic set, look-alikes, the step's contract."""

import pyarrow.parquet as pq
import pytest

from tasks.curate.pii import KINDS, PIIDetector, PIIScrubber, redact
from tasks.documents import Document
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.shards import part_location, read_part
from tasks.steps import Drop
from tasks.synthetic.pii import NATIONAL_PHONE_REGIONS, labelled_texts, score_spans
from tests.helpers import write_jsonl_gz

RECALL_FLOOR = {"EMAIL_ADDRESS": 0.99, "IP_ADDRESS": 0.99, "PHONE_NUMBER": 0.95, "CREDIT_CARD": 0.95}
PRECISION_FLOOR = 0.95


def detector(**kwargs) -> PIIDetector:
    return PIIDetector(phone_regions=kwargs.pop("phone_regions", NATIONAL_PHONE_REGIONS), **kwargs)


def kinds_found(text: str, **kwargs) -> list[tuple[str, str]]:
    return [(span.kind, text[span.start : span.end]) for span in detector(**kwargs).find(text)]


@pytest.mark.parametrize("seed", [0, 7])
def test_span_level_quality_on_the_labelled_set(seed):
    texts = labelled_texts(seed=seed, count=500)
    found = detector()
    scores = score_spans(texts, lambda text: [(s.start, s.end, s.kind) for s in found.find(text)])
    for kind in KINDS:
        assert scores[kind].true_positives + scores[kind].false_negatives > 60, f"too few {kind} labels to judge"
        assert scores[kind].precision >= PRECISION_FLOOR, (kind, scores[kind])
        assert scores[kind].recall >= RECALL_FLOOR.get(kind, 0.95), (kind, scores[kind])
    assert scores["all"].precision >= PRECISION_FLOOR


def test_labelled_set_is_deterministic_and_spans_point_at_the_values():
    first, again, other = labelled_texts(3, 50), labelled_texts(3, 50), labelled_texts(4, 50)
    assert first == again and first != other
    sample = next(t for t in first if t.spans)
    for span in sample.spans:
        assert sample.text[span.start : span.end].strip() == sample.text[span.start : span.end]
    assert sum(len(t.negatives) for t in first) > 10


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade to version 1.2.3.4 now, or v10.0.0.1, see section 2.1.3.4.",
        "ISBN 978-3-16-148410-0 and ISBN-10: 0-306-40615-2 and 978-0-306-40615-7",
        "doi:10.1038/nphys1170 and https://doi.org/10.1000/182",
        "Dates 2023-04-05, 05/04/2023 and 12.05.2023, at 12:30:45 or 2023-04-05T12:30:45Z (1680698445).",
        "Prices $1,234,567.89, € 1.234.567,89, 2 499 000 EUR, USD 2,499,000",
        "commit 3f786850e387550fdab836ed7e6dc881de23001b, short 1234567 and 550e8400-e29b-41d4-a716-446655440000",
        "Order #2025550143, invoice no. 2023-000123, tracking number 202555014312",
        "Bad Luhn 4111 1111 1111 1112, bad IBAN DE88 3704 0044 0532 0130 00, SSNs 000-12-3456 666-12-3456 912-34-5678",
        "a 20-digit run 12025550143202555014 is no phone, nor is std::vector or abc::def, or logo@2x.png",
    ],
)
def test_look_alikes_are_not_pii(text):
    assert kinds_found(text) == []


def test_each_kind_is_found_in_its_common_formats():
    text = (
        "Mail jo.smith+news@mail.example.co.uk; call (202) 555-0143, +44 20 7946 0958 or 01 23 45 67 89; "
        "hosts 8.8.8.8 and 2001:db8::8a2e:370:7334 and ::ffff:192.0.2.1; card 3782 822463 10005; "
        "SSN 536-90-4399; IBAN GB82 WEST 1234 5698 7654 32."
    )
    assert kinds_found(text) == [
        ("EMAIL_ADDRESS", "jo.smith+news@mail.example.co.uk"),
        ("PHONE_NUMBER", "(202) 555-0143"),
        ("PHONE_NUMBER", "+44 20 7946 0958"),
        ("PHONE_NUMBER", "01 23 45 67 89"),
        ("IP_ADDRESS", "8.8.8.8"),
        ("IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        ("IP_ADDRESS", "::ffff:192.0.2.1"),
        ("CREDIT_CARD", "3782 822463 10005"),
        ("US_SSN", "536-90-4399"),
        ("IBAN", "GB82 WEST 1234 5698 7654 32"),
    ]


def test_a_card_followed_by_its_expiry_is_still_found():
    assert kinds_found("pay with 4111 1111 1111 1111 12/25") == [("CREDIT_CARD", "4111 1111 1111 1111")]


def test_national_formats_need_their_region_but_country_codes_do_not():
    text = "Berlin office 030 12345678, mobile +49 1512 3456789."
    assert [k for k, _ in kinds_found(text, phone_regions=("US",))] == ["PHONE_NUMBER"]
    assert kinds_found(text, phone_regions=("DE",)) == [("PHONE_NUMBER", "030 12345678"), ("PHONE_NUMBER", "+49 1512 3456789")]


def test_ip_scope_public_keeps_private_addresses():
    text = "lan 192.168.1.10, loopback ::1, dns 8.8.8.8 and 2606:4700:4700::1111"
    assert [v for _, v in kinds_found(text, ip_scope="all")] == ["192.168.1.10", "::1", "8.8.8.8", "2606:4700:4700::1111"]
    assert [v for _, v in kinds_found(text, ip_scope="public")] == ["8.8.8.8", "2606:4700:4700::1111"]


def test_kinds_can_be_chosen_and_bad_configuration_is_refused():
    text = "mail a@example.com from 8.8.8.8"
    assert kinds_found(text, kinds=["IP_ADDRESS"]) == [("IP_ADDRESS", "8.8.8.8")]
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PIIDetector(kinds=["NAME"])
    with pytest.raises(ValueError, match="not libphonenumber regions"):
        PIIDetector(phone_regions=["XX"])
    with pytest.raises(ValueError, match="ip_scope"):
        PIIDetector(ip_scope="private")


def test_redact_replaces_spans_with_typed_placeholders():
    text = "Write to a@example.com or 8.8.8.8."
    assert redact(text, PIIDetector().find(text)) == "Write to |||EMAIL_ADDRESS||| or |||IP_ADDRESS|||."


def make_doc(text: str) -> Document:
    return Document(id="d", source="test", text=text, meta={"url": "u"})


def test_scrubber_records_counts_and_drops_documents_with_too_many_hits():
    scrubber = PIIScrubber()
    kept = scrubber.run([make_doc("Call 202-555-0143 or 202-555-0199, mail a@example.com."), make_doc("Nothing here.")])
    assert kept[0].text == "Call |||PHONE_NUMBER||| or |||PHONE_NUMBER|||, mail |||EMAIL_ADDRESS|||."
    assert kept[0].meta["pii"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 2}
    assert kept[1].meta["pii"] == {} and kept[1].text == "Nothing here."

    directory = make_doc(" ".join(f"user{n}@example.com" for n in range(6)))
    assert PIIScrubber().run([directory]) == [Drop("pii:too_many_hits")]
    assert PIIScrubber(max_hits=6).run([make_doc(directory.text)])[0].meta["pii"] == {"EMAIL_ADDRESS": 6}
    assert isinstance(PIIScrubber(max_hits=None).run([make_doc(directory.text)])[0], Document)
    with pytest.raises(ValueError, match="max_hits"):
        PIIScrubber(max_hits=-1)


def test_scrubber_in_a_stage(tmp_path):
    lines = [
        {"url": "u0", "text": "Reach me at jo@example.com or +1 202-555-0143."},
        {"url": "u1", "text": " ".join(f"+1 202-555-01{n:02d}" for n in range(10))},
        {"url": "u2", "text": "version 1.2.3.4, ISBN 978-3-16-148410-0"},
    ]
    path = write_jsonl_gz(tmp_path / "in.jsonl.gz", lines)
    spec = StageSpec(root=str(tmp_path / "out"), name="pii", reader=JsonlReader(), steps=lambda: [PIIScrubber()])
    receipt = run_shard(spec, ShardUnit("c4", 0, InputFile.describe(str(path))))
    assert receipt.docs_in == 3 and receipt.kept == 2 and receipt.dropped == {"pii:too_many_hits": 1}
    docs = list(read_part(part_location(spec.stage_dir, "c4", 0)))
    assert [d.text for d in docs] == [
        "Reach me at |||EMAIL_ADDRESS||| or |||PHONE_NUMBER|||.",
        "version 1.2.3.4, ISBN 978-3-16-148410-0",
    ]
    assert [d.meta["pii"] for d in docs] == [{"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}, {}]
    assert pq.read_table(part_location(spec.stage_dir, "c4", 0).path).num_rows == 2
