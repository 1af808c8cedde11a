"""The Hugging Face export encodes and decodes exactly as SentencePiece, on text of every shape.

Tokenizers: ours (LLaMA's trainer settings) at three vocabulary sizes on prose and code; one on
code alone (whitespace-run pieces, which `allow_whitespace_only_pieces` lets it learn); that code
model with its whitespace runs scored last, the way Meta's Llama 2 model has them (early ids,
lowest score); one with extra control symbols. Every one is exported through
`llamaline train-tokenizer`'s existing-model path (the flow's task, run as a plain function).
Text: held-out real code (Python's own standard library), whitespace runs of every length,
repeated punctuation, digits, 21 scripts, emoji, characters outside the vocabulary (byte
fallback), the special-token strings, and seeded mixtures of all of them.
"""

import json
import os
import random
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from flows.tokenizer import TrainTokenizerConfig, make_tokenizer
from tasks.tokenizer import MODEL_FILE, Tokenizer, export_hf, train_tokenizer

STDLIB = sorted(Path(os.__file__).parent.glob("*.py"))
TRAINING_CODE, HELD_OUT_CODE = STDLIB[0::4], STDLIB[2::8]

# A block of letters (first and last code point) per script; words are drawn from the whole
# block, so the test text also has letters the training text never had (byte fallback).
SCRIPTS = {
    "latin": (0x61, 0x7A), "latin accents": (0xE0, 0xFF), "greek": (0x3B1, 0x3C9),
    "cyrillic": (0x430, 0x44F), "armenian": (0x561, 0x586), "hebrew": (0x5D0, 0x5EA),
    "arabic": (0x628, 0x64A), "devanagari": (0x915, 0x94C), "bengali": (0x995, 0x9B9),
    "tamil": (0xB95, 0xBB9), "telugu": (0xC15, 0xC39), "thai": (0xE01, 0xE30), "tibetan": (0xF40, 0xF69),
    "myanmar": (0x1000, 0x102A), "georgian": (0x10D0, 0x10F0), "ethiopic": (0x1200, 0x1248),
    "cherokee": (0x13A0, 0x13F4), "khmer": (0x1780, 0x17B3), "hiragana": (0x3041, 0x3096),
    "katakana": (0x30A1, 0x30FA), "han": (0x4E00, 0x4FFF), "hangul": (0xAC00, 0xAFFF),
}
SPECIAL_STRINGS = [
    "<s>", "</s>", "<unk>", "a</s>b", "</s></s>", " <s> ", "<s>[INST] hi [/INST]", "end.</s>", "▁</s>",
    "<0x0A>", "<pad>", "<<SYS>>\nsystem\n<</SYS>>\n\n", "<|im_start|>user\nhi<|im_end|>", "<tool>x</tool>",
    "[INST]", " [INST]  ", "<s><s><unk></s>",
]
EMOJI = ["🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷🇯🇵", "❤️", "🏳️‍🌈", "🦙.cpp", "a🙂b 🙂🙂🙂", "🜂"]
OUTSIDE_THE_VOCABULARY = [
    "\x00", "\x01\x1f\x7f", "\u200b\u200d\ufeff", "\ue000\U000f0000", "𠜎𠜱", "ᚠᚢᚦ", "\U0001d11e",
    "\U000e0001", "\u0301 starts with a combining mark", "\u00a0nbsp\u3000ideographic space",
    "\u2581 the space symbol itself \u2581\u2581", "\r\n windows \r\n", "\x0b\x0c",
]


def script_words(rng: random.Random, script: str, count: int, letters: int | None = None) -> list[str]:
    """Words of the script's block, or of an alphabet of that many of its letters."""
    first, last = SCRIPTS[script]
    alphabet = [chr(c) for c in range(first, last + 1)]
    if letters:
        alphabet = rng.sample(alphabet, letters)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))) for _ in range(count)]


