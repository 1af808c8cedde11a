"""Evaluation of a model: perplexity on token and document stages, benchmarks from local files.

Perplexity
    :func:`token_stage_perplexity` scores the rows of a packed token stage as training sees them
    (targets shifted by one, attention kept within each packed document). :func:`document_perplexity`
    scores the documents of a document stage per source, each `<s> text </s>` as it is packed for
    training. A document longer than the context is scored by rolling windows: every token once,
    `stride` new tokens a window, each window filled with as much left context as fits. Stride 1
    gives every token the full context (one forward per token); the default, the context length,
    gives disjoint windows (lm-eval's loglikelihood_rolling); in between, each token has at least
    `context - stride` tokens before it. Reported: mean negative log-likelihood per token, its
    perplexity, and bits per UTF-8 byte (comparable across tokenizers).

Benchmarks (`tasks.benchmarks` tasks)
    multiple_choice: each choice scored by the log-likelihood of `" " + choice` after the prompt;
    `acc` takes the most likely choice, `acc_norm` the most likely per character (lm-eval's acc and
    acc_norm). qa: greedy answers cut at the first stop string, exact match after normalising.
    math: k answers sampled from a seeded generator, the majority of their final numbers
    (`maj_at_k`) and the share of single samples right (`sample_accuracy`).

A prompt that does not fit the context (with its longest answer, or with the tokens to generate)
is a problem with the record's file and line: the run is refused, or the record skipped and listed
(`policy`), never silently truncated.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from modeling.generate import GREEDY, Sampling, generate
from modeling.llama import IGNORE_INDEX, Llama
from modeling.objectives import batch_of_rows, read_token_manifest
from tasks.benchmarks import (
    MATH_STOP, QA_STOP, BadInput, Policy, RecordProblem, Task, cut_at_stop, exact_match, parse_number, report_problem,
)
from tasks.shards import read_part
from tasks.stage import ShardUnit, units_from_stage
from tasks.storage import resolve
from tasks.tokenizer import Tokenizer
from tasks.token_reader import TokenReader


@dataclass(frozen=True)
class ScoredSpan:
    """Log-probabilities of the last tokens of a token sequence, each given all tokens before it."""

    logprobs: np.ndarray  # (n,) float64, natural log
    greedy: np.ndarray  # (n,) bool: the token was the model's most likely one


@torch.inference_mode()
def score_spans(model: Llama, spans: Sequence[tuple[Sequence[int], int]], batch_size: int = 16) -> list[ScoredSpan]:
    """For each (tokens, n): the last n tokens scored, tokens[:-1] the model's input.

    Under causal attention a position's logits depend only on the tokens up to it, so a span whose
    input is another's, or a prefix of it, is read from that one's forward: one forward per input
    no other extends (the one-token choices of a question share their prompt's; lm-eval's hf model
    shares identical inputs likewise). Those inputs are batched longest first and right-padded:
    padding after a row's tokens changes nothing before them.
    """
    limit = model.config.max_seq_len
    for tokens, n in spans:
        if not 1 <= n < len(tokens) or len(tokens) - 1 > limit:
            raise ValueError(f"a span of {len(tokens)} tokens scoring {n} does not fit a {limit}-token context")
    device = model.tok_embeddings.weight.device
    hosted = defaultdict(list)  # a forward's input -> the spans read from it
    host = hosts_of_inputs({tuple(tokens[:-1]) for tokens, _ in spans})
    for i, (tokens, _) in enumerate(spans):
        hosted[host[tuple(tokens[:-1])]].append(i)
    forwards = sorted(hosted, key=len, reverse=True)
    scored: list[ScoredSpan | None] = [None] * len(spans)
    for start in range(0, len(forwards), batch_size):
        batch = forwards[start:start + batch_size]
        inputs = torch.zeros((len(batch), len(batch[0])), dtype=torch.long)
        for row, forward_input in enumerate(batch):
            inputs[row, :len(forward_input)] = torch.tensor(forward_input)
        logits = model(inputs.to(device)).logits
        for row, forward_input in enumerate(batch):
            for i in hosted[forward_input]:
                tokens, n = spans[i]
                targets = torch.tensor(tokens[len(tokens) - n:], device=device)
                # Only the scored positions go through log_softmax: (n, V), not (T, V) per row.
                row_logits = logits[row, len(tokens) - 1 - n:len(tokens) - 1].float()
                logprobs = row_logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
                greedy = row_logits.argmax(-1) == targets
                scored[i] = ScoredSpan(logprobs.double().cpu().numpy(), greedy.cpu().numpy())
    return scored


def hosts_of_inputs(inputs: Iterable[tuple[int, ...]]) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each input's host: itself, or an input that extends it and that no other input extends."""
    ordered = sorted(inputs)
    host: dict[tuple[int, ...], tuple[int, ...]] = {}
    # In sorted order the inputs extending one come right after it, so the next input extends it or none does.
    for current, following in zip(reversed(ordered), [None, *reversed(ordered)]):
        extended = following is not None and following[:len(current)] == current
        host[current] = host[following] if extended else current
    return host


