"""LLaMA, one file, single device, read top to bottom like the papers.

References: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models" (pre-norm
RMSNorm, SwiGLU, rotary embeddings) and "Llama 2" (grouped-query attention for 70B); Su et al.
2021, "RoFormer" (RoPE). Parameter names and the rotary layout (interleaved pairs) are Meta's, so
a Meta checkpoint loads as it is; the Hugging Face layout differs and checkpoints.py converts.
Weight initialisation follows torchtitan's llama3 model (see `Llama.init_weights`).

No parallelism lives here: data/tensor/pipeline parallelism is applied to this module from outside.

Shapes: B batch, T tokens in this call, S keys (T, or cache length + T while decoding), D model
dim, H query heads, K key/value heads, Q head dim (D / H), F FFN width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modeling.configs import ModelConfig

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (padding, prompt tokens)


class KVCacheLike(Protocol):
    """What attention needs from a key/value cache (generate.KVCache implements it)."""

    length: int

    def append(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]: ...

    def advance(self, n_tokens: int) -> None: ...


# ---------------------------------------------------------------------------------------------
# RMSNorm (Zhang & Sennrich 2019): x / rms(x) * g, no mean subtraction, no bias.
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # In fp32 whatever the activations' dtype: the mean of squares loses precision in bf16.
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding: each pair (x[2i], x[2i+1]) of a head is a complex number, rotated by
# the angle position * theta^(-2i/Q). Query-key dot products then depend only on the offset.
# ---------------------------------------------------------------------------------------------


def rope_table(head_dim: int, max_seq_len: int, theta: float, device: torch.device | None = None) -> Tensor:
    """(max_seq_len, Q/2) complex64: e^(i * position * frequency) for every position and pair."""
    frequencies = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, frequencies)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: Tensor, rotations: Tensor) -> Tensor:
    """x: (B, T, heads, Q); rotations: (T, Q/2) or (B, T, Q/2). Rotated in fp32, returned in x's dtype."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, heads, Q/2)
    rotations = rotations.unsqueeze(-2)  # broadcast over heads
    return torch.view_as_real(pairs * rotations).flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------
# Attention: causal multi-head attention with grouped-query heads (H queries share K key/value
# heads, H / K each) through PyTorch's fused scaled_dot_product_attention.
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x: Tensor, rotations: Tensor, mask: Tensor | None, kv_cache: KVCacheLike | None) -> Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, Q)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Q)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, K, Q)
        q, k = apply_rope(q, rotations), apply_rope(k, rotations)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, Q)
        if kv_cache is not None:
            k, v = kv_cache.append(self.layer, k, v)  # (B, K, S, Q)
        if self.n_kv_heads != self.n_heads:
            # Each key/value head serves H / K consecutive query heads (Meta's and HF's grouping).
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, S, Q)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        # mask None: plain causal attention over this call's tokens (the training path); otherwise
        # a boolean (B or 1, 1, T, S) mask, True where a query may see a key.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # (B, H, T, Q)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))  # (B, T, D)


# ---------------------------------------------------------------------------------------------
# SwiGLU feed-forward (Shazeer 2020): w2(silu(w1 x) * w3 x), width F from LLaMA's 2/3 * 4D rule.
# ---------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_hidden, bias=False)  # gate
        self.w2 = nn.Linear(config.ffn_hidden, config.dim, bias=False)  # down
        self.w3 = nn.Linear(config.dim, config.ffn_hidden, bias=False)  # up

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, F) inside, (B, T, D) out


# ---------------------------------------------------------------------------------------------
# Transformer block, pre-norm: h = x + attention(norm(x)); out = h + feed_forward(norm(h)).
# ---------------------------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, rotations: Tensor, mask: Tensor | None, kv_cache: KVCacheLike | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rotations, mask, kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))


# ---------------------------------------------------------------------------------------------
# The model: embed, N blocks, final norm, untied output head.
# ---------------------------------------------------------------------------------------------


@dataclass
class LlamaOutput:
    logits: Tensor  # (B, T, V)
    loss: Tensor | None = None  # mean cross entropy over targets != IGNORE_INDEX
    hidden_states: list[Tensor] | None = None  # embeddings, then each block's output (N + 1 tensors)


