"""CCNet's quality filter: a per-language 5-gram KenLM model over SentencePiece pieces, its
perplexity per document, and head / middle / tail buckets from per-language percentile cutoffs.

Training (:func:`train_quality_model`, :func:`train_from_stage`): text is normalised line by line
(:mod:`tasks.curate.normalize`), a SentencePiece unigram model is trained on it (character coverage
0.9995, as CCNet), the lines are tokenised with it and ``lmplz -o 5`` estimates the n-gram model,
which ``build_binary`` turns into ``<lang>.arpa.bin``. ``lmplz`` and ``build_binary`` are KenLM's
own programs; infra/scripts/build-kenlm.sh builds them next to the venv's Python.

Scoring (:class:`PerplexityScorer`): each line is normalised and tokenised as at training time and
scored with kenlm (``<s>`` and ``</s>`` included); a document's perplexity is
``10 ** (-sum(log10 P) / sum(tokens + 1 per line))``, the +1 counting ``</s>``. Lines that are empty
after normalisation are skipped. CCNet itself normalised whole documents, which removes the
newlines, so each of its documents is scored as one line; scoring per line keeps sentence
boundaries as the model saw them at training time.

Buckets (:class:`QualityBucketFilter`): ``head < p30 <= middle < p60 <= tail``, per language. Cutoffs
come from the perplexities of a scored stage (:func:`perplexity_cutoffs`) or from a JSON file
``{lang: {"p30": .., "p60": ..}}``; they belong to the model that produced the perplexities (CCNet's
English 340 / 520 fit CCNet's English model only).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.normalize import normalize
from tasks.documents import Document
from tasks.shards import read_part
from tasks.stage import units_from_stage
from tasks.steps import Drop, Step
from tasks.storage import Location, resolve, write_json_atomic

PERPLEXITY = "perplexity"
BUCKET = "bucket"
HEAD, MIDDLE, TAIL, UNSCORED = "head", "middle", "tail", "all"  # "all": CCNet's name for "no bucket"
PERPLEXITY_SCHEMA = pa.schema([pa.field(PERPLEXITY, pa.float64())])
# CCNet's English cutoffs (RECIPE.md): valid for CCNet's English model only.
CCNET_ENGLISH_CUTOFFS = {"en": {"p30": 340.0, "p60": 520.0}}
SENTENCEPIECE_SUFFIX = ".sp.model"
BINARY_SUFFIX = ".arpa.bin"
MARKER_SUFFIX = ".quality.json"
TRAINED_MARKER = "_trained_from_stage.json"  # the completion marker of train_from_stage


# ---------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class QualityModel:
    """A language's SentencePiece model and KenLM model (ARPA or KenLM binary), as local paths."""

    language: str
    sentencepiece: str
    kenlm: str

    def check(self) -> QualityModel:
        for path in (self.sentencepiece, self.kenlm):
            if not Path(path).is_file():
                raise FileNotFoundError(f"quality model for {self.language!r}: {path} does not exist")
        return self

    @classmethod
    def in_folder(cls, folder: str | os.PathLike[str], language: str) -> QualityModel:
        """``<lang>.sp.model`` and ``<lang>.arpa.bin`` (else ``<lang>.binary`` or ``<lang>.arpa``)."""
        base = Path(folder)
        candidates = [base / f"{language}{BINARY_SUFFIX}", base / f"{language}.binary", base / f"{language}.arpa"]
        found = next((c for c in candidates if c.is_file()), candidates[0])
        return cls(language, str(base / f"{language}{SENTENCEPIECE_SUFFIX}"), str(found)).check()


def kenlm_program(name: str) -> Path:
    """``lmplz`` or ``build_binary``, installed beside the interpreter by build-kenlm.sh."""
    program = Path(sys.executable).parent / name
    if not (program.is_file() and os.access(program, os.X_OK)):
        raise FileNotFoundError(
            f"KenLM's {name} is not at {program}: build it with `bash infra/scripts/build-kenlm.sh` "
            f"(`make install` runs it)"
        )
    return program


