"""Language filter: fastText lid.176 offline, kept languages and threshold, reasons, a stage run."""

import socket

import pytest

from tasks.curate.language import LLAMA_WIKIPEDIA_LANGUAGES, LanguageFilter
from tasks.documents import Document
from tasks.shards import part_location, read_part
from tasks import language
from tasks.sources.jsonl import JsonlReader
from tasks.stage import InputFile, ShardUnit, StageSpec, run_shard
from tasks.steps import Drop
from tests.helpers import write_jsonl_gz

TEXTS = {
    "en": "The committee met on Tuesday to review the plan and agreed to publish the report next month.",
    "de": "Der Ausschuss traf sich am Dienstag, um den Plan zu prüfen, und beschloss, den Bericht zu veröffentlichen.",
    "fr": "Le comité s'est réuni mardi pour examiner le plan et a décidé de publier le rapport le mois prochain.",
    "ru": "Комитет собрался во вторник, чтобы рассмотреть план, и решил опубликовать доклад в следующем месяце.",
    "pl": "Komitet zebrał się we wtorek, aby przejrzeć plan, i postanowił opublikować raport w przyszłym miesiącu.",
    "ja": "委員会は火曜日に会合を開き、計画を検討して、来月報告書を公表することに合意した。",
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, and the model is loaded afresh under that block."""

    def refuse(*args, **kwargs):
        raise OSError("network access is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    language._language_detector.cache_clear()
    yield
    language._language_detector.cache_clear()


def doc(text: str, **meta) -> Document:
    return Document(id="d", source="test", text=text, meta=dict(meta))


def test_detects_languages_offline(no_network):
    results = LanguageFilter(languages=TEXTS).run([doc(text) for text in TEXTS.values()])
    assert [r.meta["language"] for r in results] == list(TEXTS)
    assert all(r.meta["language_score"] >= 0.5 for r in results)


def test_keeps_configured_languages_and_drops_the_rest_with_two_reasons():
    wiki = LanguageFilter(languages=LLAMA_WIKIPEDIA_LANGUAGES)
    results = wiki.run([doc(text) for text in TEXTS.values()])
    assert [isinstance(r, Document) for r in results] == [True, True, True, True, True, False]
    assert results[-1] == Drop("language:not_kept")

    english = LanguageFilter()  # CommonCrawl: English only
    results = english.run([doc(TEXTS["en"]), doc(TEXTS["de"]), doc("12345 67890")])
    assert results[0].meta["language"] == "en"
    assert results[1:] == [Drop("language:not_kept"), Drop("language:low_score")]
    assert english.stats.dropped == {"language:not_kept": 1, "language:low_score": 1}


def test_threshold_is_configurable():
    score = LanguageFilter(["fr"], min_score=0.0).run([doc(TEXTS["fr"])])[0].meta["language_score"]
    assert isinstance(LanguageFilter(["fr"], min_score=score).run([doc(TEXTS["fr"])])[0], Document)
    assert LanguageFilter(["fr"], min_score=min(1.0, score + 0.01)).run([doc(TEXTS["fr"])]) == [Drop("language:low_score")]
    with pytest.raises(ValueError, match="min_score"):
        LanguageFilter(min_score=1.5)
    with pytest.raises(ValueError, match="at least one language"):
        LanguageFilter(languages=[])


def test_a_declared_language_fasttext_disagrees_with_is_kept_aside():
    (result,) = LanguageFilter(["en", "de"]).run([doc(TEXTS["en"], language="de")])
    assert result.meta["language"] == "en" and result.meta["declared_language"] == "de"
    (result,) = LanguageFilter(["en"]).run([doc(TEXTS["en"], language="en")])
    assert "declared_language" not in result.meta


def test_language_filter_in_a_stage(tmp_path):
    lines = [{"url": f"u-{lang}", "text": text} for lang, text in TEXTS.items()]
    path = write_jsonl_gz(tmp_path / "in.jsonl.gz", lines)
    spec = StageSpec(
        root=str(tmp_path / "out"), name="language", reader=JsonlReader(), steps=lambda: [LanguageFilter(["en", "de"])]
    )
    receipt = run_shard(spec, ShardUnit("commoncrawl", 0, InputFile.describe(str(path))))
    assert receipt.docs_in == 6 and receipt.kept == 2 and receipt.dropped == {"language:not_kept": 4}
    assert receipt.steps["language"]["kept"] == 2
    docs = list(read_part(part_location(spec.stage_dir, "commoncrawl", 0)))
    assert [(d.meta["url"], d.meta["language"]) for d in docs] == [("u-en", "en"), ("u-de", "de")]
