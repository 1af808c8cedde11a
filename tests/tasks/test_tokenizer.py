import json
import pickle
import random
import unicodedata
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from tasks.tokenizer import MODEL_FILE, Tokenizer, export_hf, reservoir_sample, train_tokenizer

CORPORA = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora"
VOCAB = 800

WORDS = {
    "en": "the quick brown fox jumps over lazy dog river mountain people history city".split(),
    "de": "über straße mädchen größe früh müde schön zurück gemütlich".split(),
    "fr": "café naïve élève où garçon français été crème".split(),
    "ru": "привет мир москва книга история человек время".split(),
    "el": "καλημέρα κόσμος ιστορία άνθρωπος".split(),
    "he": "שלום עולם ספר היסטוריה".split(),
    "ar": "مرحبا عالم كتاب تاريخ".split(),
    "zh": "中文 历史 城市 人民 山 河".split(),
    "ja": "日本語 テキスト ひらがな 東京".split(),
    "hi": "नमस्ते दुनिया इतिहास".split(),
    "ko": "안녕하세요 세계 역사".split(),
}
TRICKY = [
    "  two leading spaces, then   three inside",
    "tabs\tand\t\ttabs",
    "new\nlines\n\n and a trailing newline\n",
    "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0335\u0324\u0357",
    "RTL: שלום עולם مرحبا بالعالم (mixed 123)",
    "CJK: 漢字かなカナ한국어 𠜎𠜱",
    "digits 1234567890 and 3.14159",
    " ",
    "",
]