# ---------------------------------------------------------------------------------- perplexity


@dataclass
class Perplexity:
    tokens: int = 0  # tokens scored
    nll: float = 0.0  # their summed negative log-likelihood (nats)
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents' text

    def add(self, nll: float, tokens: int, documents: int = 0, text_bytes: int = 0) -> None:
        self.nll += nll
        self.tokens += tokens
        self.documents += documents
        self.bytes += text_bytes

    def report(self) -> dict:
        loss = self.nll / self.tokens if self.tokens else float("nan")
        report = {"tokens": self.tokens, "loss": loss, "perplexity": math.exp(loss)}
        if self.documents:
            report |= {"documents": self.documents, "bytes": self.bytes,
                       "bits_per_byte": self.nll / math.log(2) / self.bytes if self.bytes else float("nan")}
        return report


@torch.inference_mode()
def token_stage_perplexity(model: Llama, stage_dir: str, *, max_rows: int | None = None, batch_rows: int = 8,
                           document_masking: bool = True) -> dict:
    """Perplexity over the rows of a finished token stage (all of them, or the first `max_rows`
    in the reader's seeded order), each row as one training sequence."""
    vocab_size = read_token_manifest(stage_dir).get("vocab_size", 0)
    if vocab_size > model.config.vocab_size:
        raise ValueError(f"{stage_dir}: tokens of a {vocab_size}-token vocabulary do not fit the model's "
                         f"{model.config.vocab_size}")
    reader = TokenReader(stage_dir, rank=0, world_size=1, seed=0)
    rows = iter(reader)
    remaining = reader.rows_per_epoch if max_rows is None else min(max_rows, reader.rows_per_epoch)
    if reader.row_tokens - 1 > model.config.max_seq_len:
        raise ValueError(f"{stage_dir}: rows of {reader.row_tokens} tokens exceed the model's context "
                         f"{model.config.max_seq_len}")
    device = model.tok_embeddings.weight.device
    total = Perplexity()
    while remaining > 0:
        taken = [next(rows) for _ in range(min(batch_rows, remaining))]
        remaining -= len(taken)
        batch = batch_of_rows(taken, device, document_masking, answers_only=reader.has_loss_mask)
        logits = model(batch.inputs, doc_ids=batch.doc_ids, positions=batch.positions).logits
        nll = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                              reduction="sum")
        total.add(nll.item(), batch.loss_tokens)
    return {"stage": stage_dir, "rows": reader.rows_per_epoch if max_rows is None else min(max_rows, reader.rows_per_epoch),
            **total.report()}


