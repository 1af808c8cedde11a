"""The sampling stage: K answers to every prompt of some prompt sets, from one or several models.

`sample_stage` reads the prompt sets (`tasks.dialogues.prompts`; a bad line is refused, naming
its file and line), encodes each prompt as Llama 2's chat format gives it (`encode_prompt`),
skips with the reason ``too_long`` a prompt that leaves no room for ``max_new_tokens`` and the
closing EOS in the context of the shortest-context model of the pool (as
`modeling.chat_eval.prompts_that_fit` does), and cuts the rest, in prompt-set order, into parts of
``prompts_per_part`` prompts. With several models (a pool: rejection sampling's "all earlier
models") every prompt gets ``samples_per_prompt`` samples from EACH model, so a pool of M models
gives M x K candidates per prompt; the caller picks the best over all of them.

The unit of work is a part and a model: its file ``part-PPPPP-model-M.parquet`` (columns
:data:`COLUMNS`: prompt_id, messages as JSON, unsafe, model, sample, answer, answer_ids,
finished) and its receipt under ``_receipts/`` (written last: the completion marker), through the
one stage executor (`tasks.executor.run_marked`; the stage's ``_SUCCESS`` comes after
``_manifest.json``). A killed run redoes only the units without a receipt. Each unit samples
with a seed derived from ``config.seed``, the part's index and the model's label, so a unit
redone writes the same bytes whatever the number of actors or the units run before it. The
stage's fingerprint covers every config field that decides an output (all but ``actors``) and
the bytes of every prompt set, model folder and the tokenizer.

The manifest reconciles: ``prompts_read = prompts_sampled + sum(prompts_skipped)`` and
``samples = prompts_sampled x K x models``; it also counts answers, answer tokens and answers
finished (ended with EOS) per model, and generation seconds and tokens/s per worker (summed over
the units, each timed where it ran).

The units run on Ray actors (`tasks.executor.run_on_actors`), ``actors`` per model, each loading
its model once (onto a GPU of its own with ``gpus_per_actor``) and serving units of that model. A model answers through a
:class:`GenerationBackend`; ours is :class:`LlamaBackend` (`modeling.generate`: batched
KV-cache decoding of like-length prompts). A vLLM engine would plug in as another backend: its
``generate`` would hand the prompt ids to ``LLM.generate`` as token prompts with
``SamplingParams(n=1, temperature, top_p, max_tokens=max_new_tokens, stop_token_ids,
seed=<derived per row from seed>)`` and return each output's ``token_ids``, with the actor
reserving a GPU (``num_gpus``) and loading the HF export once. vLLM's batching makes its samples
differ from ours for the same seed, so its runs are reproducible against themselves only; it is
not built here (no GPU to test it on). `sample_stage` also takes ``backends`` to run the units in
this process, which is how such an engine, or a test, serves without Ray.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from modeling.chat_eval import answer_text, prompts_that_fit
from modeling.checkpoints import config_from_hf
from modeling.configs import ModelConfig
from modeling.generate import Sampling, generate
from modeling.llama import Llama
from modeling.model_folders import HF_CONFIG, ModelCheckpoint, folder_checkpoints, load_model
from tasks.dialogues.prompts import ChatPrompt, read_prompts
from tasks.dialogues.records import Message
from tasks.executor import WHOLE_STAGE, finished_receipt, fingerprint, read_marker, run_marked, run_on_actors
from tasks.shards import MANIFEST, RECEIPTS
from tasks.storage import Location, atomic_output, resolve, sha256_of, write_json_atomic
from tasks.tokenizer import Tokenizer
from tasks.version import code_version

FORMAT_VERSION = 1
TOO_LONG = "too_long"
UNIT_PREFIX = "part-"
COLUMNS = pa.schema([
    pa.field("prompt_id", pa.string(), nullable=False),
    pa.field("messages", pa.string(), nullable=False),  # JSON: [{"role": ..., "content": ...}, ...]
    pa.field("unsafe", pa.bool_(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),
    pa.field("answer", pa.string(), nullable=False),
    pa.field("answer_ids", pa.list_(pa.int32()), nullable=False),
    pa.field("finished", pa.bool_(), nullable=False),
])


class GenerationBackend(Protocol):
    """What answers prompts: new ids for each prompt, a row ending after its first stop token
    (kept) or at max_new_tokens; the same seed gives the same ids."""

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, sampling: Sampling,
                 seed: int, stop_tokens: Sequence[int]) -> list[list[int]]: ...


class LlamaBackend:
    """`modeling.generate` on our Llama: prompts sorted by length (stably) into batches of
    ``batch_size``, so a batch pads little; the batch number b samples with seed ``seed + b``.
    vocab_size: only ids the tokenizer has are drawn (see `generate`)."""

    def __init__(self, model: Llama, *, batch_size: int = 16, vocab_size: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.batch_size = batch_size
        self.vocab_size = vocab_size

    def generate(self, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, sampling: Sampling,
                 seed: int, stop_tokens: Sequence[int]) -> list[list[int]]:
        order = sorted(range(len(prompt_ids)), key=lambda n: len(prompt_ids[n]))
        outputs: list[list[int]] = [[] for _ in prompt_ids]
        for batch, start in enumerate(range(0, len(order), self.batch_size)):
            rows = order[start:start + self.batch_size]
            answers = generate(self.model, [prompt_ids[n] for n in rows], max_new_tokens=max_new_tokens,
                               sampling=sampling, stop_tokens=stop_tokens, seed=seed + batch,
                               vocab_size=self.vocab_size)
            for n, answer in zip(rows, answers):
                outputs[n] = answer
        return outputs


class SamplingConfig(BaseModel):
    """One sampling run; every field is checked here, before anything is read or loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1, description="Model folders (HF or run folders); several are a pool")
    samples_per_prompt: int = Field(ge=1, description="K: samples of each prompt from each model of the pool")
    max_new_tokens: int = Field(ge=1)
    temperature: float = Field(1.0, ge=0, description="0 is greedy; rejection sampling uses 1.2-1.3")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0)
    prompts_per_part: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1, description="Prompts a generate call")
    actors: int = Field(1, ge=1, description="Ray actors per model, each loading its model once")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs an actor holds (its model then runs on the GPU); 0: CPU")
    tokenizer: str | None = Field(None, description="tokenizer.model; default: the first model's")

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"a model is named twice in {models}")
        return models

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p)

    def decides_output(self) -> dict[str, Any]:
        """The fields in the fingerprint: all but how many actors serve (units are seeded alone)."""
        return self.model_dump(exclude={"actors"})