def synthetic_corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Multilingual texts of a few lines each, from fixed word lists; every run the same."""
    rng = random.Random(seed)
    languages = sorted(WORDS)
    texts = []
    for _ in range(n_lines // 3):
        lines = []
        for _ in range(3):
            words = WORDS[rng.choice(languages)]
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            lines.append(f"{sentence} {rng.randint(0, 99999)}.")
        texts.append("\n".join(lines))
    return texts


def random_unicode(rng: random.Random, length: int) -> str:
    """Valid Unicode: code points from every plane, surrogates skipped."""
    chars = []
    while len(chars) < length:
        plane = rng.choice([0, 0, 0, 1, 2, 3, 14, 15, 16])
        code_point = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= code_point <= 0xDFFF:
            chars.append(chr(code_point))
    return "".join(chars)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Tokenizer, Path]:
    out = tmp_path_factory.mktemp("tokenizer")
    return train_tokenizer(synthetic_corpus(), out, vocab_size=VOCAB), out


@pytest.fixture(scope="module")
def hf_folder(trained, tmp_path_factory) -> Path:
    return export_hf(trained[0], tmp_path_factory.mktemp("hf"))


def test_training_writes_a_model_with_llamas_special_ids_and_settings(trained):
    tokenizer, out = trained
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert [tokenizer.piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == VOCAB
    proto = sentencepiece_model_pb2.ModelProto.FromString((out / MODEL_FILE).read_bytes())
    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert (spec.split_digits, spec.byte_fallback, spec.allow_whitespace_only_pieces) == (True, True, True)
    assert spec.pad_id == -1 and not spec.user_defined_symbols
    assert spec.character_coverage == pytest.approx(0.99995)
    assert (normalizer.name, normalizer.add_dummy_prefix, normalizer.remove_extra_whitespaces) == ("identity", True, False)
    assert Tokenizer.load(out / MODEL_FILE).encode("river 42") == tokenizer.encode("river 42")


def test_bos_is_added_and_eos_only_when_asked(trained):
    tokenizer, _ = trained
    plain = tokenizer.encode("the river", bos=False)
    assert tokenizer.encode("the river") == [1, *plain]
    assert tokenizer.encode("the river", eos=True) == [1, *plain, 2]
    assert tokenizer.encode_batch(["the river", "城市"], bos=False, eos=True) == [
        [*plain, 2], tokenizer.encode("城市", bos=False, eos=True)
    ]
    assert tokenizer.decode(tokenizer.encode("the river", eos=True)) == "the river"


def test_digits_are_split_one_piece_each(trained):
    tokenizer, _ = trained
    pieces = [tokenizer.piece(i) for i in tokenizer.encode("12345", bos=False)]
    assert pieces == ["▁", "1", "2", "3", "4", "5"]


def test_an_unseen_character_falls_back_to_its_utf8_bytes(trained):
    tokenizer, _ = trained
    unseen = "ᚠ"  # runic: nowhere in the training corpus
    ids = tokenizer.encode(f"the {unseen}", bos=False)
    pieces = [tokenizer.piece(i) for i in ids]
    assert pieces[-3:] == [f"<0x{byte:02X}>" for byte in unseen.encode("utf-8")]
    assert tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == f"the {unseen}"


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_text_round_trips(trained, text):
    tokenizer, _ = trained
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_random_unicode_round_trips(trained):
    tokenizer, _ = trained
    rng = random.Random(7)
    texts = [random_unicode(rng, rng.randint(1, 40)) for _ in range(300)]
    # U+2581 is SentencePiece's own space marker: LLaMA's tokenizer decodes it as a space too.
    texts = [text.replace("\u2581", "_") for text in texts]
    decoded = [tokenizer.decode(ids) for ids in tokenizer.encode_batch(texts)]
    assert decoded == texts
    assert all(unicodedata.category(c) != "Cs" for text in texts for c in text)


def test_training_is_deterministic_and_a_file_trains_like_the_same_texts(tmp_path):
    texts = synthetic_corpus(600, seed=3)
    first = train_tokenizer(texts, tmp_path / "a", vocab_size=500, max_sentences=400, seed=5)
    second = train_tokenizer(iter(texts), tmp_path / "b", vocab_size=500, max_sentences=400, seed=5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
    from_file = train_tokenizer(corpus, tmp_path / "c", vocab_size=500, max_sentences=400, seed=5)
    model = (tmp_path / "a" / MODEL_FILE).read_bytes()
    assert (tmp_path / "b" / MODEL_FILE).read_bytes() == model
    assert (tmp_path / "c" / MODEL_FILE).read_bytes() == model
    assert first.model_proto == second.model_proto == from_file.model_proto == model


def test_the_reservoir_sample_is_seeded_and_sized():
    lines = [f"line {n}" for n in range(1000)]
    sample = reservoir_sample(lines, 100, seed=1)
    assert len(sample) == 100 and len(set(sample)) == 100 and set(sample) <= set(lines)
    assert reservoir_sample(iter(lines), 100, seed=1) == sample
    assert reservoir_sample(lines, 100, seed=2) != sample
    assert reservoir_sample(lines[:10], 100, seed=1) == lines[:10]
    late = sum(int(line.split()[1]) >= 500 for line in sample)
    assert 25 < late < 75  # later lines are as likely as earlier ones


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer(tmp_path / "missing.txt", tmp_path / "out")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"latin1.txt:line 2: not UTF-8"):
        train_tokenizer(latin1, tmp_path / "out")
    with pytest.raises(ValueError, match="no training lines"):
        train_tokenizer(["", "\n"], tmp_path / "out")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model is not a SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")


def test_a_tokenizer_pickles_as_its_model_bytes(trained):
    tokenizer, _ = trained
    data = pickle.dumps(tokenizer)
    assert len(data) < len(tokenizer.model_proto) + 1000  # the bytes, no C++ object
    copy = pickle.loads(data)
    assert copy._loaded is None  # built on first use, in the worker
    texts = TRICKY + synthetic_corpus(30, seed=9)
    assert copy.encode_batch(texts) == tokenizer.encode_batch(texts)
    assert copy.vocab_size == tokenizer.vocab_size


def test_the_hf_export_loads_as_a_fast_tokenizer_with_sentencepieces_ids(trained, hf_folder):
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import AutoTokenizer

    tokenizer, out = trained
    sentencepiece = spm.SentencePieceProcessor(model_file=str(out / MODEL_FILE))
    hf = AutoTokenizer.from_pretrained(hf_folder)
    rust = RustTokenizer.from_file(str(hf_folder / "tokenizer.json"))
    assert hf.is_fast
    assert (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id) == (1, 2, 0)
    rng = random.Random(11)
    texts = [t for t in TRICKY if t] + synthetic_corpus(60, seed=4) + ["ᚠ unseen 🜂"]
    texts += [random_unicode(rng, 20).replace("\u2581", "_") for _ in range(50)]
    for text in texts:
        expected = [1, *sentencepiece.encode(text)]
        assert hf(text)["input_ids"] == expected, text
        assert rust.encode(text).ids == expected, text
        assert hf.decode(expected, skip_special_tokens=True) == tokenizer.decode(expected)
    specials = json.loads((hf_folder / "special_tokens_map.json").read_text())
    assert specials == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = json.loads((hf_folder / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)


def test_the_hf_export_matches_sentencepiece_on_real_books(trained, hf_folder):
    if not CORPORA.is_dir():
        pytest.skip(f"sample corpora not found at {CORPORA}")
    from transformers import AutoTokenizer

    tokenizer, _ = trained
    hf = AutoTokenizer.from_pretrained(hf_folder)
    for book in sorted((CORPORA / "books").glob("pg*.txt")):
        text = book.read_bytes()[20_000:40_000].decode("utf-8", errors="replace")
        ids = tokenizer.encode(text)
        assert hf(text)["input_ids"] == ids, book.name
        assert tokenizer.decode(ids) == text
