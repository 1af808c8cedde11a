"""PII scrubbing: span-level quality on the labelled synthetic set, look-alikes, the step's contract."""

import random

import pyarrow.parquet as pq
import pytest

from tasks.curate.pii import KINDS, PIIDetector, PIIScrubber, redact
from tasks.documents import Document
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.shards import part_location, read_part
from tasks.steps import Drop
from tasks.synthetic.logs import changed_clean_lines, log_lines
from tasks.synthetic.pii import INTERNATIONAL_PHONE_REGIONS, NATIONAL_PHONE_REGIONS, labelled_texts, score_spans
from tasks.synthetic.timestamps import FORMATS, timestamp
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


@pytest.mark.parametrize("regions", [("US",), NATIONAL_PHONE_REGIONS, INTERNATIONAL_PHONE_REGIONS + ("CN", "NL", "RU")])
def test_no_date_time_or_timestamp_is_ever_tagged(regions):
    found = detector(phone_regions=regions)
    rng = random.Random(5)
    surroundings = ["{}", "at {} ok", "[{}]", "ts={},x", '"{}"', "{}: msg", "Tel {}", "on {}.", "{} web01 sshd[123]:"]
    tagged = []
    for name in sorted(FORMATS):
        for n in range(60):
            line = surroundings[n % len(surroundings)].format(timestamp(rng, name))
            tagged += [(name, line, line[s.start : s.end]) for s in found.find(line)]
    assert tagged == []


def test_phone_numbers_beside_timestamps_are_still_found():
    lines = {
        "[Nov 11 14:33:38] VERBOSE[2841][C-0000001a] pbx.c: -- Executing [+441772285411@from-trunk:1] Dial(\"SIP/trunk-0000001a\")": "+441772285411",
        "[2013-11-11 14:33:38] VERBOSE[2841] app_dial.c: -- Called SIP/+441772285411@trunk": "+441772285411",
        "Sent: Monday, November 11, 2013 2:33 PM | Tel: +44 (0)1772 285411": "+44 (0)1772 285411",
        "On 11/11/2013 14:33, Jo wrote: call (202) 555-0143 before 17:30.": "(202) 555-0143",
        "2013-11-11 14:33:38,123 WARNING sms to +1-202-555-0143 failed": "+1-202-555-0143",
    }
    for line, number in lines.items():
        assert kinds_found(line) == [("PHONE_NUMBER", number)], line
    assert [v for _, v in kinds_found("10-Oct-2013::14:53:40 caller 2025550143 dialled SIP/trunk/12025550143,300")] == [
        "2025550143", "12025550143"
    ]


@pytest.mark.parametrize(
    "text",
    [
        'GET /download HTTP/1.1" 503 2862953 "-"',  # a status and a byte count, not (503) 286-2953
        "rx_bytes=2345678901 tx_bytes=3456789012, order id 2025550143, Content-Length: 3054808009",
        "postfix/qmgr[123]: 0296135422: removed",  # a hex queue id of decimal digits
        "kernel: [12345.678901] eth0 up; 0.548095 load; 1384180418.123456 deadline",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    ],
)
def test_counters_ids_and_product_versions_in_logs_are_not_pii(text):
    assert kinds_found(text) == []


def test_bare_digits_are_a_phone_number_where_the_text_says_so_and_ips_in_paths_are_kept():
    assert kinds_found("Tel: 2025550143, phone=01772285411, 2025550143@trunk") == [
        ("PHONE_NUMBER", "2025550143"), ("PHONE_NUMBER", "01772285411"), ("PHONE_NUMBER", "2025550143"),
    ]
    assert kinds_found("GET /hosts/10.0.0.1 from http://10.0.0.2/ email=jo@example.com") == [
        ("IP_ADDRESS", "10.0.0.1"), ("IP_ADDRESS", "10.0.0.2"), ("EMAIL_ADDRESS", "jo@example.com"),
    ]


def test_log_and_mail_lines():
    lines = log_lines(seed=11, count=8000)
    found = detector()
    spans = {line.text: [(s.start, s.end, s.kind) for s in found.find(line.text)] for line in lines}
    changed, clean = changed_clean_lines(lines, spans.__getitem__)
    assert clean > 4500 and changed == 0
    scores = score_spans(lines, spans.__getitem__)
    for kind in ("EMAIL_ADDRESS", "IP_ADDRESS", "PHONE_NUMBER"):
        assert scores[kind].true_positives + scores[kind].false_negatives > 1000, kind
        assert scores[kind].precision >= 0.999, (kind, scores[kind])
    assert scores["EMAIL_ADDRESS"].recall >= 0.99 and scores["IP_ADDRESS"].recall >= 0.99
    written = [(line, s) for line in lines for s in line.spans if s.kind == "PHONE_NUMBER" and not line.text[s.start : s.end].isdigit()]
    assert sum((s.start, s.end, s.kind) in spans[line.text] for line, s in written) >= 0.99 * len(written)
    assert scores["PHONE_NUMBER"].recall >= 0.9  # bare digit runs without a phone cue are missed


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


@pytest.mark.parametrize(
    "line, number",
    [
        ("联系电话：021-54098575 2013-11-11 14:33:38", "021-54098575"),
        ("Fax 030-1234567, sent 10-Oct-2013::14:53:40", "030-1234567"),
        ("[2013-11-11T14:33:38Z] caller 0512-55111066 hung up", "0512-55111066"),
    ],
)
def test_area_code_hyphen_subscriber_is_a_phone_number_beside_a_timestamp(line, number):
    found = detector(phone_regions=INTERNATIONAL_PHONE_REGIONS + ("CN", "NL"))
    assert [(s.kind, line[s.start : s.end]) for s in found.find(line)] == [("PHONE_NUMBER", number)]