def rolling_windows(n_tokens: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(start, end, scored) windows over a sequence of `n_tokens`: tokens[start:end] is a window
    whose last `scored` tokens are scored; every token after the first is scored exactly once."""
    stride = context if stride is None else stride
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in 1..{context} (the context), got {stride}")
    windows = []
    first = 1  # the first token (<s>) is given, never predicted
    while first < n_tokens:
        # The first window scores a whole context's worth; later ones `stride` tokens each.
        end = min(n_tokens, context + 1 if first == 1 else first + stride)
        windows.append((max(0, end - 1 - context), end, end - first))
        first = end
    return windows


def document_perplexity(model: Llama, tokenizer: Tokenizer, documents: str | Sequence[ShardUnit], *,
                        stride: int | None = None, max_documents: int | None = None, batch_size: int = 8) -> dict:
    """Perplexity per source (and over all) of a document stage's documents, or of the given parts.

    documents: a finished document stage's folder (every part in its manifest) or its units.
    max_documents: at most this many documents per source, in part order.
    """
    units = units_from_stage(resolve(documents)) if isinstance(documents, str) else list(documents)
    context = model.config.max_seq_len
    by_source: dict[str, Perplexity] = defaultdict(Perplexity)
    pending: list[tuple[str, list[int], int]] = []  # source, ids, bytes

    def flush() -> None:
        spans, owners = [], []
        for source, ids, _ in pending:
            for start, end, scored in rolling_windows(len(ids), context, stride):
                spans.append((ids[start:end], scored))
                owners.append(source)
        for source, span in zip(owners, score_spans(model, spans, batch_size)):
            by_source[source].add(-float(span.logprobs.sum()), len(span.logprobs))
        for source, _, text_bytes in pending:
            by_source[source].add(0.0, 0, documents=1, text_bytes=text_bytes)
        pending.clear()

    for unit in sorted(units, key=lambda u: (u.source, u.index)):
        if unit.input is None:
            raise ValueError(f"{unit.source} part {unit.index}: no part file to read")
        for doc in read_part(resolve(unit.input.uri)):
            seen = by_source[unit.source].documents + sum(1 for s, _, _ in pending if s == unit.source)
            if max_documents is not None and seen >= max_documents:
                break
            pending.append((unit.source, tokenizer.encode(doc.text, bos=True, eos=True), len(doc.text.encode())))
            if len(pending) >= batch_size:
                flush()
    flush()
    overall = Perplexity()
    for part in by_source.values():
        overall.add(part.nll, part.tokens, part.documents, part.bytes)
    return {"context": context, "stride": stride or context, **overall.report(),
            "sources": {source: by_source[source].report() for source in sorted(by_source)}}


# ---------------------------------------------------------------------------------- benchmarks


def split_continuation(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation as the model reads them together: the pair is encoded
    whole and split where the context's own encoding stops agreeing with it (a piece may span the
    boundary), so the continuation's ids are the ones its text gets after that context."""
    whole = tokenizer.encode(context + continuation, bos=True)
    alone = tokenizer.encode(context, bos=True)
    shared = 0
    while shared < min(len(whole), len(alone)) and whole[shared] == alone[shared]:
        shared += 1
    shared = min(shared, len(whole) - 1)  # at least one continuation token to score
    return whole[:shared], whole[shared:]


def evaluate_task(model: Llama, tokenizer: Tokenizer, task: Task, *, shots: int = 0, seed: int = 0,
                  policy: Policy = "refuse", batch_size: int = 16, max_new_tokens: int = 16, samples: int = 5,
                  sampling: Sampling = Sampling(temperature=0.7)) -> dict:
    """Score a task by its kind; the report lists its numbers and every skipped record's problem.

    samples, sampling: the k answers drawn per math question (greedy decoding is for qa).
    """
    if task.kind == "multiple_choice":
        scores, problems = _multiple_choice(model, tokenizer, task, shots, seed, policy, batch_size)
    elif task.kind == "qa":
        scores, problems = _qa(model, tokenizer, task, shots, seed, policy, batch_size, max_new_tokens)
    else:
        scores, problems = _math(model, tokenizer, task, shots, seed, policy, batch_size, max_new_tokens,
                                 samples, sampling)
    skipped = [str(p) for p in (*task.problems, *problems)]
    return {"task": task.name, "kind": task.kind, "shots": shots, "seed": seed, **scores, "skipped": skipped}


def _accuracy(hits: Sequence[bool], name: str) -> dict:
    if not hits:
        raise BadInput(f"no record left to score for {name}")
    p = sum(hits) / len(hits)
    stderr = math.sqrt(p * (1 - p) / (len(hits) - 1)) if len(hits) > 1 else float("nan")
    return {name: p, f"{name}_stderr": stderr}


def fits_context(prompt_tokens: int, answer_tokens: int, limit: int, where: str, policy: Policy,
                 problems: list[RecordProblem]) -> bool:
    """Whether the model's input (prompt, then the answer less its last token) fits its context."""
    if prompt_tokens + answer_tokens - 1 <= limit:
        return True
    report_problem(RecordProblem(where, f"prompt of {prompt_tokens} tokens + {answer_tokens} answer tokens exceeds "
                                        f"the model's context of {limit}"), policy, problems)
    return False


def _multiple_choice(model, tokenizer, task, shots, seed, policy, batch_size):
    problems: list[RecordProblem] = []
    kept, spans = [], []
    for i, record in enumerate(task.test):
        prompt = task.prompt(i, shots, seed)
        pairs = [split_continuation(tokenizer, prompt, " " + choice) for choice in record.choices]
        context, answer = max(pairs, key=lambda pair: len(pair[0]) + len(pair[1]))
        if not fits_context(len(context), len(answer), model.config.max_seq_len, record.where, policy, problems):
            continue
        kept.append(record)
        spans.extend((c + a, len(a)) for c, a in pairs)
    scored = iter(score_spans(model, spans, batch_size))
    hits, hits_norm = [], []
    for record in kept:
        logprobs = np.array([next(scored).logprobs.sum() for _ in record.choices])
        characters = np.array([len(" " + choice) for choice in record.choices])
        hits.append(int(logprobs.argmax()) == record.answer)
        hits_norm.append(int((logprobs / characters).argmax()) == record.answer)
    chance = float(np.mean([1 / len(r.choices) for r in kept])) if kept else float("nan")
    return {"records": len(kept), **_accuracy(hits, "acc"), **_accuracy(hits_norm, "acc_norm"), "chance": chance}, problems


def generate_in_batches(model: Llama, tokenizer: Tokenizer, prompts: Sequence[Sequence[int]], *, batch_size: int,
                        max_new_tokens: int, stop_tokens: Sequence[int], sampling: Sampling = GREEDY,
                        seed: int | None = None) -> list[list[int]]:
    """The new ids of each prompt (a stop token kept), `batch_size` prompts a `generate` call, only
    ids the tokenizer has drawn; the batch from prompt `start` on samples with seed `seed + start`."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += generate(model, prompts[start:start + batch_size], max_new_tokens=max_new_tokens,
                            sampling=sampling, stop_tokens=stop_tokens, seed=None if seed is None else seed + start,
                            pad_token=tokenizer.eos_id, vocab_size=tokenizer.vocab_size)
    return outputs


def _generations(model, tokenizer, prompts, batch_size, max_new_tokens, stop, sampling=GREEDY, seed=None):
    """Decoded answers cut at the first stop string; generation ends early at EOS, or at a newline
    when "\\n" is itself a stop string (a newline is always its own token in LLaMA's tokenizer)."""
    newline = tokenizer.encode("\n", bos=False)[-1:]
    stop_tokens = [tokenizer.eos_id, *(newline if "\n" in stop else [])]
    outputs = generate_in_batches(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                  stop_tokens=stop_tokens, sampling=sampling, seed=seed)
    return [cut_at_stop(tokenizer.decode(ids), stop) for ids in outputs]


def _prompts_that_fit(model, tokenizer, task, shots, seed, policy, max_new_tokens):
    problems: list[RecordProblem] = []
    kept, prompts = [], []
    for i, record in enumerate(task.test):
        ids = tokenizer.encode(task.prompt(i, shots, seed), bos=True)
        # generate wants room for the prompt and every new token (its cache holds them all).
        if fits_context(len(ids), max_new_tokens + 1, model.config.max_seq_len, record.where, policy, problems):
            kept.append(record)
            prompts.append(ids)
    return kept, prompts, problems


def _qa(model, tokenizer, task, shots, seed, policy, batch_size, max_new_tokens):
    kept, prompts, problems = _prompts_that_fit(model, tokenizer, task, shots, seed, policy, max_new_tokens)
    answers = _generations(model, tokenizer, prompts, batch_size, max_new_tokens, QA_STOP) if prompts else []
    hits = [exact_match(answer, record.answers) for record, answer in zip(kept, answers)]
    return {"records": len(kept), **_accuracy(hits, "exact_match")}, problems


def majority(values: Iterable[float | None]) -> float | None:
    """The most frequent value that is not None; a tie goes to the one seen first."""
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _math(model, tokenizer, task, shots, seed, policy, batch_size, max_new_tokens, samples, sampling):
    if samples < 1 or sampling.temperature == 0:
        raise ValueError(f"majority of k needs k >= 1 samples at a temperature > 0, got {samples}, {sampling}")
    kept, prompts, problems = _prompts_that_fit(model, tokenizer, task, shots, seed, policy, max_new_tokens)
    # Each prompt k times in a row: one batch draws all its samples from one seeded generator.
    repeated = [ids for ids in prompts for _ in range(samples)]
    texts = _generations(model, tokenizer, repeated, batch_size * samples, max_new_tokens, MATH_STOP,
                         sampling, seed) if repeated else []
    votes, singles = [], []
    for n, record in enumerate(kept):
        numbers = [parse_number(t) for t in texts[n * samples:(n + 1) * samples]]
        truth = parse_number(record.answer)
        votes.append(majority(numbers) == truth)
        singles.extend(number == truth for number in numbers)
    return {"records": len(kept), "samples": samples, **_accuracy(votes, "maj_at_k"),
            **_accuracy(singles, "sample_accuracy")}, problems