class Llama(nn.Module):
    def __init__(self, config: ModelConfig, *, next_token_head: bool = True):
        """next_token_head False: no `output` head, for models that read the final hidden states
        with a head of their own (a reward model's scalar score, modeling/reward.py)."""
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config, layer) for layer in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False) if next_token_head else None
        # The rotary table is derived from the config, so it is no module state: not saved, not
        # cast by `model.to(bfloat16)` (rotations stay fp32), built on first use on each device.
        self._rope_tables: dict[torch.device, Tensor] = {}
        self.init_weights()

    def init_weights(self) -> None:
        """torchtitan's llama3 `init_weights` (depth_init=True), which follows Meta's training code:
        embeddings N(0, 1); wq, wk, wv, w1 N(0, 0.02); the projections that write into the
        residual stream of block l (wo, w2) and w3 N(0, 0.02 / sqrt(2 (l + 1))); norms 1; output
        head N(0, D^-1/2) truncated at 3 std. trunc_normal_'s default cutoff is +-2 absolute, so
        the 0.02-scale weights are in effect untruncated, as there. A model built on the meta
        device is materialised with `to_empty(device=...)` then `init_weights()`.
        """
        nn.init.normal_(self.tok_embeddings.weight)
        for block in self.layers:
            residual_std = 0.02 / (2 * (block.layer + 1)) ** 0.5
            for linear in (block.attention.wq, block.attention.wk, block.attention.wv, block.feed_forward.w1):
                nn.init.trunc_normal_(linear.weight, mean=0.0, std=0.02)
            for linear in (block.attention.wo, block.feed_forward.w2, block.feed_forward.w3):
                nn.init.trunc_normal_(linear.weight, mean=0.0, std=residual_std)
            block.attention_norm.reset_parameters()
            block.ffn_norm.reset_parameters()
        self.norm.reset_parameters()
        if self.output is not None:
            output_std = self.config.dim**-0.5
            nn.init.trunc_normal_(self.output.weight, mean=0.0, std=output_std, a=-3 * output_std, b=3 * output_std)

    def rope_on(self, device: torch.device) -> Tensor:
        table = self._rope_tables.get(device)
        if table is None:
            table = rope_table(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta, device)
            self._rope_tables[device] = table
        return table

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        *,
        doc_ids: Tensor | None = None,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
        return_hidden_states: bool = False,
    ) -> LlamaOutput:
        """tokens, targets, doc_ids, positions: (B, T) integers.

        targets: next-token ids aligned with tokens (already shifted), IGNORE_INDEX where no loss.
        doc_ids, positions, attn_mask, kv_cache: as `final_hidden_states`.
        """
        hidden_states = [] if return_hidden_states else None
        h = self.final_hidden_states(tokens, doc_ids=doc_ids, positions=positions, attn_mask=attn_mask,
                                     kv_cache=kv_cache, block_outputs=hidden_states)
        logits = self.output(h)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return LlamaOutput(logits, loss, hidden_states)

    def final_hidden_states(
        self,
        tokens: Tensor,
        *,
        doc_ids: Tensor | None = None,
        positions: Tensor | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCacheLike | None = None,
        block_outputs: list[Tensor] | None = None,
    ) -> Tensor:
        """(B, T, D): the blocks' output after the final norm, what a head reads.

        doc_ids: packed rows; a token attends only to earlier tokens with the same document id.
            Positions need not restart per document: RoPE scores depend only on the offset.
        positions: rotary positions per token (default: 0..T-1, after the cache's length if any).
        attn_mask: boolean (B or 1, 1, T, S), True where a query may attend a key; overrides the
            causal/document mask (generate.py passes one that also hides left padding).
        kv_cache: keys and values of earlier calls; this call's are appended and the cache advanced.
        block_outputs: a list to append the embeddings and then each block's output to (N + 1).
        """
        T = tokens.shape[1]
        past = kv_cache.length if kv_cache is not None else 0
        if positions is None:
            if past + T > self.config.max_seq_len:
                raise ValueError(f"{past + T} positions exceed max_seq_len {self.config.max_seq_len}")
            positions = torch.arange(past, past + T, device=tokens.device)
        rotations = self.rope_on(tokens.device)[positions]  # (T, Q/2) or (B, T, Q/2)
        mask = attn_mask if attn_mask is not None else self._mask(T, past, doc_ids, tokens.device)

        h = self.tok_embeddings(tokens)  # (B, T, D)
        if block_outputs is not None:
            block_outputs.append(h)
        for block in self.layers:
            h = block(h, rotations, mask, kv_cache)
            if block_outputs is not None:
                block_outputs.append(h)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.norm(h)

    @staticmethod
    def _mask(T: int, past: int, doc_ids: Tensor | None, device: torch.device) -> Tensor | None:
        """None when sdpa's own causal mask is right: no documents, and no cached keys in front."""
        if doc_ids is None and past == 0:
            return None
        query_pos = torch.arange(past, past + T, device=device)
        key_pos = torch.arange(past + T, device=device)
        mask = (key_pos[None, :] <= query_pos[:, None])[None, None]  # (1, 1, T, S)
        if doc_ids is not None:
            if past:
                raise ValueError("doc_ids is for training on packed rows; it cannot be combined with a kv_cache")
            mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])  # (B, 1, T, T)
        return mask
