"""CCNet quality filter: KenLM models trained on real Wikipedia text, document perplexity, buckets.

The fair comparison: the model is trained on four of the five articles of the real English
Wikipedia sample; the fifth (held out, never seen) must score a lower perplexity than the one page
of the real Common Crawl sample that is in English (a link-farm page of a gambling/adult spam
domain with copied trade text). The other crawl pages are Chinese, Russian, German, Dutch: an
English model says nothing fair about them, as CCNet scores each language with its own model.
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.curate.normalize import normalize
from tasks.curate.quality import (
    PERPLEXITY,
    PERPLEXITY_SCHEMA,
    PerplexityScorer,
    QualityBucketFilter,
    QualityModel,
    kenlm_program,
    load_cutoffs,
    perplexity_cutoffs,
    train_from_stage,
    train_quality_model,
    write_cutoffs,
)
from tasks.documents import Document
from tasks.sources.commoncrawl import CommonCrawlReader
from tasks.sources.wikipedia import WikipediaReader
from tasks.stage import InputFile, PartReader, ShardUnit, StageSpec, run_stage, units_from_stage
from tasks.steps import Drop

CORPORA = Path(__file__).resolve().parents[3] / ".." / "shared" / "corpora"
WIKIPEDIA = CORPORA / "wikipedia" / "enwiki-table-markup.xml.bz2"
CRAWL = CORPORA / "commoncrawl" / "CC-MAIN-2020-34-sample.warc.gz"
HELD_OUT = "Economy of Estonia"
VOCAB = 2000  # the sample is ~100 KB: a 65,536-piece vocabulary needs gigabytes of text

needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason=f"sample corpora not found at {CORPORA}")


def documents(reader, path: Path) -> list[Document]:
    unit = ShardUnit(path.stem, 0, InputFile(str(path), path.stat().st_size, ""))
    return [item for item in reader.read(unit) if isinstance(item, Document)]


@pytest.fixture(scope="module")
def kenlm_built():
    """lmplz and build_binary must be there (make install builds them): a missing one fails, not skips."""
    kenlm_program("lmplz"), kenlm_program("build_binary")


@pytest.fixture(scope="module")
def wikipedia() -> list[Document]:
    if not CORPORA.is_dir():
        pytest.skip(f"sample corpora not found at {CORPORA}")
    return documents(WikipediaReader(), WIKIPEDIA)


@pytest.fixture(scope="module")
def english_model(kenlm_built, wikipedia, tmp_path_factory) -> QualityModel:
    training = [d.text for d in wikipedia if d.meta["title"] != HELD_OUT]
    assert len(training) == 4
    return train_quality_model(training, tmp_path_factory.mktemp("lm"), "en", vocab_size=VOCAB, keep_arpa=True)


@pytest.fixture(scope="module")
def scorer(english_model) -> PerplexityScorer:
    return PerplexityScorer({"en": english_model})


def doc(text: str, language: str | None = "en", **columns) -> Document:
    meta = {"language": language} if language else {}
    return Document(id=f"d-{abs(hash(text))}", source="test", text=text, meta=meta, columns=dict(columns))


def test_missing_kenlm_programs_fail_with_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(FileNotFoundError, match=r"lmplz is not at .*build-kenlm\.sh"):
        kenlm_program("lmplz")


@needs_corpora
def test_training_writes_the_models_and_a_marker(english_model):
    folder = Path(english_model.kenlm).parent
    assert sorted(p.name for p in folder.iterdir()) == ["en.arpa", "en.arpa.bin", "en.quality.json", "en.sp.model"]
    marker = json.loads((folder / "en.quality.json").read_text())
    assert marker["order"] == 5 and marker["lines"] > 100 and marker["pieces"] <= VOCAB
    assert "\\5-grams:" in (folder / "en.arpa").read_text()  # really a 5-gram model
    assert QualityModel.in_folder(folder, "en") == english_model


@needs_corpora
def test_training_is_deterministic(kenlm_built, wikipedia, tmp_path):
    import sentencepiece as spm

    texts = [d.text for d in wikipedia[:2]]
    first, second = (train_quality_model(texts, tmp_path / n, "en", vocab_size=500) for n in ("a", "b"))
    vocabularies = []
    for model in (first, second):
        sp = spm.SentencePieceProcessor(model_file=model.sentencepiece)
        vocabularies.append([(sp.id_to_piece(i), sp.get_score(i)) for i in range(len(sp))])
    # The .sp.model files differ only in the training paths they record.
    assert vocabularies[0] == vocabularies[1]
    assert Path(first.kenlm).read_bytes() == Path(second.kenlm).read_bytes()


@needs_corpora
def test_held_out_wikipedia_scores_below_the_english_spam_page(scorer, wikipedia):
    (held_out,) = [d for d in wikipedia if d.meta["title"] == HELD_OUT]
    (spam,) = [d for d in documents(CommonCrawlReader(), CRAWL) if d.meta["language"] == "en"]
    seen = [d for d in wikipedia if d.meta["title"] != HELD_OUT]
    held_out_ppl, spam_ppl = scorer.perplexity(held_out.text, "en"), scorer.perplexity(spam.text, "en")
    assert held_out_ppl < spam_ppl
    # Text the model was trained on is the most predictable of all.
    assert max(scorer.perplexity(d.text, "en") for d in seen) < held_out_ppl


@needs_corpora
def test_document_perplexity_is_the_ccnet_formula_over_kenlm_token_scores(english_model, scorer, wikipedia):
    import kenlm
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=english_model.sentencepiece)
    lm = kenlm.Model(english_model.kenlm)
    text = wikipedia[0].text[:3000] + "\n\n  \nA line with Ünïcode “quotes” and 1984 digits.\n"
    log10_sum, tokens = 0.0, 0
    for line in text.splitlines():
        line = normalize(line)
        if not line:
            continue
        pieces = sp.encode(line, out_type=str)
        scores = [prob for prob, _, _ in lm.full_scores(" ".join(pieces), bos=True, eos=True)]
        assert len(scores) == len(pieces) + 1  # every piece, then </s>
        log10_sum += sum(scores)
        tokens += len(scores)
    [scored] = scorer.run([doc(text)])
    # kenlm sums a line's scores in single precision: agreement to float32 rounding.
    assert scored.columns[PERPLEXITY] == pytest.approx(10 ** (-log10_sum / tokens), rel=1e-6)


@needs_corpora
def test_an_existing_arpa_model_loads_and_agrees_with_its_binary(english_model, wikipedia):
    arpa = QualityModel("en", english_model.sentencepiece, str(Path(english_model.kenlm).with_suffix("")))
    assert arpa.kenlm.endswith("en.arpa")
    from_arpa, from_binary = PerplexityScorer({"en": arpa}), PerplexityScorer({"en": english_model})
    for d in wikipedia:
        assert from_arpa.perplexity(d.text, "en") == pytest.approx(from_binary.perplexity(d.text, "en"), rel=1e-5)


def test_a_uniform_unigram_arpa_has_the_vocabulary_size_as_perplexity(tmp_path):
    """Ground truth by construction: every token (and </s>) has probability 1/V, so perplexity is V.

    KenLM's probing models need bigrams: one bigram with the same probability, and zero back-off
    weights, keep every conditional probability at 1/V.
    """
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the {w} sat on the {v} mat" for w in ("cat", "dog", "cow") for v in ("red", "big")))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "xx"), vocab_size=30,
                                   hard_vocab_limit=False, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "xx.model"))
    pieces = [sp.id_to_piece(i) for i in range(len(sp))]
    predictable = [p for p in pieces if p != "<s>"]
    log10_p = -math.log10(len(predictable))
    lines = ["\\data\\", f"ngram 1={len(pieces)}", "ngram 2=1", "", "\\1-grams:"]
    lines += [f"{-99 if p == '<s>' else log10_p:.7f}\t{p}\t0" for p in pieces]
    lines += ["", "\\2-grams:", f"{log10_p:.7f}\t<s> {predictable[-1]}"]
    (tmp_path / "xx.arpa").write_text("\n".join([*lines, "", "\\end\\", ""]))
    scorer = PerplexityScorer({"xx": QualityModel("xx", str(tmp_path / "xx.model"), str(tmp_path / "xx.arpa"))})
    for text in ("The cat sat.\nOn the mat!", "zebra 42 quokka", "the"):
        assert scorer.perplexity(text, "xx") == pytest.approx(len(predictable), rel=1e-5)
    assert scorer.perplexity(" \n\t\n", "xx") is None  # nothing left to score


@needs_corpora
def test_languages_without_a_model_pass_unscored_or_drop(english_model):
    passing = PerplexityScorer({"en": english_model})
    german, unknown = doc("Ein deutscher Satz.", "de"), doc("no language at all", None)
    assert [d.columns[PERPLEXITY] for d in passing.run([german, unknown])] == [None, None]
    dropping = PerplexityScorer({"en": english_model}, drop_without_model=True)
    assert dropping.run([doc("Ein deutscher Satz.", "de")]) == [Drop("quality:no_model")]
    into_meta = PerplexityScorer({"en": english_model}, into="meta")
    [scored] = into_meta.run([doc("The economy grew.")])
    assert scored.meta[PERPLEXITY] > 1 and PERPLEXITY not in scored.columns


@needs_corpora
def test_the_scorer_pickles_without_its_loaded_models(scorer):
    text = "The economy of the country grew in the last decade."
    before = scorer.perplexity(text, "en")
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy._loaded == {} and copy.perplexity(text, "en") == before


def test_buckets_follow_the_cutoffs_with_ccnet_boundaries():
    step = QualityBucketFilter({"en": {"p30": 100, "p60": 200}})
    docs = [doc(str(p), "en", perplexity=p) for p in (50.0, 100.0, 199.9, 200.0, 5000.0)]
    docs += [doc("no cutoffs", "de", perplexity=10.0), doc("unscored", "en", perplexity=None)]
    results = step.run(docs)
    assert [d.meta["bucket"] for d in docs] == ["head", "middle", "middle", "tail", "tail", "all", "all"]
    assert [r.reason if isinstance(r, Drop) else "kept" for r in results] == [
        "kept", "kept", "kept", "quality:tail", "quality:tail", "kept", "kept"
    ]
    head_only = QualityBucketFilter({"en": {"p30": 100, "p60": 200}}, keep=["head"], keep_unscored=False)
    results = head_only.run([doc("a", "en", perplexity=150.0), doc("b", "en", perplexity=None)])
    assert results == [Drop("quality:middle"), Drop("quality:unscored")]


def test_buckets_read_perplexity_from_meta_too():
    step = QualityBucketFilter({"en": {"p30": 340, "p60": 520}})
    scored = Document("m", "test", "text", meta={"language": "en", "perplexity": 400.0})
    assert step.run([scored]) == [scored] and scored.meta["bucket"] == "middle"


def test_cutoff_files_round_trip_and_bad_ones_are_named(tmp_path):
    path = tmp_path / "cutoffs.json"
    write_cutoffs(path, {"en": {"p30": 340, "p60": 520}})
    assert load_cutoffs(path) == {"en": {"p30": 340.0, "p60": 520.0}}
    assert QualityBucketFilter(path).cutoffs == {"en": {"p30": 340.0, "p60": 520.0}}
    path.write_text(json.dumps({"en": {"p30": 600, "p60": 520}}))
    with pytest.raises(ValueError, match=r"cutoffs\.json: language 'en': need 0 < p30 <= p60"):
        load_cutoffs(path)
    path.write_text(json.dumps({"en": {"p30": 1}}))
    with pytest.raises(ValueError, match=r"cutoffs\.json: language 'en' needs numeric p30 and p60"):
        load_cutoffs(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_cutoffs(tmp_path / "missing.json")


@needs_corpora
def test_train_score_and_bucket_as_stages(tmp_path, kenlm_built, ray_local):
    # Ingest: the real Wikipedia sample, and the real crawl sample as a second source.
    ingest = StageSpec(root=str(tmp_path), name="ingest", reader=WikipediaReader())
    run_stage(ingest, [ShardUnit("wikipedia", 0, InputFile.describe(str(WIKIPEDIA)))])
    crawl = StageSpec(root=str(tmp_path), name="ingest", reader=CommonCrawlReader())
    run_stage(crawl, [ShardUnit("commoncrawl", 0, InputFile.describe(str(CRAWL)))])

    # The model trains from the Wikipedia source only; a rerun with the same inputs skips.
    models = train_from_stage(ingest.stage_dir, str(tmp_path / "models"), vocab_size=VOCAB)
    assert list(models) == ["en"]
    marker = tmp_path / "models" / "en.quality.json"
    trained_at = marker.stat().st_mtime_ns
    assert train_from_stage(ingest.stage_dir, str(tmp_path / "models"), vocab_size=VOCAB) == models
    assert marker.stat().st_mtime_ns == trained_at
    # An interrupted run (stage marker gone) skips the languages it had finished.
    (tmp_path / "models" / "_trained_from_stage.json").unlink()
    assert train_from_stage(ingest.stage_dir, str(tmp_path / "models"), vocab_size=VOCAB) == models
    assert marker.stat().st_mtime_ns == trained_at

    # Score every ingested document; non-English crawl pages keep a null perplexity.
    models_folder = str(tmp_path / "models")
    scored = StageSpec(root=str(tmp_path), name="scored", reader=PartReader(), extra_columns=PERPLEXITY_SCHEMA,
                       steps=lambda: [PerplexityScorer({"en": models_folder})])
    run_stage(scored, units_from_stage(ingest.stage_dir))
    back = [d for u in units_from_stage(scored.stage_dir) for d in PartReader().read(u)]
    english = sorted(d.columns[PERPLEXITY] for d in back if d.meta.get("language") == "en")
    assert len(english) == 6 and all(p > 1 for p in english)
    assert all(d.columns[PERPLEXITY] is None for d in back if d.meta.get("language") != "en")

    # Cutoffs are the exact percentiles of the scored English documents.
    cutoffs = perplexity_cutoffs(scored.stage_dir)
    p30, p60 = np.percentile(english, [30, 60])
    assert cutoffs == {"en": {"p30": pytest.approx(p30), "p60": pytest.approx(p60)}}

    bucketed = StageSpec(root=str(tmp_path), name="quality", reader=PartReader(), extra_columns=PERPLEXITY_SCHEMA,
                         steps=lambda: [QualityBucketFilter(cutoffs)])
    manifest = run_stage(bucketed, units_from_stage(scored.stage_dir))
    tail = sum(p >= cutoffs["en"]["p60"] for p in english)
    assert manifest["totals"]["dropped"] == {"quality:tail": tail}
    assert manifest["totals"]["kept"] + tail == manifest["totals"]["docs_in"] == len(back)
    kept = [d for u in units_from_stage(bucketed.stage_dir) for d in PartReader().read(u)]
    assert all(d.meta["bucket"] in ("head", "middle", "all") for d in kept)

