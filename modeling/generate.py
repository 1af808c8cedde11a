"""Incremental decoding with a key/value cache: greedy, temperature, top-k and top-p sampling.

Prompts of different lengths are left-padded into one batch. Each row keeps its own rotary
positions (its first real token is position 0) and a mask hides its padding from every query, so a
row decodes exactly as it would alone. Sampling draws from a seeded `torch.Generator`: the same
seed gives the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from modeling.configs import ModelConfig
from modeling.llama import Llama


class KVCache:
    """Preallocated keys and values of every layer: (n_layers, B, K, max_len, Q) each."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device):
        shape = (config.n_layers, batch, config.n_kv_heads, max_len, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled, the same for every layer between forward calls

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store this call's (B, K, T, Q) keys/values after the cached ones; return all so far."""
        end = self.length + keys.shape[2]
        if end > self.keys.shape[3]:
            raise ValueError(f"KV cache holds {self.keys.shape[3]} positions, {end} needed")
        self.keys[layer, :, :, self.length : end] = keys
        self.values[layer, :, :, self.length : end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, n_tokens: int) -> None:
        self.length += n_tokens


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); top_k / top_p restrict sampling to the k most likely
    tokens / the smallest set whose probability reaches p (Holtzman et al. 2019)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


GREEDY = Sampling()


def next_tokens(logits: Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> Tensor:
    """(B, V) logits of the last position -> (B,) token ids."""
    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < logits.shape[-1]:
        kth_largest = logits.topk(sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely ones already reach top_p; the first is always kept.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= sampling.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: Sampling = GREEDY,
    stop_tokens: Iterable[int] = (),
    seed: int | None = None,
    pad_token: int = 0,
    vocab_size: int | None = None,
) -> list[list[int]]:
    """New tokens for each prompt; a row ends after its first stop token (kept) or max_new_tokens.

    seed: drawn through a torch.Generator of its own, so sampling is reproducible and leaves the
    global RNG alone (None: nondeterministic). pad_token only fills the left padding, never seen.
    vocab_size: only ids below it are drawn, for a model whose output layer is wider than its
    tokenizer's vocabulary (the demo's 32k head on a 400-piece tokenizer): an id past the
    tokenizer's is no text at all. None: the model's whole vocabulary.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt at least one token")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.max_seq_len:
        raise ValueError(
            f"prompt of {longest} tokens + {max_new_tokens} new exceeds max_seq_len {model.config.max_seq_len}"
        )
    device = model.tok_embeddings.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    stop_set = set(stop_tokens)
    stop = torch.tensor(sorted(stop_set), dtype=torch.long, device=device)

    B, P = len(prompts), longest
    tokens = torch.full((B, P), pad_token, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, P - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
    n_pad = torch.tensor([P - len(p) for p in prompts], device=device)  # (B,)
    total = P + max_new_tokens
    column = torch.arange(total, device=device)
    real_key = column[None, :] >= n_pad[:, None]  # (B, total): False on each row's left padding

    # Prefill: causal over real tokens. A padding query may see itself, so no row of scores is
    # all -inf (softmax would give NaN, and NaN keys poison later steps even when masked).
    causal = column[None, :P] <= column[:P, None]  # (P, P)
    prefill_mask = (causal[None] & real_key[:, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
    positions = (column[None, :P] - n_pad[:, None]).clamp(min=0)  # (B, P)
    cache = KVCache(model.config, B, total, dtype=model.tok_embeddings.weight.dtype, device=device)
    # Only the last position's logits are drawn from: the head runs on it alone (with a 32k
    # vocabulary, the head over every prompt position costs a tenth of a 64-token answer).
    hidden = model.final_hidden_states(tokens, positions=positions, attn_mask=prefill_mask[:, None], kv_cache=cache)
    logits = model.output(hidden[:, -1])

    out = torch.empty((B, max_new_tokens), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    next_position = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    for step in range(max_new_tokens):
        token = next_tokens(logits[:, :vocab_size], sampling, generator).masked_fill(finished, pad_token)
        out[:, step] = token
        finished |= torch.isin(token, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        mask = real_key[:, None, None, : cache.length + 1]  # (B, 1, 1, S): every real key so far
        logits = model(token[:, None], positions=next_position[:, None], attn_mask=mask, kv_cache=cache).logits[:, -1]
        next_position += 1
    return [_until_stop(row, stop_set) for row in out[:, : step + 1].tolist()]


def _until_stop(row: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(row):
        if token in stop:
            return row[: i + 1]
    return row
