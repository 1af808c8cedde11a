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
rebuild the C++ processor lazily. `export_hf` writes the Hugging Face tokenizer files, which
encode as SentencePiece does; it needs `tokenizers` and `protobuf`, imported only there.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from tasks.chat_format import CHAT_TEMPLATE
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

    `AutoTokenizer.from_pretrained(folder)` (and `tokenizers.Tokenizer.from_file` on tokenizer.json)
    then encodes and decodes as the SentencePiece model does: the same ids on any text, BOS added
    and EOS not. Text that spells a control piece ("<s>", "</s>", "<unk>") is text, as in
    SentencePiece, so a user cannot end a chat turn by typing "</s>"; callers add BOS/EOS by id
    (a transformers caller who wants the strings matched passes split_special_tokens=False).
    The config holds Llama 2's chat template (`tasks.chat_format.CHAT_TEMPLATE`), which needs
    that matching and so refuses messages that spell a control token.
    The conversion is our own (`hf_backend`), not transformers' converter, whose merges ignore
    the piece scores (see `bpe_merges`).
    """
    from sentencepiece import sentencepiece_model_pb2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.model_proto)
    backend = hf_backend(proto, tokenizer.name)
    tokenizer.save(folder / MODEL_FILE)
    backend.save(str(folder / "tokenizer.json"))
    specials = {
        key: tokenizer.piece(token_id)
        for key, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id), ("unk_token", tokenizer.unk_id))
        if token_id >= 0
    }
    extra_controls = [p.piece for p in proto.pieces if p.type == _CONTROL and p.piece not in specials.values()]
    config = specials | {
        # the generic fast class takes tokenizer.json as it is; transformers' LlamaTokenizer
        # would rebuild its pipeline from vocab and merges its own way
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tokenizer.bos_id >= 0,
        "add_eos_token": False,
        # the same for transformers' SentencePiece-backed class (SentencePieceBackend.from_pretrained)
        **({"special_tokens_pattern": "bos"} if tokenizer.bos_id >= 0 else {}),
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    if extra_controls:
        config["additional_special_tokens"] = extra_controls
    if tokenizer.bos_id >= 0 and tokenizer.eos_id >= 0:
        # tokenizer_config.json, not chat_template.jinja: every transformers version and vLLM, TGI
        # and llama.cpp's converter read it there
        config["chat_template"] = CHAT_TEMPLATE
    _write_json(folder / "tokenizer_config.json", config)
    # transformers 5 reads the special tokens from tokenizer_config.json; older readers and other
    # frameworks (vLLM, TGI, llama.cpp's converter) still look for this file.
    _write_json(folder / "special_tokens_map.json", specials)
    return folder


_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5  # SentencePiece piece types (ModelProto.SentencePiece.Type)


def hf_backend(proto, name: str = "<proto>"):
    """A `tokenizers.Tokenizer` that encodes and decodes as the SentencePiece BPE model `proto`.

    SentencePiece's BPE needs no pre-tokenizer: it starts from the characters of the whole
    normalized text and merges, again and again, the adjacent pair whose concatenation is the
    best-scoring piece. The Rust BPE model does the same with ranked merges, so the pipeline is
    the normalizer (dummy prefix, spaces as "▁"), one BPE "word", and byte fallback for the
    characters outside the vocabulary. Control pieces are vocabulary only, never added tokens, so
    text that spells them stays text; the decoder drops them as SentencePiece's decoder does.
    """
    from tokenizers import Regex, decoders, normalizers, processors
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE

    _check_convertible(proto, name)
    pieces = proto.pieces
    spec = proto.trainer_spec
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    backend = RustTokenizer(BPE(
        vocab={piece.piece: token_id for token_id, piece in enumerate(pieces)}, merges=bpe_merges(pieces),
        unk_token=pieces[spec.unk_id].piece, fuse_unk=True, byte_fallback=spec.byte_fallback, dropout=None,
    ))
    # SentencePiece's dummy prefix goes before every text, even one that starts with a space
    # (transformers' Metaspace pre-tokenizer skips it there)
    steps = [normalizers.Prepend("▁")] if dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    controls = [piece.piece for piece in pieces if piece.type == _CONTROL]
    # a control piece decodes to nothing, a normal piece that contains its string stays whole
    drop_controls = [decoders.Replace(Regex(r"\A(?:" + "|".join(map(_onig_escape, controls)) + r")\z"), "")]
    backend.decoder = decoders.Sequence([
        *(drop_controls if controls else []), decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        *([decoders.Strip(" ", 1, 0)] if dummy_prefix else []),
    ])
    if spec.bos_id >= 0:
        bos = pieces[spec.bos_id].piece
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, spec.bos_id)],
        )
    return backend


def bpe_merges(pieces) -> list[tuple[str, str]]:
    """Every (left, right) pair of normal pieces that concatenates to a normal piece, best first.

    SentencePiece merges the pair whose result has the highest score, leftmost first on a tie;
    the Rust BPE merges the pair of lowest rank. So the rank is the result's score, not its id:
    the two orders differ where a model's scores do not follow its ids (Meta's Llama 2 model
    gives its whitespace runs "▁▁", "▁▁▁▁"... early ids but scores below the other pieces, so that
    "    return" is "▁▁▁" "▁return"; ranked by id, "▁▁▁▁" "return"). Among results of equal score
    the longer goes first: on a run of equal-score pieces that reproduces SentencePiece's
    leftmost-first merging, where id order does not (tests/modeling/test_tokenizer_parity.py ties
    every whitespace run of a code model and encodes runs of every length up to 69). Splits of one piece: longer left part first.
    """
    normal = {piece.piece: (piece.score, token_id) for token_id, piece in enumerate(pieces) if piece.type == _NORMAL}
    ranked = []
    for piece, (score, token_id) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append(((-score, -len(piece), token_id, -cut), (left, right)))
    ranked.sort()
    return [pair for _, pair in ranked]


def _check_convertible(proto, name: str) -> None:
    """Refuse what `hf_backend` would convert wrongly, rather than export different ids."""
    from sentencepiece import sentencepiece_model_pb2

    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        problems.append(f"model type {sentencepiece_model_pb2.TrainerSpec.ModelType.Name(spec.model_type)} (only BPE)")
    if normalizer.precompiled_charsmap:
        problems.append(f"normalization rule {normalizer.name!r} (only identity)")
    if normalizer.remove_extra_whitespaces:
        problems.append("remove_extra_whitespaces")
    if not normalizer.escape_whitespaces:
        problems.append("escape_whitespaces off")
    if spec.treat_whitespace_as_suffix:
        problems.append("treat_whitespace_as_suffix")
    if proto.denormalizer_spec.precompiled_charsmap:
        problems.append("a denormalizer")
    if any(piece.type == _UNUSED for piece in proto.pieces):
        problems.append("unused pieces")
    if any(piece.type == _USER_DEFINED for piece in proto.pieces):
        # SentencePiece cuts them out of the text after the dummy prefix; the Rust added tokens
        # match before it, so a text that starts with one loses its "▁". Markers a chat format
        # adds by id are control symbols, which export exactly.
        problems.append("user-defined symbols (train with control_symbols instead)")
    if problems:
        raise ValueError(f"{name}: cannot export to Hugging Face with SentencePiece's ids: {', '.join(problems)}")


def _onig_escape(text: str) -> str:
    return "".join(f"\\x{{{ord(char):x}}}" if not char.isalnum() else char for char in text)


def _write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
