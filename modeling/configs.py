"""Model shapes: the `ModelConfig` dataclass and the one table of named LLaMA sizes.

Sizes follow RECIPE.md section 2 (LLaMA-1 paper table 2, Llama-2 paper table 1 and Meta's
`params.json` files). Everything a size implies (FFN width, parameter count, FLOPs per token) is
computed from the config, so a model never has to be allocated to know how big it is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a LLaMA decoder. Field names follow Meta's `params.json`.

    `ffn_hidden_dim` is an explicit FFN width (Hugging Face's `intermediate_size`); left as None,
    the width comes from LLaMA's rule over `multiple_of` and `ffn_dim_multiplier`.
    """

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head attention)
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_hidden_dim: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"ModelConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs: head_dim (dim / n_heads = {self.head_dim}) must be even")
        if self.ffn_dim_multiplier is not None and not self.ffn_dim_multiplier > 0:
            raise ValueError(f"ModelConfig.ffn_dim_multiplier must be > 0, got {self.ffn_dim_multiplier!r}")
        if self.ffn_hidden_dim is not None and (not isinstance(self.ffn_hidden_dim, int) or self.ffn_hidden_dim <= 0):
            raise ValueError(f"ModelConfig.ffn_hidden_dim must be a positive integer, got {self.ffn_hidden_dim!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        """FFN width: explicit, or LLaMA's rule (2/3 of 4*dim, scaled, rounded up to multiple_of)."""
        if self.ffn_hidden_dim is not None:
            return self.ffn_hidden_dim
        return llama_ffn_hidden(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def n_params(self) -> int:
        """Parameter count, embeddings and output head included (what papers and model cards report)."""
        d, kv = self.dim, self.n_kv_heads * self.head_dim
        attention = d * d + 2 * d * kv + d * d  # wq, wk, wv, wo
        feed_forward = 3 * d * self.ffn_hidden  # w1, w2, w3
        norms = 2 * d
        per_layer = attention + feed_forward + norms
        return self.n_layers * per_layer + 2 * self.vocab_size * d + d  # + embeddings, output, final norm

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward) for MFU: 6N + 12 * L * H * Q * T.

        As in PaLM (appendix B): N counts the weights of matmuls, so the output head but not the
        embedding lookup (nor the norms' gains, <0.01% of N, which torchtitan keeps); the attention
        term counts the full T x T score and value matmuls.
        """
        seq_len = self.max_seq_len if seq_len is None else seq_len
        matmul_params = self.n_params - self.vocab_size * self.dim - (2 * self.n_layers + 1) * self.dim
        return 6 * matmul_params + 12 * self.n_layers * self.n_heads * self.head_dim * seq_len


def llama_ffn_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


@dataclass(frozen=True)
class NamedSize:
    """A row of the size table: the shape and the peak learning rate it was trained with."""

    name: str
    config: ModelConfig
    lr: float


def _size(name: str, lr: float, **shape) -> NamedSize:
    return NamedSize(name, ModelConfig(**shape), lr)


SIZES: dict[str, NamedSize] = {
    s.name: s
    for s in (
        # CPU sizes: `debug` for tests and smoke runs, `100m` for a real small run.
        _size("debug", 1e-3, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=64, norm_eps=1e-5, max_seq_len=256),
        _size("100m", 6e-4, dim=640, n_layers=12, n_heads=10, norm_eps=1e-5, max_seq_len=2048),
        _size("llama1-7b", 3e-4, dim=4096, n_layers=32, n_heads=32, norm_eps=1e-6, max_seq_len=2048),
        _size("llama1-13b", 3e-4, dim=5120, n_layers=40, n_heads=40, norm_eps=1e-6, max_seq_len=2048),
        _size("llama1-33b", 1.5e-4, dim=6656, n_layers=60, n_heads=52, norm_eps=1e-6, max_seq_len=2048),
        _size("llama1-65b", 1.5e-4, dim=8192, n_layers=80, n_heads=64, norm_eps=1e-5, max_seq_len=2048),
        _size("llama2-7b", 3e-4, dim=4096, n_layers=32, n_heads=32, norm_eps=1e-5, max_seq_len=4096),
        _size("llama2-13b", 3e-4, dim=5120, n_layers=40, n_heads=40, norm_eps=1e-5, max_seq_len=4096),
        _size(
            "llama2-70b", 1.5e-4, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
            ffn_dim_multiplier=1.3, multiple_of=4096, norm_eps=1e-5, max_seq_len=4096,
        ),
    )
}


def named_size(name: str) -> NamedSize:
    try:
        return SIZES[name]
    except KeyError:
        raise KeyError(f"unknown model size {name!r}; known sizes: {', '.join(SIZES)}") from None


def model_config(name: str) -> ModelConfig:
    return named_size(name).config
