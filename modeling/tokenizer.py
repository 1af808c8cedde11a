"""LLaMA's tokenizer: a SentencePiece BPE model, trained with LLaMA's settings, loaded, exported.

Training follows the LLaMA paper and the trainer_spec inside Meta's tokenizer.model: BPE, digits
split, unknown characters fall back to UTF-8 byte pieces (<0x..>), identity normalization with a
dummy prefix space and whitespace kept as is, ids <unk>=0 <s>=1 </s>=2 and no pad piece.

SentencePiece trains on lines, so each text is split on newlines (a newline is never inside a
piece; it encodes as the byte piece <0x0A>, as in LLaMA). Lines are sampled here, not by
SentencePiece: its own `input_sentence_size` sampling does not honour `set_random_generator_seed`
(sentencepiece 0.2.x picks a different sample on every run), so we draw a seeded reservoir sample
and hand SentencePiece exactly those lines. Same input and options give a byte-identical model.

`Tokenizer` wraps a model (ours or Meta's) and pickles as the model's bytes, so Ray workers
rebuild the C++ processor lazily. `export_hf` writes the Hugging Face fast-tokenizer files; it
needs `transformers` (and through it `tokenizers` and `protobuf`), imported only there.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from tasks.storage import atomic_output, resolve

MODEL_FILE = "tokenizer.model"

# Meta's tokenizer.model trainer_spec, less what depends on the corpus or the machine.
LLAMA_TRAINER_OPTIONS: dict[str, object] = {
    "model_type": "bpe",
    "character_coverage": 0.99995,
    "split_digits": True,
    "byte_fallback": True,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
}
MAX_SENTENCE_BYTES = 4192  # LLaMA's max_sentence_length: SentencePiece skips longer lines
# SentencePiece records num_threads in the model; a fixed value keeps the bytes independent of
# the machine (BPE training gives the same pieces whatever the thread count).
TRAIN_THREADS = 16


class Tokenizer:
    """A SentencePiece model with LLaMA's encode/decode conventions; pickles as its bytes."""

    def __init__(self, model_proto: bytes, *, name: str = "<bytes>"):
        self._model_proto = bytes(model_proto)
        self.name = name
        self._loaded = _load_processor(self._model_proto, name)  # a bad model fails here, early

    @property
    def _processor(self) -> spm.SentencePieceProcessor:
        if self._loaded is None:  # unpickled: build the C++ object on first use in this process
            self._loaded = _load_processor(self._model_proto, self.name)
        return self._loaded

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a tokenizer.model (Meta's or one `train_tokenizer` wrote); local path or URI."""
        location = resolve(path)
        with location.open_input() as stream:
            return cls(stream.read(), name=location.uri)

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_output(resolve(path)) as stream:
            stream.write(self._model_proto)

    @property
    def model_proto(self) -> bytes:
        return self._model_proto

    @property
    def vocab_size(self) -> int:
        return self._processor.vocab_size()

    @property
    def bos_id(self) -> int:
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self._processor.eos_id()

    @property
    def unk_id(self) -> int:
        return self._processor.unk_id()

    def piece(self, token_id: int) -> str:
        return self._processor.id_to_piece(token_id)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        self._check_specials(bos, eos)
        return self._processor.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: Iterable[str], bos: bool = True, eos: bool = False, num_threads: int = 1
    ) -> list[list[int]]:
        """Encode many texts in one C++ call. One thread by default: a Ray task owns one core."""
        self._check_specials(bos, eos)
        return self._processor.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids; <s>, </s> and other control pieces decode to nothing."""
        return self._processor.decode(list(ids))

    def _check_specials(self, bos: bool, eos: bool) -> None:
        for wanted, token_id, what in ((bos, self.bos_id, "BOS"), (eos, self.eos_id, "EOS")):
            if wanted and token_id < 0:
                raise ValueError(f"tokenizer {self.name} has no {what} piece")

    def __getstate__(self) -> dict[str, object]:
        return {"model_proto": self._model_proto, "name": self.name}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._model_proto = state["model_proto"]
        self.name = state["name"]
        self._loaded = None


def _load_processor(model_proto: bytes, name: str) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{name} is not a SentencePiece model: {error}") from error
    return processor


def train_tokenizer(
    source: Iterable[str] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vocab_size: int = 32000,
    max_sentences: int = 10_000_000,
    seed: int = 0,
    **overrides: object,
) -> Tokenizer:
    """Train a LLaMA-style BPE tokenizer and write `<out_dir>/tokenizer.model`.

    source: an iterable of texts (the caller samples the mixture), or the path of a UTF-8 text
    file (one or more lines per text). A seeded reservoir sample of at most `max_sentences` lines
    (LLaMA used 200M) is what SentencePiece sees; it is held in memory, as SentencePiece holds
    its own. overrides: further SentencePiece trainer options
    (e.g. hard_vocab_limit=False for toy corpora).
    """
    sample = reservoir_sample(_training_lines(source), max_sentences, seed)
    if not sample:
        raise ValueError(f"no training lines in {_describe(source)}")
    options = LLAMA_TRAINER_OPTIONS | {
        "vocab_size": vocab_size,
        "max_sentence_length": MAX_SENTENCE_BYTES,
        "num_threads": TRAIN_THREADS,
        "minloglevel": 2,
    } | overrides
    target = resolve(out_dir).join(MODEL_FILE).uri
    tokenizer = Tokenizer(_train(sample, options), name=target)
    tokenizer.save(target)
    return tokenizer


def _train(lines: list[str], options: dict[str, object]) -> bytes:
    model = _BytesSink()
    # input_sentence_size 0: SentencePiece takes every line given (the sample is already drawn).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, input_sentence_size=0,
        shuffle_input_sentence=False, **options,
    )
    return model.data


class _BytesSink:
    data = b""

    def write(self, data: bytes) -> None:
        self.data = data


def _training_lines(source: Iterable[str] | str | os.PathLike[str]) -> Iterator[str]:
    """Non-empty lines that SentencePiece would keep (at most MAX_SENTENCE_BYTES in UTF-8)."""
    for text in _texts(source):
        for line in text.split("\n"):
            if line and len(line.encode("utf-8")) <= MAX_SENTENCE_BYTES:
                yield line


def _texts(source: Iterable[str] | str | os.PathLike[str]) -> Iterator[str]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer training file {path} does not exist")
        with path.open("rb") as lines:
            for number, line in enumerate(lines, 1):
                try:
                    yield line.decode("utf-8").removesuffix("\n")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}:line {number}: not UTF-8 ({error})") from error
    else:
        yield from source


def reservoir_sample(items: Iterable[str], size: int, seed: int) -> list[str]:
    """A uniform sample of `size` items in one pass (Algorithm R), reproducible from the seed."""
    if size < 1:
        raise ValueError(f"sample size must be positive, got {size}")
    rng = random.Random(seed)
    sample: list[str] = []
    for seen, item in enumerate(items):
        if seen < size:
            sample.append(item)
        else:
            slot = rng.randint(0, seen)
            if slot < size:
                sample[slot] = item
    return sample


def _describe(source: object) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the given texts"


def export_hf(tokenizer: Tokenizer, folder: str | os.PathLike[str]) -> Path:
    """Write tokenizer.model, tokenizer.json, tokenizer_config.json and special_tokens_map.json.

    `AutoTokenizer.from_pretrained(folder)` then loads a fast (Rust `tokenizers`) tokenizer that
    gives SentencePiece's ids, BOS added and EOS not, as Meta's Hugging Face exports do. The
    conversion is transformers' own (SentencePiece merges and byte fallback into a BPE model),
    with the dummy prefix done as SentencePiece does it.
    """
    from transformers import LlamaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / MODEL_FILE)
    specials = {
        "bos_token": tokenizer.piece(tokenizer.bos_id),
        "eos_token": tokenizer.piece(tokenizer.eos_id),
        "unk_token": tokenizer.piece(tokenizer.unk_id),
    }
    fast = LlamaTokenizerFast.from_pretrained(
        folder, add_bos_token=True, add_eos_token=False, legacy=True,
        clean_up_tokenization_spaces=False, **specials,
    )
    _prefix_like_sentencepiece(fast.backend_tokenizer)
    fast.save_pretrained(folder)
    _settle_config(folder / "tokenizer_config.json")
    # transformers 5 keeps the special tokens only in tokenizer_config.json; older readers and
    # other frameworks (vLLM, TGI, llama.cpp's converter) still look for this file.
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return folder


def _prefix_like_sentencepiece(backend) -> None:
    """SentencePiece's dummy prefix: one "▁" before every text, even one starting with a space.

    transformers' Metaspace pre-tokenizer adds none to a text that already starts with a space
    (" x" gives one "▁" less than SentencePiece); the normalizer of Meta's own Llama 2
    tokenizer.json always prepends.
    """
    from tokenizers import normalizers

    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None


def _settle_config(path: Path) -> None:
    """Load tokenizer.json as written, drop keys of the loading call, state BOS/EOS use.

    transformers 5's LlamaTokenizer rebuilds its pipeline from vocab and merges with the
    Metaspace pre-tokenizer, undoing `_prefix_like_sentencepiece`; the generic fast class takes
    tokenizer.json as it is (Meta's Llama 3 exports name it too).
    """
    config = json.loads(path.read_text())
    for load_time_key in ("is_local", "local_files_only"):
        config.pop(load_time_key, None)
    config |= {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False}
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
