import random
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pytest
from pydantic import ValidationError

from tasks.tokenizer import train_tokenizer
from tasks.documents import Document
from tasks.mix import MIXTURE_FILE, MixtureRecipe, load_mixture, plan_mixture, run_mix
from tasks.shards import read_part
from tasks.stage import ShardUnit, StageSpec, run_stage
from tasks.storage import resolve

WORDS = "the river city people history mountain quick brown fox jumps over lazy dog 1234 book page".split()
# source -> (documents per part, words per document): sizes that give Wikipedia 2.45 epochs,
# Books about 0.3 and CommonCrawl between 1 and 2 under LLaMA's shares.
SIZES = {"wikipedia": (150, (5, 15)), "books": (120, (60, 120)), "commoncrawl": (200, (110, 220))}
PARTS = 2
SCORE = pa.schema([("score", pa.float64())])


@dataclass(frozen=True)
class SyntheticDocs:
    """Documents of seeded random words; ids unique per source."""

    def read(self, unit: ShardUnit):
        per_part, (low, high) = SIZES[unit.source]
        rng = random.Random(f"{unit.source}-{unit.index}")
        for n in range(per_part):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))
            yield Document(f"{unit.source}-{unit.index}-{n}", unit.source, text, {"n": n}, {"score": rng.random()})


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(500)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=400, hard_vocab_limit=False)