def prose_lines(count: int, seed: int) -> list[str]:
    """Sentences in one script each, from a fixed vocabulary of words on a small alphabet per script."""
    rng = random.Random(seed)
    vocabulary = {script: script_words(rng, script, 40, letters=10) for script in SCRIPTS}
    lines = []
    for _ in range(count):
        words = vocabulary[rng.choice(sorted(SCRIPTS))]
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        lines.append(f"{sentence}, {rng.randint(0, 99999)}{rng.choice('.!?;:')}")
    return lines


def random_unicode(rng: random.Random, length: int) -> str:
    chars = []
    while len(chars) < length:
        code_point = rng.choice([0, 0, 0, 1, 2, 3, 14, 15, 16]) * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= code_point <= 0xDFFF:  # surrogates are not text
            chars.append(chr(code_point))
    return "".join(chars)


def whitespace_shapes() -> list[str]:
    texts = []
    for n in range(1, 70):
        run = " " * n
        texts += [run, run + "x", f"x{run}y", f"x{run}", f"x{run}\n{run}y", f"def f(x):\n{run}return x ** 2",
                  f"{run}\t{run}if x:\n{run}{run}pass", "\t" * (n % 9 + 1) + "tabbed", "\n" * (n % 7 + 1) + run,
                  f"{run}1{run}23{run}"]
    return texts + ["\t \t  \t", " \n \n", "x\n\n\n  \n\ty", "\n", "\t", ""]


def punctuation_runs() -> list[str]:
    texts = []
    for char in "=-#*_.~/`+<>|!?,;:'\"\\()[]{}":
        for n in range(1, 34):
            texts += [char * n, f"x {char * n} y", f"{char * n}\n{char * n}"]
    return texts


def digits(rng: random.Random) -> list[str]:
    texts = ["1234567890", "3.14159", "1,000,000", "0x1F 0b1010", "2026-05-18T10:00:00Z", "1e-9", "  42", "٣٤٥ ४५६"]
    return texts + [str(rng.randint(0, 10**rng.randint(1, 30))) for _ in range(40)]


def parity_texts() -> list[str]:
    rng = random.Random(2026)
    code = [path.read_text(encoding="utf-8") for path in HELD_OUT_CODE]
    short = whitespace_shapes() + punctuation_runs() + digits(rng) + SPECIAL_STRINGS + EMOJI + OUTSIDE_THE_VOCABULARY
    short += [" ".join(script_words(rng, script, rng.randint(3, 15))) for script in SCRIPTS for _ in range(5)]
    short += prose_lines(200, seed=99)
    short += [random_unicode(rng, rng.randint(1, 40)) for _ in range(200)]
    code_lines = [line for text in code for line in text.split("\n")]
    fragments = short + rng.sample(code_lines, 2000)
    separators = ["", " ", "  ", "\n", "\n\n", "\t", "    ", " \n", "\n    "]
    mixtures = ["".join(rng.choice(fragments) + rng.choice(separators) for _ in range(rng.randint(2, 30)))
                for _ in range(600)]
    return code + short + mixtures


TOKENIZERS = ["ours-1000", "ours-4000", "ours-16000", "code-2000", "meta-style-code-2000", "control-symbols-1000"]


def whitespace_runs_scored_last(model: Path, out_dir: Path) -> Path:
    """The model with every whitespace-only piece of two or more "▁" scored -1e9, below all others.

    Meta's Llama 2 model scores its whitespace runs that way (below the other pieces, ids early):
    issue 12's "    return" -> "▁▁▁" "▁return" needs it. -1e9 ties them all: the hardest case.
    """
    proto = sentencepiece_model_pb2.ModelProto.FromString(model.read_bytes())
    rescored = 0
    for piece in proto.pieces:
        if len(piece.piece) > 1 and set(piece.piece) == {"▁"}:
            piece.score, rescored = -1e9, rescored + 1
    assert rescored >= 5, "the code model should have learned whitespace runs"
    out_dir.mkdir()
    (out_dir / MODEL_FILE).write_bytes(proto.SerializeToString())
    return out_dir / MODEL_FILE


