from __future__ import annotations

import pytest
import torch
from torch import nn

from modeling.configs import SIZES, ModelConfig, model_config, named_size
from modeling.llama import Llama

pytestmark = pytest.mark.usefixtures("one_thread")

# RECIPE.md section 2: name -> (dim, layers, heads, kv heads, FFN hidden, norm eps, context, lr).
RECIPE_TABLE = {
    "llama1-7b": (4096, 32, 32, 32, 11008, 1e-6, 2048, 3e-4),
    "llama1-13b": (5120, 40, 40, 40, 13824, 1e-6, 2048, 3e-4),
    "llama1-33b": (6656, 60, 52, 52, 17920, 1e-6, 2048, 1.5e-4),
    "llama1-65b": (8192, 80, 64, 64, 22016, 1e-5, 2048, 1.5e-4),
    "llama2-7b": (4096, 32, 32, 32, 11008, 1e-5, 4096, 3e-4),
    "llama2-13b": (5120, 40, 40, 40, 13824, 1e-5, 4096, 3e-4),
    "llama2-70b": (8192, 80, 64, 8, 28672, 1e-5, 4096, 1.5e-4),
}

# Parameter counts of the released checkpoints: the Llama-2 model cards / HF conversions
# (7B, 13B, 70B) and counts printed from the HF conversions of LLaMA-1 30B and 65B.
PUBLISHED_PARAMS = {
    "llama1-7b": 6_738_415_616,
    "llama2-7b": 6_738_415_616,
    "llama1-13b": 13_015_864_320,
    "llama2-13b": 13_015_864_320,
    "llama1-33b": 32_528_943_616,
    "llama1-65b": 65_285_660_672,
    "llama2-70b": 68_976_648_192,
}


@pytest.mark.parametrize("name", RECIPE_TABLE)
def test_named_sizes_match_the_recipe_table(name):
    size = named_size(name)
    c = size.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_hidden, c.norm_eps, c.max_seq_len, size.lr) == RECIPE_TABLE[name]
    assert (c.head_dim, c.rope_theta, c.vocab_size) == (128, 10000.0, 32000)


@pytest.mark.parametrize("name", PUBLISHED_PARAMS)
def test_parameter_count_matches_the_published_one(name):
    assert model_config(name).n_params == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", SIZES)
def test_parameter_count_matches_the_built_model(name):
    config = model_config(name)
    with torch.device("meta"):  # shapes only: a 70B model costs no memory here
        model = Llama(config)
    assert sum(p.numel() for p in model.parameters()) == config.n_params


def test_cpu_sizes_are_small_and_around_100m():
    assert 1e6 < model_config("debug").n_params < 10e6
    assert 80e6 < model_config("100m").n_params < 130e6


def test_flops_per_token_counts_every_matmul_weight_and_the_attention_scores():
    config = model_config("llama2-70b")
    with torch.device("meta"):
        model = Llama(config)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    # Per token, per layer: QK^T and AV are each 2*T*D multiply-adds forward, x3 with backward.
    attention = 3 * 2 * 2 * config.n_layers * 4096 * config.dim
    assert config.flops_per_token(4096) == 6 * matmul_weights + attention
    assert config.flops_per_token() == config.flops_per_token(config.max_seq_len)


def test_unknown_size_lists_the_known_names():
    with pytest.raises(KeyError, match="llama2-7b.*llama2-70b|debug.*100m"):
        named_size("llama2-8b")


def test_explicit_ffn_width_overrides_the_rule():
    assert ModelConfig(dim=64, n_layers=1, n_heads=4, multiple_of=32).ffn_hidden == 192
    assert ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_hidden_dim=100).ffn_hidden == 100


def test_kv_heads_default_to_heads():
    assert ModelConfig(dim=64, n_layers=1, n_heads=4).n_kv_heads == 4


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (dict(dim=60, n_heads=8), "divisible by n_heads"),
        (dict(dim=64, n_heads=8, n_kv_heads=3), "divisible by n_kv_heads"),
        (dict(dim=36, n_heads=4), "must be even"),
        (dict(dim=64, n_heads=4, n_layers=0), "n_layers must be a positive integer"),
        (dict(dim=64, n_heads=4, vocab_size=-1), "vocab_size must be a positive integer"),
        (dict(dim=64, n_heads=4, norm_eps=0.0), "norm_eps"),
        (dict(dim=64, n_heads=4, rope_theta=-1.0), "rope_theta"),
        (dict(dim=64, n_heads=4, ffn_dim_multiplier=0.0), "ffn_dim_multiplier"),
        (dict(dim=64, n_heads=4, ffn_hidden_dim=0), "ffn_hidden_dim"),
    ],
)
def test_invalid_configs_are_rejected_at_construction(shape, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**({"n_layers": 2} | shape))