@dataclass(frozen=True)
class Sample:
    prompt_id: str  # the prompt's "file:line"
    messages: tuple[Message, ...]
    unsafe: bool  # the prompt set's "unsafe" tag
    model: str  # label of the model that sampled it
    sample: int  # 0..K-1
    answer: str  # decoded, EOS removed
    answer_ids: list[int]  # the closing EOS included when it came
    finished: bool  # ended with EOS, not cut by max_new_tokens


@dataclass(frozen=True)
class UnitJob:
    """One part's prompts to be answered by one model: everything the unit's output depends on."""

    stage_dir: str
    part: int
    model_index: int
    model: str  # label
    prompts: tuple[tuple[str, str, bool, tuple[int, ...]], ...]  # (prompt_id, messages JSON, unsafe, ids)
    samples_per_prompt: int
    max_new_tokens: int
    sampling: Sampling
    seed: int
    fingerprint: str

    @property
    def name(self) -> str:
        return unit_name(self.part, self.model_index)


def unit_name(part: int, model_index: int) -> str:
    return f"{UNIT_PREFIX}{part:05d}-model-{model_index}"


def unit_seed(seed: int, part: int, label: str) -> int:
    """A 63-bit seed of (seed, part, model): independent of the order and place units run in."""
    digest = hashlib.sha256(json.dumps([seed, part, label]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def sample_unit(backend: GenerationBackend, tokenizer: Tokenizer, job: UnitJob) -> dict[str, Any]:
    """Answer the unit's prompts K times each and write its part file, then its receipt; a unit
    already finished with this fingerprint is not redone. Returns the receipt."""
    stage = resolve(job.stage_dir)
    receipt_at = stage.join(RECEIPTS, f"{job.name}.json")
    done = finished_receipt(receipt_at, job.fingerprint)
    if done is not None:
        return done
    k = job.samples_per_prompt
    repeated = [list(ids) for *_, ids in job.prompts for _ in range(k)]
    started = time.perf_counter()
    answers = backend.generate(repeated, max_new_tokens=job.max_new_tokens, sampling=job.sampling, seed=job.seed,
                               stop_tokens=[tokenizer.eos_id])
    seconds = time.perf_counter() - started
    columns: dict[str, list] = {field.name: [] for field in COLUMNS}
    for n, ((prompt_id, messages, unsafe, _), ids) in enumerate(zip((p for p in job.prompts for _ in range(k)),
                                                                     answers)):
        finished = bool(ids) and ids[-1] == tokenizer.eos_id
        for name, value in (("prompt_id", prompt_id), ("messages", messages), ("unsafe", unsafe),
                            ("model", job.model), ("sample", n % k), ("answer", answer_text(tokenizer, ids)),
                            ("answer_ids", ids), ("finished", finished)):
            columns[name].append(value)
    target = stage.join(f"{job.name}.parquet")
    with atomic_output(target) as stream:
        pq.write_table(pa.table(columns, schema=COLUMNS), stream, compression="zstd")
    receipt = {"fingerprint": job.fingerprint, "part": job.part, "model": job.model, "path": target.name,
               "prompts": len(job.prompts), "samples": len(answers), "answer_tokens": sum(map(len, answers)),
               "finished": sum(columns["finished"]), "generation_seconds": round(seconds, 6),
               "bytes": target.size(), "sha256": sha256_of(target)}
    write_json_atomic(receipt_at, receipt)
    return receipt


class SamplingWorker:
    """A Ray actor's state: one model and the tokenizer, loaded once, serving that model's units."""

    def __init__(self, folder: str, tokenizer: str, batch_size: int, device: str = "cpu"):
        self.tokenizer = Tokenizer.load(tokenizer)
        self.backend = LlamaBackend(load_model(folder, device=device), batch_size=batch_size,
                                    vocab_size=self.tokenizer.vocab_size)

    def sample(self, job: UnitJob) -> dict[str, Any]:
        return sample_unit(self.backend, self.tokenizer, job)


def _model_checkpoints(config: SamplingConfig) -> list[ModelCheckpoint]:
    first = folder_checkpoints(config.models[0], tokenizer=config.tokenizer)[0]
    tokenizer = str(first.tokenizer)
    checkpoints = [first, *(folder_checkpoints(m, tokenizer=tokenizer)[0] for m in config.models[1:])]
    labels = [c.label for c in checkpoints]
    if len(set(labels)) != len(labels):
        raise ValueError(f"the models' labels (their folder names) must differ, got {labels}")
    for checkpoint in checkpoints:
        if not (checkpoint.weights / HF_CONFIG).is_file():
            raise ValueError(f"{checkpoint.weights}: sampling reads Hugging Face or run folders (no {HF_CONFIG})")
    return checkpoints


def _shape(checkpoint: ModelCheckpoint) -> ModelConfig:
    config_file = checkpoint.weights / HF_CONFIG
    return config_from_hf(json.loads(config_file.read_text()), source=config_file)


def _folder_sha256(folder: Path) -> dict[str, str]:
    return {f.name: sha256_of(resolve(f)) for f in sorted(folder.iterdir()) if f.is_file()}


def sample_stage(prompt_sets: Sequence[str], config: SamplingConfig, stage_dir: str, *,
                 backends: Mapping[str, GenerationBackend] | None = None) -> dict[str, Any]:
    """Sample the prompt sets into `stage_dir` (see the module docstring); returns the manifest.

    backends: model label -> backend to run the units in this process instead of on Ray actors
    (every model of the pool must have one); with LlamaBackends of ``config.batch_size`` the stage's
    bytes are those the actors write. A given backend batches as it was made to.
    """
    if not prompt_sets or len(set(map(str, prompt_sets))) != len(prompt_sets):
        raise ValueError(f"sampling needs one or more distinct prompt sets, got {list(prompt_sets)}")
    checkpoints = _model_checkpoints(config)
    labels = [c.label for c in checkpoints]
    if backends is not None and set(backends) != set(labels):
        raise ValueError(f"backends are given for {sorted(backends)}, the pool is {labels}")
    tokenizer_file = str(checkpoints[0].tokenizer)
    tokenizer = Tokenizer.load(tokenizer_file)
    shapes = [_shape(c) for c in checkpoints]
    for checkpoint, shape in zip(checkpoints, shapes):
        if tokenizer.vocab_size > shape.vocab_size:
            raise ValueError(f"{tokenizer_file}: {tokenizer.vocab_size} tokens do not fit the vocabulary of "
                             f"{checkpoint.weights} ({shape.vocab_size})")
    prompts: list[ChatPrompt] = [p for path in prompt_sets for p in read_prompts(path, "refuse")[0]]
    context = min(shape.max_seq_len for shape in shapes)
    kept, ids, too_long = prompts_that_fit(tokenizer, prompts, context, config.max_new_tokens, "skip")
    stage = resolve(stage_dir)
    payload = {
        "format": FORMAT_VERSION,
        "config": config.decides_output(),
        "prompt_sets": [[str(path), sha256_of(resolve(path))] for path in prompt_sets],
        "models": [[c.label, _folder_sha256(c.weights)] for c in checkpoints],
        "tokenizer_sha256": sha256_of(resolve(tokenizer_file)),
    }
    stage_fingerprint = fingerprint(payload)
    size = config.prompts_per_part
    parts = [list(zip(kept[s:s + size], ids[s:s + size])) for s in range(0, len(kept), size)]
    jobs = [UnitJob(stage.uri, part, m, label,
                    tuple((p.where, json.dumps(p.as_dicts(), ensure_ascii=False), p.unsafe, tuple(i)) for p, i in chunk),
                    config.samples_per_prompt, config.max_new_tokens, config.sampling(),
                    unit_seed(config.seed, part, label), fingerprint([stage_fingerprint, part, label]))
            for part, chunk in enumerate(parts) for m, label in enumerate(labels)]

    def run_units() -> dict[str, Any]:
        _remove_other_units(stage, {job.name for job in jobs})
        receipts: dict[str, dict[str, Any]] = {}
        todo = []
        for job in jobs:
            done = finished_receipt(stage.join(RECEIPTS, f"{job.name}.json"), job.fingerprint)
            if done is None:
                todo.append(job)
            else:
                receipts[job.name] = done
        if backends is not None:
            for job in todo:
                receipts[job.name] = sample_unit(backends[job.model], tokenizer, job)
        elif todo:
            device = "cuda" if config.gpus_per_actor else "cpu"
            pools = {c.label: (str(c.weights), tokenizer_file, config.batch_size, device) for c in checkpoints}
            results = run_on_actors(SamplingWorker, pools, [(job.model, (job,)) for job in todo], method="sample",
                                    actors_per_pool=config.actors, num_gpus=config.gpus_per_actor,
                                    label=f"sampling {stage.name}")
            receipts.update({job.name: receipt for job, receipt in zip(todo, results)})
        manifest = _manifest(config, payload, stage_fingerprint, prompts, kept, too_long,
                             [receipts[job.name] for job in jobs], labels)
        write_json_atomic(stage.join(MANIFEST), manifest)
        return manifest

    return run_marked(stage, {WHOLE_STAGE: stage_fingerprint}, run_units,
                      reuse=lambda: stage.join(MANIFEST).read_json())


def _remove_other_units(stage: Location, planned: set[str]) -> None:
    """The files and receipts of units an earlier run planned and this one does not (it cut other
    parts): left, they would look like part of the stage."""
    for folder, suffix in ((stage, ".parquet"), (stage.join(RECEIPTS), ".json")):
        if folder.exists():
            for file in folder.fs.get_file_info(pafs.FileSelector(folder.path)):
                name = file.base_name
                if name.startswith(UNIT_PREFIX) and name.endswith(suffix) and name.removesuffix(suffix) not in planned:
                    folder.join(name).delete()


def _manifest(config: SamplingConfig, payload: dict[str, Any], stage_fingerprint: str, prompts: list[ChatPrompt],
              kept: list[ChatPrompt], too_long: list, receipts: list[dict[str, Any]],
              labels: list[str]) -> dict[str, Any]:
    per_model = {label: {"samples": 0, "answer_tokens": 0, "finished": 0, "generation_seconds": 0.0}
                 for label in labels}
    for receipt in receipts:
        totals = per_model[receipt["model"]]
        for name in totals:
            totals[name] += receipt[name]
    samples = sum(r["samples"] for r in receipts)
    answer_tokens = sum(r["answer_tokens"] for r in receipts)
    seconds = sum(r["generation_seconds"] for r in receipts)
    if len(prompts) != len(kept) + len(too_long) or samples != len(kept) * config.samples_per_prompt * len(labels):
        raise RuntimeError(f"sampling counts do not reconcile: {len(prompts)} prompts read, {len(kept)} sampled, "
                           f"{len(too_long)} skipped, {samples} samples")
    for totals in per_model.values():
        totals["tokens_per_second"] = totals["answer_tokens"] / totals["generation_seconds"] \
            if totals["generation_seconds"] else None
    return {
        "stage": "sampling",
        "fingerprint": stage_fingerprint,
        "code_version": code_version(),
        "config": config.model_dump(),
        "inputs": payload,
        "models": labels,
        "prompts_read": len(prompts),
        "prompts_sampled": len(kept),
        "prompts_skipped": {TOO_LONG: len(too_long)} if too_long else {},
        "skipped": [{"prompt_id": p.where, "reason": TOO_LONG, "detail": p.error} for p in too_long],
        "unsafe_prompts": sum(p.unsafe for p in kept),
        "samples": samples,
        "answer_tokens": answer_tokens,
        "finished": sum(r["finished"] for r in receipts),
        "generation_seconds": seconds,
        "tokens_per_second": answer_tokens / seconds if seconds else None,
        "per_model": per_model,
        "parts": [{k: r[k] for k in ("part", "model", "path", "prompts", "samples", "answer_tokens", "finished",
                                     "bytes", "sha256")} for r in receipts],
    }


def read_samples(stage_dir: str) -> Iterator[Sample]:
    """A finished stage's samples in stage order: by part, then prompt, then model, then sample."""
    stage = resolve(stage_dir)
    manifest = sample_manifest(stage)
    by_part: dict[int, list[dict[str, Any]]] = {}
    for unit in manifest["parts"]:
        by_part.setdefault(unit["part"], []).append(unit)
    k = manifest["config"]["samples_per_prompt"]
    for part in sorted(by_part):
        tables = [pq.read_table(stage.join(u["path"]).open_random_access()).to_pylist() for u in by_part[part]]
        for start in range(0, len(tables[0]), k):
            for rows in tables:
                for row in rows[start:start + k]:
                    messages = tuple(Message(m["role"], m["content"]) for m in json.loads(row["messages"]))
                    yield Sample(**{**row, "messages": messages})


def sample_manifest(stage: str | Location) -> dict[str, Any]:
    """A finished sampling stage's manifest (its `fingerprint` names what it was made from)."""
    stage = resolve(stage) if isinstance(stage, str) else stage
    if not read_marker(stage).fingerprints or not stage.join(MANIFEST).exists():
        raise FileNotFoundError(f"{stage.uri}: not a finished sampling stage (no _SUCCESS or {MANIFEST})")
    return stage.join(MANIFEST).read_json()