def train(name: str, out_dir: Path, code_model: Path | None) -> Path:
    """A tokenizer.model for one of TOKENIZERS."""
    code = [path.read_text(encoding="utf-8") for path in TRAINING_CODE]
    mixed = prose_lines(3000, seed=1) + code
    if name.startswith("ours-"):
        train_tokenizer(mixed, out_dir, vocab_size=int(name.removeprefix("ours-")))
    elif name == "code-2000":
        train_tokenizer(code, out_dir, vocab_size=2000)
    elif name == "meta-style-code-2000":
        return whitespace_runs_scored_last(code_model, out_dir)
    else:
        train_tokenizer(mixed, out_dir, vocab_size=1000, control_symbols=["<|im_start|>", "<|im_end|>"])
    return out_dir / MODEL_FILE


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Each tokenizer's Hugging Face folder, written by the train-tokenizer flow's existing-model path."""
    root = tmp_path_factory.mktemp("parity")
    folders = {}
    for name in TOKENIZERS:
        model = train(name, root / name, root / "code-2000" / MODEL_FILE)
        summary = make_tokenizer.fn(TrainTokenizerConfig(existing=str(model), output=str(root / f"{name}-hf")))
        folders[name] = Path(summary["folder"])
    return folders


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return parity_texts()


def loaded(folder: Path):
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return (spm.SentencePieceProcessor(model_file=str(folder / MODEL_FILE)), AutoTokenizer.from_pretrained(folder),
            RustTokenizer.from_file(str(folder / "tokenizer.json")), SentencePieceBackend.from_pretrained(folder))


def shown(sentencepiece, ids: list[int]) -> list[str]:
    return [sentencepiece.id_to_piece(i) for i in ids]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_export_gives_sentencepieces_ids_on_every_kind_of_text(exports, texts, name):
    sentencepiece, fast, rust, slow = loaded(exports[name])
    assert fast.is_fast and not slow.is_fast
    mismatches = []
    for text in texts:
        expected = [1, *sentencepiece.encode(text)]
        got = {"AutoTokenizer": fast(text)["input_ids"], "tokenizer.json": rust.encode(text).ids,
               "SentencePieceBackend": slow(text)["input_ids"]}
        for how, ids in got.items():
            if ids != expected:
                mismatches.append(f"{how} on {text[:80]!r}: {shown(sentencepiece, ids)[:40]} != "
                                  f"{shown(sentencepiece, expected)[:40]}")
    assert len(texts) > 2500 and sum(map(len, texts)) > 500_000
    assert not mismatches, f"{len(mismatches)} of {3 * len(texts)} encodings differ:\n" + "\n".join(mismatches[:5])


def decodable_ids(rng: random.Random, sentencepiece, count: int) -> list[list[int]]:
    """Ids a model could emit: normal and control pieces, byte pieces only as whole characters.

    (A run of byte pieces that is not UTF-8 decodes differently: the Rust ByteFallback writes one
    U+FFFD per byte of the run, SentencePiece only for the bytes that are not part of a character.)
    """
    pieces = [i for i in range(sentencepiece.get_piece_size())
              if not (sentencepiece.is_byte(i) or sentencepiece.is_unknown(i))]
    sequences = []
    for _ in range(count):
        ids = []
        for _ in range(rng.randint(1, 20)):
            if rng.random() < 0.1:
                ids += [sentencepiece.piece_to_id(f"<0x{byte:02X}>") for byte in random_unicode(rng, 1).encode()]
            else:
                ids.append(rng.choice(pieces))
        sequences.append(ids)
    return sequences


@pytest.mark.parametrize("name", TOKENIZERS)
def test_the_export_decodes_as_sentencepiece(exports, texts, name):
    sentencepiece, fast, rust, _ = loaded(exports[name])
    rng = random.Random(5)
    sequences = [[1, *sentencepiece.encode(text)] for text in texts]
    sequences += decodable_ids(rng, sentencepiece, 2000)
    mismatches = []
    for ids in sequences:
        expected = sentencepiece.decode(ids)
        # (transformers' SentencePieceBackend leaves byte pieces as "<0x0A>" text: its own decoder)
        got = {"AutoTokenizer": fast.decode(ids), "skipping specials": fast.decode(ids, skip_special_tokens=True),
               "tokenizer.json": rust.decode(ids)}
        mismatches += [f"{how} of {shown(sentencepiece, ids)[:20]}: {text[:60]!r} != {expected[:60]!r}"
                       for how, text in got.items() if text != expected]
    assert not mismatches, f"{len(mismatches)} decodings differ:\n" + "\n".join(mismatches[:5])


@pytest.mark.parametrize("name", ["ours-4000", "meta-style-code-2000", "control-symbols-1000"])
def test_special_token_strings_are_text_and_callers_add_the_ids(exports, name):
    sentencepiece, fast, rust, _ = loaded(exports[name])
    controls = [i for i in range(sentencepiece.get_piece_size()) if sentencepiece.is_control(i)]
    for text in ["</s>", "hi </s> <s>", "<unk>", "<|im_end|>", "a<|im_start|>b"]:
        ids = fast(text)["input_ids"]
        assert ids == rust.encode(text).ids == [1, *sentencepiece.encode(text)]
        assert not set(ids[1:]) & set(controls), text
    assert (fast.bos_token_id, fast.eos_token_id, fast.unk_token_id) == (1, 2, 0)
    plain = fast("hi", add_special_tokens=False)["input_ids"]
    assert plain == sentencepiece.encode("hi")
    assert fast.decode([fast.bos_token_id, *plain, fast.eos_token_id]) == "hi"
    # a caller who wants the strings matched asks for it
    assert fast("hi</s>", split_special_tokens=False)["input_ids"] == [1, *plain, 2]


def test_whitespace_runs_scored_last_give_meta_llamas_split_of_indented_code(exports):
    """Issue 12's example: SentencePiece keeps "▁return" whole where id-ranked merges gave "▁▁▁▁" "return"."""
    sentencepiece, fast, rust, _ = loaded(exports["meta-style-code-2000"])
    text = "def f(x):\n    return x ** 2"
    pieces = shown(sentencepiece, sentencepiece.encode(text))
    assert "▁return" in pieces and "▁▁▁▁" not in pieces
    assert fast(text)["input_ids"] == rust.encode(text).ids == [1, *sentencepiece.encode(text)]


