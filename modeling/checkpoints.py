"""Checkpoints in Meta's format and in Hugging Face's, read and written, without unpickling.

Meta's format (what Meta's llama repositories ship and load): a folder with `params.json` and one
`consolidated.NN.pth` per model-parallel rank. Our parameter names and rotary layout are Meta's, so
the weights need no renaming; a model-parallel checkpoint is merged by concatenating each weight
along the dimension fairscale's parallel layer split it on (`MODEL_PARALLEL_DIM`).

Hugging Face's format (what `LlamaForCausalLM.from_pretrained` loads): `config.json` and
`model.safetensors` (or shards listed in `model.safetensors.index.json`). Names differ
(`HF_LAYER_NAMES`), and the rows of wq and wk are permuted within each head because HF's rotary
code rotates the two halves of a head where Meta's rotates interleaved pairs.

`.pth` files are read with `torch.load(weights_only=True)`: tensors and containers only, no code.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from modeling.configs import ModelConfig, llama_ffn_hidden
from modeling.llama import Llama
from tasks.tokenizer import MODEL_FILE, Tokenizer, export_hf

# Which dimension each weight was split on across model-parallel ranks (None: replicated).
# fairscale's ColumnParallelLinear splits output rows (dim 0), RowParallelLinear input columns
# (dim 1); LLaMA-1/2's ParallelEmbedding splits the embedding dimension (dim 1).
MODEL_PARALLEL_DIM: dict[str, int | None] = {
    "tok_embeddings.weight": 1,
    "attention.wq.weight": 0,
    "attention.wk.weight": 0,
    "attention.wv.weight": 0,
    "attention.wo.weight": 1,
    "feed_forward.w1.weight": 0,
    "feed_forward.w2.weight": 1,
    "feed_forward.w3.weight": 0,
    "attention_norm.weight": None,
    "ffn_norm.weight": None,
    "norm.weight": None,
    "output.weight": 0,
}

HF_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
HF_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_NATIVE_TOP_NAMES = {hf: native for native, hf in HF_TOP_NAMES.items()}
_NATIVE_LAYER_NAMES = {hf: native for native, hf in HF_LAYER_NAMES.items()}
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:model\.)?layers\.(?P<layer>\d+)\.)(?P<rest>.+)$")
_SHARD_FILE = re.compile(r"^consolidated\.(\d+)\.pth$")
# Derived buffers some exporters saved: recomputed from the config, so skipped on load.
_DERIVED_META_KEYS = {"rope.freqs"}
_DERIVED_HF_SUFFIX = "rotary_emb.inv_freq"
_META_PARAM_KEYS = {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope"}


# --- rotary layouts ---------------------------------------------------------------------------


def to_hf_rope_layout(weight: Tensor, n_heads: int) -> Tensor:
    """wq/wk rows from Meta's interleaved pairs (2i, 2i+1) to HF's halves (i, i + Q/2), per head."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def from_hf_rope_layout(weight: Tensor, n_heads: int) -> Tensor:
    """Inverse of `to_hf_rope_layout`."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


# --- names ------------------------------------------------------------------------------------


def _split_layer_key(name: str) -> tuple[str, str]:
    """'layers.3.attention.wq.weight' -> ('layers.3.', 'attention.wq.weight'); top-level: ('', name)."""
    match = _LAYER_KEY.match(name)
    return (match["prefix"], match["rest"]) if match else ("", name)


def hf_name(name: str) -> str:
    prefix, rest = _split_layer_key(name)
    table = HF_LAYER_NAMES if prefix else HF_TOP_NAMES
    if rest not in table:
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    return f"model.{prefix}{table[rest]}" if prefix else table[rest]


def native_name(hf_key: str) -> str:
    prefix, rest = _split_layer_key(hf_key)
    table = _NATIVE_LAYER_NAMES if prefix else _NATIVE_TOP_NAMES
    if rest not in table:
        raise KeyError(f"unexpected Hugging Face weight {hf_key!r}")
    return f"{prefix.removeprefix('model.')}{table[rest]}" if prefix else table[rest]


def _rope_heads(name: str, config: ModelConfig) -> int | None:
    """Heads to permute over when `name` is wq or wk, else None."""
    rest = _split_layer_key(name)[1]
    return {"attention.wq.weight": config.n_heads, "attention.wk.weight": config.n_kv_heads}.get(rest)


def to_hf_state_dict(state_dict: Mapping[str, Tensor], config: ModelConfig) -> Iterator[tuple[str, Tensor]]:
    for name, tensor in state_dict.items():
        heads = _rope_heads(name, config)
        yield hf_name(name), (to_hf_rope_layout(tensor, heads) if heads else tensor)


def from_hf_state_dict(state_dict: Iterable[tuple[str, Tensor]], config: ModelConfig) -> Iterator[tuple[str, Tensor]]:
    for hf_key, tensor in state_dict:
        if hf_key.endswith(_DERIVED_HF_SUFFIX):
            continue
        name = native_name(hf_key)
        heads = _rope_heads(name, config)
        yield name, (from_hf_rope_layout(tensor, heads) if heads else tensor)


# --- building a model from a state dict -------------------------------------------------------


def model_from_state_dict(
    config: ModelConfig, state_dict: Mapping[str, Tensor], *, source: Path, dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu", next_token_head: bool = True,
) -> Llama:
    """Built on `meta` and given the loaded tensors, so no memory goes to a throwaway random init."""
    with torch.device("meta"):
        model = Llama(config, next_token_head=next_token_head)
    try:
        model.load_state_dict(dict(state_dict), strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: weights do not match the checkpoint's config: {error}") from None
    return model.to(device=device, dtype=dtype)


# --- Meta's format ----------------------------------------------------------------------------


def config_from_meta_params(params: Mapping, *, vocab_size: int, max_seq_len: int, source: Path) -> ModelConfig:
    """`params.json` -> ModelConfig. Meta writes vocab_size -1 (set from the tokenizer); the
    embedding's row count is used then. The context length is not in params.json."""
    unknown = set(params) - _META_PARAM_KEYS
    if unknown:
        raise ValueError(f"{source}: unsupported params.json keys {sorted(unknown)}")
    if params.get("use_scaled_rope"):
        raise ValueError(f"{source}: use_scaled_rope (Llama 3.1 RoPE scaling) is not supported")
    declared_vocab = params.get("vocab_size", -1)
    if declared_vocab > 0 and declared_vocab != vocab_size:
        raise ValueError(f"{source}: vocab_size {declared_vocab} but tok_embeddings has {vocab_size} rows")
    try:
        return ModelConfig(
            dim=params["dim"],
            n_layers=params["n_layers"],
            n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads"),
            vocab_size=vocab_size,
            multiple_of=params.get("multiple_of", 256),
            ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params["norm_eps"],
            rope_theta=params.get("rope_theta", 10000.0),
            max_seq_len=max_seq_len,
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{source}: invalid params.json: {error}") from None


def meta_params(config: ModelConfig) -> dict:
    """ModelConfig -> `params.json`, writing only keys Meta's own loaders accept (n_kv_heads,
    ffn_dim_multiplier and rope_theta appear only where they differ from the defaults, as in Meta's
    files). Meta has no explicit FFN width, so rule arguments reproducing it are chosen."""
    params = {"dim": config.dim, "n_layers": config.n_layers, "n_heads": config.n_heads}
    if config.n_kv_heads != config.n_heads:
        params["n_kv_heads"] = config.n_kv_heads
    params["vocab_size"] = config.vocab_size
    multiple_of, multiplier = _meta_ffn_rule(config)
    params["multiple_of"] = multiple_of
    if multiplier is not None:
        params["ffn_dim_multiplier"] = multiplier
    params["norm_eps"] = config.norm_eps
    if config.rope_theta != 10000.0:
        params["rope_theta"] = config.rope_theta
    return params


def _meta_ffn_rule(config: ModelConfig) -> tuple[int, float | None]:
    if llama_ffn_hidden(config.dim, config.multiple_of, config.ffn_dim_multiplier) == config.ffn_hidden:
        return config.multiple_of, config.ffn_dim_multiplier
    base = int(2 * 4 * config.dim / 3)
    # Rounding up to a multiple of the width itself gives the width for any base <= width.
    multiplier = None if config.ffn_hidden >= base else config.ffn_hidden / base
    if llama_ffn_hidden(config.dim, config.ffn_hidden, multiplier) != config.ffn_hidden:
        raise ValueError(f"FFN width {config.ffn_hidden} cannot be expressed with Meta's params.json rule")
    return config.ffn_hidden, multiplier


def meta_shard_files(folder: Path) -> list[Path]:
    numbered = sorted((int(m[1]), p) for p in folder.iterdir() if (m := _SHARD_FILE.match(p.name)))
    if not numbered:
        raise FileNotFoundError(f"{folder}: no consolidated.NN.pth files")
    if [n for n, _ in numbered] != list(range(len(numbered))):
        raise ValueError(f"{folder}: shard numbers {[n for n, _ in numbered]} are not 00..{len(numbered) - 1:02d}")
    return [p for _, p in numbered]


def merge_model_parallel(shards: list[dict[str, Tensor]], files: list[Path]) -> dict[str, Tensor]:
    """Concatenate each weight along its model-parallel dimension; replicated ones from rank 0."""
    merged = {}
    expected = set(shards[0]) - _DERIVED_META_KEYS
    for shard, file in zip(shards, files):
        keys = set(shard) - _DERIVED_META_KEYS
        if keys != expected:
            raise ValueError(f"{file}: keys differ from {files[0].name}: {sorted(keys ^ expected)[:5]}")
    for name in sorted(expected):
        rest = _split_layer_key(name)[1]
        if rest not in MODEL_PARALLEL_DIM:
            raise ValueError(f"{files[0]}: unexpected weight {name!r}")
        dim = MODEL_PARALLEL_DIM[rest]
        merged[name] = shards[0][name].clone() if dim is None else torch.cat([s[name] for s in shards], dim=dim)
    return merged


def load_meta(
    folder: str | Path, *, max_seq_len: int, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Llama:
    """A Meta checkpoint folder (params.json + consolidated.NN.pth, any number of ranks)."""
    folder = Path(folder)
    files = meta_shard_files(folder)
    params_path = folder / "params.json"
    params = json.loads(params_path.read_text())
    # mmap: a shard is paged in as its tensors are concatenated, not read whole up front.
    shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    state_dict = merge_model_parallel(shards, files)
    del shards
    if "tok_embeddings.weight" not in state_dict:
        raise ValueError(f"{files[0]}: no tok_embeddings.weight")
    vocab_size = state_dict["tok_embeddings.weight"].shape[0]
    config = config_from_meta_params(params, vocab_size=vocab_size, max_seq_len=max_seq_len, source=params_path)
    return model_from_state_dict(config, state_dict, source=folder, dtype=dtype, device=device)


def save_meta(model: Llama, folder: str | Path, *, n_shards: int = 1) -> Path:
    """Write params.json and `n_shards` consolidated.NN.pth files, split as Meta's ranks hold them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict()
    for name, tensor in state_dict.items():
        dim = MODEL_PARALLEL_DIM[_split_layer_key(name)[1]]
        if dim is not None and tensor.shape[dim] % n_shards:
            raise ValueError(f"{name} {tuple(tensor.shape)}: dim {dim} is not divisible into {n_shards} shards")
    for rank in range(n_shards):
        shard = {}
        for name, tensor in state_dict.items():
            dim = MODEL_PARALLEL_DIM[_split_layer_key(name)[1]]
            part = tensor if dim is None else tensor.chunk(n_shards, dim=dim)[rank]
            shard[name] = part.detach().cpu().clone()  # a view would save the whole storage
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    (folder / "params.json").write_text(json.dumps(meta_params(model.config), indent=2) + "\n")
    return folder


# --- Hugging Face's format --------------------------------------------------------------------


def config_from_hf(hf_config: Mapping, *, source: Path) -> ModelConfig:
    if hf_config.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type {hf_config.get('model_type')!r}, expected 'llama'")
    rope = hf_config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or hf_config.get("rope_scaling"):
        raise ValueError(f"{source}: RoPE scaling ({rope_type}, {hf_config.get('rope_scaling')}) is not supported")
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag):
            raise ValueError(f"{source}: {flag} is set; LLaMA has no biases")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf_config['hidden_act']!r}, LLaMA's SwiGLU uses silu")
    dim, n_heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    if hf_config.get("head_dim") not in (None, dim // n_heads):
        raise ValueError(f"{source}: head_dim {hf_config['head_dim']} differs from hidden_size / heads")
    try:
        return ModelConfig(
            dim=dim,
            n_layers=hf_config["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=hf_config.get("num_key_value_heads"),
            vocab_size=hf_config["vocab_size"],
            ffn_hidden_dim=hf_config["intermediate_size"],
            norm_eps=hf_config["rms_norm_eps"],
            rope_theta=rope.get("rope_theta", hf_config.get("rope_theta", 10000.0)),
            max_seq_len=hf_config["max_position_embeddings"],
        )
    except (KeyError, ValueError) as error:
        raise ValueError(f"{source}: invalid config.json: {error}") from None


def hf_config(config: ModelConfig, *, dtype: torch.dtype, bos_token_id: int, eos_token_id: int) -> dict:
    # rope_theta is written both ways: transformers < 5 reads the top-level key, 5 rope_parameters.
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.ffn_hidden,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _hf_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / "model.safetensors"
    if not single.exists():
        raise FileNotFoundError(f"{folder}: neither model.safetensors nor model.safetensors.index.json")
    return [single]


def _read_safetensors(files: list[Path]) -> Iterator[tuple[str, Tensor]]:
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def read_hf_weights(folder: str | Path) -> Iterator[tuple[str, Tensor]]:
    """The tensors of a Hugging Face folder's safetensors files, under their Hugging Face names."""
    return _read_safetensors(_hf_weight_files(Path(folder)))


def load_hf(folder: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> Llama:
    """A Hugging Face LLaMA folder (config.json + safetensors). Tied embeddings are untied."""
    folder = Path(folder)
    config_path = folder / "config.json"
    raw_config = json.loads(config_path.read_text())
    config = config_from_hf(raw_config, source=config_path)
    state_dict = dict(from_hf_state_dict(read_hf_weights(folder), config))
    if raw_config.get("tie_word_embeddings") and "output.weight" not in state_dict:
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"].clone()
    return model_from_state_dict(config, state_dict, source=folder, dtype=dtype, device=device)


def save_hf(
    model: Llama,
    folder: str | Path,
    *,
    tokenizer_files: Iterable[str | Path] = (),
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    head_tensors: Mapping[str, Tensor] | None = None,
    config_updates: Mapping[str, Any] | None = None,
) -> Path:
    """Write config.json + model.safetensors that `LlamaForCausalLM.from_pretrained` loads.

    tokenizer_files: the tokenizer's own files (tokenizer.model, tokenizer_config.json, ...),
    copied in so `AutoTokenizer.from_pretrained(folder)` works too. bos/eos default to LLaMA's
    SentencePiece ids. head_tensors (Hugging Face names) and config_updates export another head
    on the backbone, e.g. a reward model's as `LlamaForSequenceClassification` (modeling/reward.py).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in to_hf_state_dict(model.state_dict(), model.config)}
    tensors.update({name: t.detach().cpu().contiguous() for name, t in (head_tensors or {}).items()})
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    dtype = model.tok_embeddings.weight.dtype
    config = hf_config(model.config, dtype=dtype, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    config.update(config_updates or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    names = set()
    for file in map(Path, tokenizer_files):
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file {file} does not exist")
        shutil.copy2(file, folder / file.name)
        names.add(file.name)
    if names == {MODEL_FILE}:
        # A SentencePiece model alone: the full Hugging Face export (a tokenizer.json that encodes as
        # SentencePiece does, the chat template) where it converts exactly; otherwise transformers'
        # SentencePiece-backed LlamaTokenizer (BOS added, EOS not), which reads tokenizer.model itself.
        try:
            export_hf(Tokenizer.load(folder / MODEL_FILE), folder)
        except ValueError:
            tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                                "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}
            (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return folder
