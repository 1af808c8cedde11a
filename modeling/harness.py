"""Our model in EleutherAI's lm-evaluation-harness: the `llamaline` model of `lm_eval --model`.

    lm_eval --model llamaline --model_args checkpoint=<folder>[,tokenizer=<tokenizer.model>]
        [,max_seq_len=N][,dtype=float32][,seed=S] --tasks ...

checkpoint: a Hugging Face folder written by `modeling.checkpoints.save_hf`, a Meta folder
(params.json + consolidated.NN.pth; max_seq_len is then required, Meta's files do not hold it), or a
pretraining run folder with its hf/ export (`modeling.sft.base_model_folder`). The tokenizer is
the folder's tokenizer.model unless given.

Requests are answered by our own code: log-likelihoods by `modeling.evaluate.score_spans`,
generations by `modeling.generate.generate` (KV cache; greedy unless the task samples, then from a
generator seeded by `seed`). Tokens are what `tasks.tokenizer.Tokenizer` gives, with BOS as LLaMA
was trained (add_bos_token=false leaves it out). lm-eval 0.4.13's `hf` model on our exported
folder scores log-likelihoods without BOS (it decodes BOS to "" and takes every string to start
with it), so `add_bos_token=false` is what reproduces its scores; it also stops generating at once
there (the EOS it adds to the stop strings decodes to ""), so generations are compared with
transformers' own `generate` instead (tests/modeling/test_harness.py). Context and continuation are split, empty contexts filled and long documents cut
into rolling windows by lm-eval's own TemplateLM and utilities, as for its other models.

Discovery: importing this module registers the model (`lm_eval.api.registry.register_model`), and
pyproject.toml advertises it in the entry-point group ``lm_eval.models``, which lm-eval reads from
the release after 0.4.13 on (EleutherAI/lm-evaluation-harness#4013). lm-eval 0.4.13, the pinned
one, reads no entry points, so the `llamaline-lm-eval` command (:func:`main`, lm-eval's own CLI
and arguments) registers every model advertised in that group first.
"""

from __future__ import annotations

import importlib
import json
from importlib import metadata
from pathlib import Path

import torch
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model

from modeling.evaluate import score_spans
from modeling.generate import GREEDY, Sampling, generate
from modeling.model_folders import load_model
from modeling.sft import base_model_folder
from tasks.benchmarks import cut_at_stop
from tasks.tokenizer import MODEL_FILE, Tokenizer

# lm-eval's own models ("hf", ...): get_model imports them only into an empty registry, and ours
# registering first would leave them out.
importlib.import_module("lm_eval.models")

ENTRY_POINT_GROUP = "lm_eval.models"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until tasks that set none


@register_model("llamaline")
class LlamalineLM(TemplateLM):
    def __init__(self, checkpoint: str, tokenizer: str | None = None, max_seq_len: int | None = None,
                 dtype: str = "float32", device: str = "cpu", batch_size: int | str = 16, seed: int = 1234,
                 add_bos_token: bool | str = True, max_batch_size: int | None = None) -> None:
        super().__init__()
        self.model = load_model(checkpoint, max_seq_len=None if max_seq_len is None else int(max_seq_len),
                                dtype=getattr(torch, dtype), device=device)
        tokenizer_file = Path(tokenizer) if tokenizer else base_model_folder(str(checkpoint)) / MODEL_FILE
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file}: no tokenizer; pass tokenizer=<path of tokenizer.model>")
        self.tokenizer = Tokenizer.load(tokenizer_file)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(f"{tokenizer_file}: {self.tokenizer.vocab_size} tokens do not fit the model's "
                             f"vocabulary of {self.model.config.vocab_size}")
        # "auto" asks HF models to probe memory; ours takes a fixed batch (max_batch_size caps it).
        size = int(batch_size) if str(batch_size).isdigit() else 16
        self.batch_size = min(size, int(max_batch_size)) if max_batch_size else size
        self.seed = int(seed)
        self.add_bos_token = str(add_bos_token).lower() not in ("false", "0")

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def max_length(self) -> int:
        return self.model.config.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, bos=bos)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        spans = []
        for _, context, continuation in requests:
            if len(continuation) > self.max_length:
                raise ValueError(f"a continuation of {len(continuation)} tokens exceeds the context of "
                                 f"{self.max_length}")
            # As lm-eval's hf model: the context cut on the left to fit, never the continuation.
            spans.append(((context + continuation)[-(self.max_length + 1):], len(continuation)))
        answers = []
        for (key, _, _), scored in zip(requests, score_spans(self.model, spans, self.batch_size)):
            answer = (float(scored.logprobs.sum()), bool(scored.greedy.all()))
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
            answers.append(answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        totals = []
        for request in requests:
            (text,) = request.args
            windows = lm_eval_utils.get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            pairs = [(None, *lm_eval_utils.make_disjoint_window(window)) for window in windows]
            total = sum(logprob for logprob, _ in self._loglikelihood_tokens(pairs))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        # Requests with the same generation settings share batches.
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(settings.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            room = self.max_length - max_new
            if room < 1:
                raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt in a {self.max_length}-token "
                                 f"context")
            sampling = self._sampling(settings)
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                prompts = [self.tok_encode(requests[i].args[0])[-room:] for i in batch]
                outputs = generate(self.model, prompts, max_new_tokens=max_new, sampling=sampling,
                                   stop_tokens=[self.eot_token_id], seed=self.seed + start,
                                   pad_token=self.eot_token_id, vocab_size=self.tokenizer.vocab_size)
                for i, ids in zip(batch, outputs):
                    results[i] = cut_at_stop(self.tokenizer.decode(ids), until)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results

    @staticmethod
    def _sampling(settings: dict) -> Sampling:
        temperature = float(settings.get("temperature", 0.0))
        if not settings.get("do_sample", temperature > 0) or temperature == 0:
            return GREEDY
        return Sampling(temperature=temperature, top_k=settings.get("top_k"), top_p=settings.get("top_p"))


def register_entry_point_models() -> list[str]:
    """Register in lm-eval every model an installed package advertises in ``lm_eval.models``
    (lazily: a model's module is imported when it is asked for); returns their names."""
    names = []
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in model_registry:
            model_registry.register(entry_point.name, target=entry_point)
        names.append(entry_point.name)
    return names


def main() -> None:
    """`llamaline-lm-eval`: lm-eval's command line, with the entry-point models registered."""
    from lm_eval.__main__ import cli_evaluate

    register_entry_point_models()
    cli_evaluate()
