import pytest

from tasks.documents import Document, document_schema, make_doc_id

import pyarrow as pa


def test_ids_are_stable_and_distinct_per_source_and_key():
    a = make_doc_id("c4", "https://example.com/a")
    assert a == make_doc_id("c4", "https://example.com/a")
    assert a.startswith("c4-")
    assert a != make_doc_id("c4", "https://example.com/b")
    assert a != make_doc_id("wikipedia", "https://example.com/a")


def test_id_needs_source_and_key():
    with pytest.raises(ValueError, match="natural key"):
        make_doc_id("c4", "")


def test_meta_serialises_in_a_fixed_order():
    one = Document("x", "s", "t", {"b": 1, "a": "é"})
    two = Document("x", "s", "t", {"a": "é", "b": 1})
    assert one.meta_json() == two.meta_json() == '{"a":"é","b":1}'


def test_extra_columns_cannot_shadow_document_columns():
    assert document_schema(pa.schema([("score", pa.float32())])).names[-1] == "score"
    with pytest.raises(ValueError, match="redefine"):
        document_schema(pa.schema([("text", pa.string())]))