def test_the_export_is_byte_identical_run_to_run(exports, tmp_path):
    tokenizer = Tokenizer.load(exports["control-symbols-1000"] / MODEL_FILE)
    export_hf(tokenizer, tmp_path)
    for file in ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        assert (tmp_path / file).read_bytes() == (exports["control-symbols-1000"] / file).read_bytes(), file
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]


def test_models_it_cannot_convert_exactly_are_refused_by_name(exports, tmp_path):
    proto = sentencepiece_model_pb2.ModelProto.FromString((exports["ours-1000"] / MODEL_FILE).read_bytes())
    proto.normalizer_spec.remove_extra_whitespaces = True
    squeezing = Tokenizer(proto.SerializeToString(), name="squeezing.model")
    with pytest.raises(ValueError, match="squeezing.model: .*remove_extra_whitespaces"):
        export_hf(squeezing, tmp_path / "squeezing")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(prose_lines(300, seed=3)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "unigram"), vocab_size=300,
                                   model_type="unigram", hard_vocab_limit=False, minloglevel=2)
    unigram = Tokenizer.load(tmp_path / "unigram.model")
    with pytest.raises(ValueError, match=r"unigram.model: .*model type UNIGRAM \(only BPE\)"):
        export_hf(unigram, tmp_path / "unigram")
    marked = train_tokenizer(prose_lines(300, seed=3), tmp_path / "marked", vocab_size=800, hard_vocab_limit=False,
                             user_defined_symbols=["<tool>"])
    with pytest.raises(ValueError, match=r"marked.tokenizer.model: .*user-defined symbols"):
        export_hf(marked, tmp_path / "marked-hf")