@pytest.fixture(scope="module")
def curated(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("in")
    spec = StageSpec(root=str(root), name="curated", reader=SyntheticDocs(), extra_columns=SCORE)
    run_stage(spec, [ShardUnit(s, i) for s in SIZES for i in range(PARTS)])
    return spec.stage_dir


def tokens_of(tokenizer, docs):
    return sum(len(ids) for ids in tokenizer.encode_batch([d.text for d in docs], bos=True, eos=True))


def docs_by_source(stage_dir):
    by_source = {}
    for source in SIZES:
        for index in range(PARTS):
            location = stage_dir.join(source, f"part-{index:05d}.parquet")
            if location.exists():
                by_source.setdefault(source, []).append(list(read_part(location)))
    return by_source


@pytest.fixture(scope="module")
def available(curated, tokenizer):
    return {s: tokens_of(tokenizer, [d for part in parts for d in part]) for s, parts in docs_by_source(curated).items()}


def llama_like(available, **overrides):
    shares = {"commoncrawl": 0.67, "wikipedia": 0.045, "books": 0.045}  # sum 0.76: renormalised
    total = round(2.45 * available["wikipedia"] * sum(shares.values()) / shares["wikipedia"])
    fields = {"name": "test", "total_tokens": total, "seed": 3, "sources": {s: {"share": v} for s, v in shares.items()}}
    return MixtureRecipe.model_validate(fields | overrides), {s: v / sum(shares.values()) for s, v in shares.items()}


@pytest.fixture(scope="module")
def mixed(curated, tokenizer, available, tmp_path_factory):
    recipe, shares = llama_like(available)
    root = tmp_path_factory.mktemp("out")
    manifest = run_mix(curated, tokenizer, recipe, str(root))
    return manifest, shares, resolve(str(root)).join("mixed")


def test_realised_shares_in_tokens_match_the_renormalised_targets(mixed, tokenizer, available):
    manifest, shares, stage = mixed
    plan = manifest["mixture"]["sources"]
    assert plan["wikipedia"]["epochs"] == pytest.approx(2.45, abs=1e-3)
    assert 0.1 < plan["books"]["epochs"] < 0.9 and 1 < plan["commoncrawl"]["epochs"] < 2
    written = {s: tokens_of(tokenizer, [d for part in parts for d in part]) for s, parts in docs_by_source(stage).items()}
    total = sum(written.values())
    for source, share in shares.items():
        assert written[source] == plan[source]["realised_tokens"]
        assert plan[source]["available_tokens"] == available[source]
        assert abs(written[source] / total - share) < 0.005, source
        assert abs(written[source] - plan[source]["target_tokens"]) < 500  # within a document or so
    assert stage.join(MIXTURE_FILE).read_json()["sources"] == plan


def test_whole_epochs_repeat_every_document_each_in_a_new_order(mixed, curated):
    _, _, stage = mixed
    originals = docs_by_source(curated)["wikipedia"]
    written = docs_by_source(stage)["wikipedia"]
    for before, after in zip(originals, written):
        ids = [d.id for d in after]
        assert len(set(ids)) == len(ids)
        base = [d.id for d in before]
        repeat0 = [i for i in ids if "#" not in i]
        repeat1 = [i.removesuffix("#1") for i in ids if i.endswith("#1")]
        assert sorted(repeat0) == sorted(repeat1) == sorted(base)
        assert repeat0 != repeat1 and repeat0 != base
        copies = Counter(i.split("#")[0] for i in ids)
        assert set(copies.values()) == {2, 3}  # 2.45 epochs: the fraction is a sample of the part
        texts = {d.id: d.text for d in before}
        assert all(d.text == texts[d.id.split("#")[0]] for d in after)
    assert all(d.columns["score"] is not None for part in written for d in part)


def test_a_sub_one_epoch_source_is_a_sample_without_repeats(mixed, curated):
    _, _, stage = mixed
    ids = [d.id for part in docs_by_source(stage)["books"] for d in part]
    everything = {d.id for part in docs_by_source(curated)["books"] for d in part}
    assert len(set(ids)) == len(ids) and set(ids) < everything
    assert 0.1 < len(ids) / len(everything) < 0.6


def test_a_too_small_source_fails_before_any_output(curated, tokenizer, available, tmp_path):
    recipe, _ = llama_like(available, max_epochs=2.0)
    with pytest.raises(ValueError, match=r"source wikipedia is too small: [\d,]+ tokens.*2\.45\d* epochs.*max_epochs=2\.0"):
        run_mix(curated, tokenizer, recipe, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_reruns_are_byte_identical_and_the_seed_changes_the_sample(mixed, curated, tokenizer, available, tmp_path):
    manifest, _, _ = mixed
    recipe, _ = llama_like(available)
    again = run_mix(curated, tokenizer, recipe, str(tmp_path / "again"))
    assert [p["sha256"] for p in again["parts"]] == [p["sha256"] for p in manifest["parts"]]
    other, _ = llama_like(available, seed=4)
    reseeded = run_mix(curated, tokenizer, other, str(tmp_path / "reseeded"))
    assert {p["sha256"] for p in reseeded["parts"]}.isdisjoint(p["sha256"] for p in manifest["parts"])


def test_the_epochs_form_needs_no_total(curated, tokenizer, available, tmp_path):
    recipe = MixtureRecipe.model_validate(
        {"name": "e", "sources": {"wikipedia": {"epochs": 1.5}, "books": {"epochs": 3.0}}}
    )
    manifest = run_mix(curated, tokenizer, recipe, str(tmp_path / "out"))
    written = docs_by_source(resolve(str(tmp_path / "out")).join("mixed"))
    assert set(written) == {"wikipedia", "books"}
    books = Counter(d.id.split("#")[0] for part in written["books"] for d in part)
    assert set(books.values()) == {3} and len(books) == SIZES["books"][0] * PARTS
    wiki = tokens_of(tokenizer, [d for part in written["wikipedia"] for d in part])
    assert wiki == manifest["mixture"]["sources"]["wikipedia"]["realised_tokens"]
    assert abs(wiki - 1.5 * available["wikipedia"]) < 50


def test_the_sample_threshold_is_resolved_within_the_crossing_bucket(curated, tokenizer, available):
    recipe, _ = llama_like(available)
    plan = plan_mixture(curated, tokenizer, recipe)["sources"]["books"]
    assert 0 < plan["fraction_threshold"] < 1 << 64
    assert abs(plan["realised_tokens"] - plan["target_tokens"]) <= 120 * 2  # at most half a long doc off


def test_recipes_are_validated_and_llama1_ships(tmp_path):
    with pytest.raises(ValidationError, match="exactly one of share or epochs"):
        MixtureRecipe.model_validate({"name": "x", "total_tokens": 10, "sources": {"c4": {"share": 0.5, "epochs": 1}}})
    with pytest.raises(ValidationError, match="total_tokens is required"):
        MixtureRecipe.model_validate({"name": "x", "sources": {"c4": {"share": 1.0}}})
    with pytest.raises(ValidationError):
        MixtureRecipe.model_validate({"name": "x", "sources": {"github": {"epochs": 1}}})
    llama = load_mixture("llama1")
    assert llama.total_tokens == 1_400_000_000_000
    assert sum(s.share for s in llama.sources.values()) == pytest.approx(0.935)
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nsources:\n  books: {epochs: 2}\n")
    assert load_mixture(str(path)).sources["books"].epochs == 2
    with pytest.raises(FileNotFoundError, match="no mixture named 'nope'"):
        load_mixture("nope")