def train_quality_model(
    texts: Iterable[str] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    language: str,
    vocab_size: int = 65536,
    order: int = 5,
    character_coverage: float = 0.9995,
    max_sentencepiece_lines: int = 10_000_000,
    lmplz_memory: str = "25%",
    discount_fallback: bool = True,
    keep_arpa: bool = False,
) -> QualityModel:
    """Train ``<out_dir>/<lang>.sp.model`` and ``<lang>.arpa.bin`` on ``texts`` (a local folder:
    KenLM's programs read and write local files).

    ``texts`` is an iterable of documents or the path of a UTF-8 text file. ``vocab_size`` is a soft
    limit (a small corpus yields fewer pieces instead of failing). ``discount_fallback`` lets lmplz
    use default Kneser-Ney discounts where a small corpus has too few singletons to estimate them;
    on a large corpus the estimate succeeds and the option changes nothing. Outputs are written
    under temporary names and renamed when complete; a marker file records the parameters.
    """
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    if not 1 <= order <= 6:  # the kenlm module is compiled with KENLM_MAX_ORDER 6
        raise ValueError(f"order must be 1..6, got {order}")
    lmplz, build_binary = kenlm_program("lmplz"), kenlm_program("build_binary")
    out = Path(out_dir)
    # The marker goes first: models half replaced by an interrupted run never look finished.
    (out / f"{language}{MARKER_SUFFIX}").unlink(missing_ok=True)
    work = out / f".work-{language}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        normalized = work / "normalized.txt"
        lines = _write_normalized_lines(_texts(texts), normalized)
        if lines == 0:
            raise ValueError(f"no text to train the {language} quality model on")
        sp = _train_sentencepiece(normalized, work / "sp", vocab_size, character_coverage, max_sentencepiece_lines)
        arpa = work / "model.arpa"
        _run_lmplz(lmplz, sp, normalized, arpa, order, lmplz_memory, discount_fallback, work)
        binary = work / "model.bin"
        _run(
            [str(build_binary), str(arpa), str(binary)], f"build_binary for {language}", work / "build_binary.log"
        )
        model = QualityModel(
            language, str(out / f"{language}{SENTENCEPIECE_SUFFIX}"), str(out / f"{language}{BINARY_SUFFIX}")
        )
        os.replace(work / "sp.model", model.sentencepiece)
        os.replace(binary, model.kenlm)
        if keep_arpa:
            os.replace(arpa, out / f"{language}.arpa")
        marker = {
            "language": language,
            "vocab_size": vocab_size,
            "pieces": sp.get_piece_size(),
            "order": order,
            "character_coverage": character_coverage,
            "lines": lines,
            "sentencepiece": model.sentencepiece,
            "kenlm": model.kenlm,
        }
        write_json_atomic(resolve(out / f"{language}{MARKER_SUFFIX}"), marker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return model


def _texts(texts: Iterable[str] | str | os.PathLike[str]) -> Iterator[str]:
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            raise FileNotFoundError(f"training text not found: {path}")
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from f
    else:
        yield from texts


def _write_normalized_lines(texts: Iterable[str], target: Path) -> int:
    count = 0
    with target.open("w", encoding="utf-8") as out:
        for text in texts:
            for line in text.splitlines():
                normalized = normalize(line)
                if normalized:
                    out.write(normalized + "\n")
                    count += 1
    return count


def _train_sentencepiece(corpus: Path, prefix: Path, vocab_size: int, coverage: float, max_lines: int):
    import sentencepiece as spm

    spm.set_random_generator_seed(0)  # the line sample drawn when the corpus exceeds max_lines
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=coverage,
        input_sentence_size=max_lines,
        shuffle_input_sentence=True,
        num_threads=1,  # deterministic pieces; training is a small part of the cost next to lmplz
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(prefix) + ".model")


def _run_lmplz(
    lmplz: Path, sp: Any, corpus: Path, arpa: Path, order: int, memory: str, discount_fallback: bool, work: Path
) -> None:
    command = [str(lmplz), "-o", str(order), "-S", memory, "-T", str(work)]
    if discount_fallback:
        command.append("--discount_fallback")
    log = work / "lmplz.log"
    with arpa.open("wb") as out, log.open("wb") as err:
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err)
        try:
            with corpus.open(encoding="utf-8") as lines:
                for line in lines:
                    process.stdin.write((" ".join(sp.encode(line.rstrip("\n"), out_type=str)) + "\n").encode())
            process.stdin.close()
        except BrokenPipeError:
            pass  # lmplz stopped early: its exit status and log say why
        returncode = process.wait()
    if returncode != 0:
        raise RuntimeError(f"lmplz failed (exit {returncode}): {_tail(log)}")


def _run(command: list[str], what: str, log: Path) -> None:
    with log.open("wb") as err:
        result = subprocess.run(command, stdout=err, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {_tail(log)}")


def _tail(log: Path, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:]


def train_from_stage(
    stage_dir: Location,
    out_dir: str,
    languages: Sequence[str] | None = None,
    vocab_size: int = 65536,
    order: int = 5,
    sources: Sequence[str] = ("wikipedia",),
    min_lines: int = 1,
) -> dict[str, QualityModel]:
    """Train one model per language from the documents of a finished stage (by default the
    ``wikipedia`` source of the ingest stage), grouped by ``meta["language"]``.

    One pass over the parts writes each language's text to a work file (streamed); each language
    is then trained from its file. A rerun with the same parts (by their checksums) and parameters
    returns the finished models without reading the stage; after an interrupted run, languages
    already trained are skipped. Languages with fewer than ``min_lines`` lines are left out.
    """
    units = units_from_stage(stage_dir, sources)
    if not units:
        raise ValueError(f"{stage_dir.uri}: no parts of sources {list(sources)}")
    parameters = {
        "inputs": hashlib.sha256("".join(sorted(u.input.sha256 for u in units)).encode()).hexdigest(),
        "vocab_size": vocab_size,
        "order": order,
    }
    request = {**parameters, "languages": sorted(languages) if languages is not None else None, "min_lines": min_lines}
    out = Path(out_dir)
    done = out / TRAINED_MARKER
    if done.is_file() and json.loads(done.read_text())["request"] == request:
        return {lang: QualityModel.in_folder(out, lang) for lang in json.loads(done.read_text())["languages"]}
    done.unlink(missing_ok=True)
    work = out / ".work-stage"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        line_counts = _split_by_language(units, set(languages) if languages is not None else None, work)
        models: dict[str, QualityModel] = {}
        for language in sorted(line_counts):
            if line_counts[language] < min_lines:
                continue
            marker = out / f"{language}{MARKER_SUFFIX}"
            if marker.is_file() and json.loads(marker.read_text()).get("trained_from") == parameters:
                models[language] = QualityModel.in_folder(out, language)
                continue
            models[language] = train_quality_model(work / f"{language}.txt", out, language, vocab_size, order)
            record = json.loads(marker.read_text())
            record["trained_from"] = parameters
            write_json_atomic(resolve(marker), record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(resolve(done), {"request": request, "languages": sorted(models)})
    return models


def _split_by_language(units, wanted: set[str] | None, work: Path) -> dict[str, int]:
    files: dict[str, Any] = {}
    counts: dict[str, int] = {}
    try:
        for unit in units:
            for doc in read_part(resolve(unit.input.uri)):
                language = doc.meta.get("language")
                if not language or (wanted is not None and language not in wanted):
                    continue
                if language not in files:
                    files[language] = (work / f"{language}.txt").open("w", encoding="utf-8")
                    counts[language] = 0
                files[language].write(doc.text.rstrip("\n") + "\n")
                counts[language] += doc.text.count("\n") + 1
    finally:
        for f in files.values():
            f.close()
    return counts


# ---------------------------------------------------------------------------------------------
# Scoring


class PerplexityScorer(Step):
    """Adds each document's perplexity under its language's model.

    ``models`` maps a language to a :class:`QualityModel` (or a folder holding ``<lang>.sp.model``
    and ``<lang>.arpa.bin``). Models load lazily in each worker and are not pickled. The value goes
    to ``doc.columns["perplexity"]`` (declare :data:`PERPLEXITY_SCHEMA` in the stage's
    ``extra_columns``) or, with ``into="meta"``, to ``doc.meta["perplexity"]``. A document whose
    language has no model, or with no text left after normalisation, gets ``None``; with
    ``drop_without_model`` a document whose language has no model is dropped
    (``quality:no_model``).
    """

    name = "quality"

    def __init__(
        self,
        models: Mapping[str, QualityModel | str | os.PathLike[str]],
        into: str = "columns",
        drop_without_model: bool = False,
    ) -> None:
        super().__init__()
        if into not in ("columns", "meta"):
            raise ValueError(f"into must be 'columns' or 'meta', got {into!r}")
        self.models = {
            lang: m if isinstance(m, QualityModel) else QualityModel.in_folder(m, lang) for lang, m in models.items()
        }
        for model in self.models.values():
            model.check()
        self.into = into
        self.drop_without_model = drop_without_model
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loaded"] = {}
        return state

    def _model(self, language: str | None) -> tuple[Any, Any] | None:
        if language not in self.models:
            return None
        if language not in self._loaded:
            import kenlm
            import sentencepiece as spm

            model = self.models[language]
            self._loaded[language] = (
                # One thread: a Ray worker owns one core; more would oversubscribe the machine.
                spm.SentencePieceProcessor(model_file=model.sentencepiece, num_threads=1),
                kenlm.Model(model.kenlm),
            )
        return self._loaded[language]

    def perplexity(self, text: str, language: str) -> float | None:
        """The document perplexity of ``text`` under ``language``'s model (None: nothing to score)."""
        loaded = self._model(language)
        if loaded is None:
            raise KeyError(f"no quality model for language {language!r}")
        return _perplexities([text], *loaded)[0]

    def apply_batch(self, docs: Sequence[Document]) -> list[Document | Drop]:
        # One SentencePiece call per language for all lines of the batch: far fewer Python calls.
        by_language: dict[str | None, list[int]] = {}
        for position, doc in enumerate(docs):
            by_language.setdefault(doc.meta.get("language"), []).append(position)
        results: list[Document | Drop] = list(docs)
        for language, positions in by_language.items():
            loaded = self._model(language)
            if loaded is None:
                for position in positions:
                    results[position] = (
                        self.drop("no_model") if self.drop_without_model else self._mark(docs[position], None)
                    )
                continue
            values = _perplexities([docs[p].text for p in positions], *loaded)
            for position, value in zip(positions, values):
                results[position] = self._mark(docs[position], value)
        return results

    def _mark(self, doc: Document, value: float | None) -> Document:
        if self.into == "columns":
            doc.columns[PERPLEXITY] = value
        else:
            doc.meta[PERPLEXITY] = value
        return doc


def _perplexities(texts: Sequence[str], sp: Any, lm: Any) -> list[float | None]:
    """CCNet's document perplexity of each text; None where no line is left after normalisation."""
    lines: list[str] = []
    owners: list[int] = []
    for index, text in enumerate(texts):
        for line in text.splitlines():
            normalized = normalize(line)
            if normalized:
                lines.append(normalized)
                owners.append(index)
    log10_sums = [0.0] * len(texts)
    lengths = [0] * len(texts)
    for owner, pieces in zip(owners, sp.encode(lines, out_type=str)):
        log10_sums[owner] += lm.score(" ".join(pieces), bos=True, eos=True)
        lengths[owner] += len(pieces) + 1
    return [10.0 ** (-total / length) if length else None for total, length in zip(log10_sums, lengths)]


# ---------------------------------------------------------------------------------------------
# Buckets


def perplexity_of(doc: Document) -> float | None:
    value = doc.columns.get(PERPLEXITY)
    return value if value is not None else doc.meta.get(PERPLEXITY)


def bucket_of(perplexity: float | None, cutoffs: Mapping[str, float] | None) -> str:
    if perplexity is None or cutoffs is None or math.isnan(perplexity):
        return UNSCORED
    if perplexity < cutoffs["p30"]:
        return HEAD
    if perplexity < cutoffs["p60"]:
        return MIDDLE
    return TAIL


class QualityBucketFilter(Step):
    """Puts each document in its language's bucket (``doc.meta["bucket"]``) and keeps ``keep``.

    The LLaMA recipe keeps head and middle. Others are dropped as ``quality:<bucket>``. Documents
    without a perplexity or in a language without cutoffs are bucket ``all`` and kept unless
    ``keep_unscored`` is False (``quality:unscored``).
    """

    name = "quality"

    def __init__(
        self,
        cutoffs: Mapping[str, Mapping[str, float]] | str | os.PathLike[str],
        keep: Sequence[str] = (HEAD, MIDDLE),
        keep_unscored: bool = True,
    ) -> None:
        super().__init__()
        from_file = isinstance(cutoffs, (str, os.PathLike))
        self.cutoffs = load_cutoffs(cutoffs) if from_file else _checked(cutoffs, "cutoffs")
        unknown = set(keep) - {HEAD, MIDDLE, TAIL}
        if unknown:
            raise ValueError(f"unknown buckets to keep: {sorted(unknown)} (buckets: head, middle, tail)")
        self.keep = frozenset(keep)
        self.keep_unscored = keep_unscored

    def apply(self, doc: Document) -> Document | Drop:
        bucket = bucket_of(perplexity_of(doc), self.cutoffs.get(doc.meta.get("language")))
        doc.meta[BUCKET] = bucket
        if bucket == UNSCORED:
            return doc if self.keep_unscored else self.drop("unscored")
        return doc if bucket in self.keep else self.drop(bucket)


def load_cutoffs(path: str | os.PathLike[str]) -> dict[str, dict[str, float]]:
    location = resolve(path)
    try:
        payload = location.read_json()
    except FileNotFoundError:
        raise FileNotFoundError(f"cutoff file not found: {location.uri}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{location.uri}: not JSON: {exc}") from None
    return _checked(payload, location.uri)


def _checked(payload: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(payload, Mapping):
        raise ValueError(f"{where}: expected {{language: {{p30, p60}}}}, got {type(payload).__name__}")
    cutoffs: dict[str, dict[str, float]] = {}
    for language, values in payload.items():
        try:
            p30, p60 = float(values["p30"]), float(values["p60"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{where}: language {language!r} needs numeric p30 and p60, got {values!r}") from None
        if not 0 < p30 <= p60:
            raise ValueError(f"{where}: language {language!r}: need 0 < p30 <= p60, got {p30}, {p60}")
        cutoffs[language] = {"p30": p30, "p60": p60}
    return cutoffs


def perplexity_cutoffs(
    stage_dir: Location, sources: Sequence[str] | None = None, percentiles: Sequence[int] = (30, 60)
) -> dict[str, dict[str, float]]:
    """Exact per-language percentiles of the perplexities of a scored stage.

    Streams the ``perplexity`` and ``meta`` columns part by part and keeps 8 bytes per scored
    document. Percentiles interpolate linearly between the nearest ranks (numpy's default).
    """
    values: dict[str, array] = {}
    for unit in units_from_stage(stage_dir, sources):
        with resolve(unit.input.uri).open_random_access() as f:
            parquet = pq.ParquetFile(f)
            if PERPLEXITY not in parquet.schema_arrow.names:
                raise ValueError(f"{unit.input.uri}: no {PERPLEXITY} column: not a scored stage")
            for batch in parquet.iter_batches(columns=[PERPLEXITY, "meta"]):
                for perplexity, meta in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if perplexity is None:
                        continue
                    language = json.loads(meta).get("language")
                    values.setdefault(language, array("d")).append(perplexity)
    return {
        language: {f"p{p}": float(v) for p, v in zip(percentiles, np.percentile(np.frombuffer(found), percentiles))}
        for language, found in sorted(values.items(), key=lambda item: str(item[0]))
        if language
    }


def write_cutoffs(path: str | os.PathLike[str], cutoffs: Mapping[str, Mapping[str, float]]) -> None:
    write_json_atomic(resolve(path), {lang: dict(v) for lang, v in _checked(cutoffs, str(path)).items()})

