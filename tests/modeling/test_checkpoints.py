from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from modeling import checkpoints
from modeling.checkpoints import (
    from_hf_rope_layout,
    load_hf,
    load_meta,
    meta_params,
    save_hf,
    save_meta,
    to_hf_rope_layout,
)
from tests.modeling.helpers import assert_equal_within, random_model, random_tokens, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

# --- an independent Meta-format writer and HF reference, written from the recipe, not our code --

# How Meta's model-parallel ranks hold each weight (fairscale: column-parallel splits rows,
# row-parallel splits columns, ParallelEmbedding splits the embedding dim).
FAIRSCALE_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w3": 0, "w2": 1, "output": 0, "tok_embeddings": 1}
RECIPE_HF_NAMES = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def write_meta_shards(weights: dict[str, torch.Tensor], params: dict, folder: Path, n_shards: int) -> None:
    folder.mkdir(parents=True)
    for rank in range(n_shards):
        shard = {}
        for name, tensor in weights.items():
            split = FAIRSCALE_SPLIT.get(name.split(".")[-2])
            shard[name] = tensor if split is None else tensor.chunk(n_shards, dim=split)[rank].clone()
        shard["rope.freqs"] = torch.zeros(4)  # LLaMA-1 checkpoints carry this derived buffer
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    (folder / "params.json").write_text(json.dumps(params))


def recipe_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """RECIPE.md: w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(...)."""
    rows, dim = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def hf_reference(weights: dict[str, torch.Tensor], config) -> LlamaForCausalLM:
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.ffn_hidden,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta,
        max_position_embeddings=config.max_seq_len, tie_word_embeddings=False,
    )
    hf_weights = {"model.embed_tokens.weight": weights["tok_embeddings.weight"],
                  "model.norm.weight": weights["norm.weight"], "lm_head.weight": weights["output.weight"]}
    for layer in range(config.n_layers):
        for meta, hf in RECIPE_HF_NAMES.items():
            w = weights[f"layers.{layer}.{meta}.weight"]
            if meta == "attention.wq":
                w = recipe_permute(w, config.n_heads)
            elif meta == "attention.wk":
                w = recipe_permute(w, config.n_kv_heads)
            hf_weights[f"model.layers.{layer}.{hf}.weight"] = w
    model = LlamaForCausalLM(hf_config).eval()
    model.load_state_dict(hf_weights)
    return model


@pytest.fixture
def meta_checkpoint(tmp_path):
    """Random Meta-format weights in 2 model-parallel shards, as Meta's params.json describes them."""
    config = tiny_config(n_heads=4, n_kv_heads=2, rope_theta=20000.0)
    weights = {k: v.clone() for k, v in random_model(config, seed=7).state_dict().items()}
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1, "multiple_of": 32,
              "norm_eps": 1e-5, "rope_theta": 20000.0}
    write_meta_shards(weights, params, tmp_path / "meta", n_shards=2)
    return tmp_path / "meta", weights, config


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    return torch.nn.functional.kl_div(logits_q.log_softmax(-1), logits_p.log_softmax(-1), log_target=True, reduction="batchmean").item()


def test_meta_shards_load_and_export_to_the_same_logits_as_the_recipe_conversion(meta_checkpoint, tmp_path):
    folder, weights, config = meta_checkpoint
    tokens = random_tokens(2, 20, config.vocab_size)
    with torch.no_grad():
        reference = hf_reference(weights, config)(tokens).logits
        ours = load_meta(folder, max_seq_len=64)
        assert ours.config == config
        assert_equal_within(ours(tokens).logits, reference, what="Meta weights in our model")
        save_hf(ours, tmp_path / "hf")
        exported = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert_equal_within(exported(tokens).logits, reference, what="our HF export in transformers")


def test_an_export_without_the_rope_permutation_is_caught(meta_checkpoint, tmp_path, monkeypatch):
    folder, weights, config = meta_checkpoint
    tokens = random_tokens(2, 20, config.vocab_size)
    monkeypatch.setattr(checkpoints, "to_hf_rope_layout", lambda weight, n_heads: weight)
    save_hf(load_meta(folder, max_seq_len=64), tmp_path / "hf")
    with torch.no_grad():
        reference = hf_reference(weights, config)(tokens).logits
        unpermuted = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()(tokens).logits
    with pytest.raises(AssertionError, match="max difference"):
        assert_equal_within(unpermuted, reference)
    assert kl_divergence(reference, unpermuted) > 1e-4


def test_rope_layout_permutations_are_inverse_and_match_the_recipe():
    w = torch.randn(4 * 16, 32)
    assert torch.equal(to_hf_rope_layout(w, 4), recipe_permute(w, 4))
    assert torch.equal(from_hf_rope_layout(to_hf_rope_layout(w, 4), 4), w)
    assert not torch.equal(to_hf_rope_layout(w, 4), w)


def assert_same_weights(a, b):
    assert a.state_dict().keys() == b.state_dict().keys()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name


@pytest.mark.parametrize("n_shards", [1, 2, 4])
def test_meta_round_trip(n_shards, tmp_path):
    model = random_model(tiny_config(n_kv_heads=4, rope_theta=1e6))
    save_meta(model, tmp_path, n_shards=n_shards)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [f"consolidated.{r:02d}.pth" for r in range(n_shards)]
    loaded = load_meta(tmp_path, max_seq_len=model.config.max_seq_len)
    assert loaded.config == model.config
    assert_same_weights(model, loaded)


def test_meta_shards_hold_their_rank_slice(tmp_path):
    model = random_model(tiny_config())
    save_meta(model, tmp_path, n_shards=2)
    rank1 = torch.load(tmp_path / "consolidated.01.pth", weights_only=True)
    assert torch.equal(rank1["layers.0.attention.wo.weight"], model.layers[0].attention.wo.weight[:, 32:])
    assert torch.equal(rank1["output.weight"], model.output.weight[48:])
    assert torch.equal(rank1["norm.weight"], model.norm.weight)
    # Each slice is saved on its own, not as a view of the whole tensor's storage.
    assert rank1["output.weight"].untyped_storage().nbytes() == 48 * 64 * 4


def test_meta_params_omit_keys_meta_loaders_reject_and_reproduce_the_ffn_width():
    params = meta_params(tiny_config(n_kv_heads=4))
    assert set(params) == {"dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "norm_eps"}
    for width in (200, 150):  # above and below 2/3 * 4 * dim = 170
        params = meta_params(tiny_config(ffn_hidden_dim=width))
        rebuilt = checkpoints.config_from_meta_params(params, vocab_size=96, max_seq_len=64, source=Path("p"))
        assert rebuilt.ffn_hidden == width


def test_hf_round_trip(tmp_path):
    model = random_model(tiny_config(n_heads=8, n_kv_heads=2))
    save_hf(model, tmp_path)
    loaded = load_hf(tmp_path)
    assert_same_weights(model, loaded)
    assert loaded.config.ffn_hidden == model.config.ffn_hidden
    assert loaded.config.max_seq_len == model.config.max_seq_len
    # HF -> Meta -> HF keeps the weights too, with an explicit FFN width in the config.
    save_meta(loaded, tmp_path / "meta", n_shards=2)
    assert_same_weights(model, load_meta(tmp_path / "meta", max_seq_len=64))


def test_hf_checkpoint_split_over_files_loads(tmp_path):
    model = random_model(tiny_config())
    save_hf(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / file, metadata={"format": "pt"})
    weight_map = {k: file for file, keys in parts.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_weights(model, load_hf(tmp_path))


def test_tokenizer_files_are_copied_into_the_export(tmp_path):
    tokenizer = tmp_path / "tok" / "tokenizer.model"
    tokenizer.parent.mkdir()
    tokenizer.write_bytes(b"\x0a\x03abc")
    tokenizer_config = tokenizer.with_name("tokenizer_config.json")
    tokenizer_config.write_text("{}")
    save_hf(random_model(tiny_config()), tmp_path / "hf", tokenizer_files=[tokenizer, tokenizer_config])
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == b"\x0a\x03abc"
    assert (tmp_path / "hf" / "tokenizer_config.json").read_text() == "{}"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        save_hf(random_model(tiny_config()), tmp_path / "hf2", tokenizer_files=[tmp_path / "missing.json"])


def test_an_export_with_a_sentencepiece_tokenizer_loads_in_transformers_and_gives_our_logits(tmp_path, one_thread):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([f"The quick brown fox jumps over the lazy dog {n} times." for n in range(200)]
                                 + ["Über naïve café — 日本語"] * 20))
    spm.SentencePieceTrainer.train(  # LLaMA's settings, at a toy size
        input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=400, model_type="bpe",
        split_digits=True, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    model = random_model(tiny_config(vocab_size=400))
    folder = save_hf(model, tmp_path / "hf", tokenizer_files=[tmp_path / "tokenizer.model"])

    tokenizer = AutoTokenizer.from_pretrained(folder)
    sentencepiece = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    text = "The lazy fox 42 — café ☃"
    ids = tokenizer(text)["input_ids"]
    assert ids == [1] + sentencepiece.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    theirs = LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = theirs(torch.tensor([ids])).logits
        got = model(torch.tensor([ids])).logits
    assert_equal_within(got, expected)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_meta_loading_never_unpickles_code(tmp_path):
    save_meta(random_model(tiny_config()), tmp_path)
    torch.save({"tok_embeddings.weight": Payload()}, tmp_path / "consolidated.00.pth")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_meta(tmp_path, max_seq_len=64)


def test_meta_shard_numbers_must_be_contiguous(tmp_path):
    save_meta(random_model(tiny_config()), tmp_path, n_shards=2)
    (tmp_path / "consolidated.01.pth").rename(tmp_path / "consolidated.02.pth")
    with pytest.raises(ValueError, match=r"shard numbers \[0, 2\]"):
        load_meta(tmp_path, max_seq_len=64)


def test_meta_shards_with_different_keys_are_named(tmp_path):
    save_meta(random_model(tiny_config()), tmp_path, n_shards=2)
    shard = torch.load(tmp_path / "consolidated.01.pth", weights_only=True)
    del shard["layers.1.ffn_norm.weight"]
    torch.save(shard, tmp_path / "consolidated.01.pth")
    with pytest.raises(ValueError, match=r"consolidated.01.pth: keys differ.*layers.1.ffn_norm.weight"):
        load_meta(tmp_path, max_seq_len=64)


def test_unsupported_meta_params_are_named(tmp_path):
    save_meta(random_model(tiny_config()), tmp_path)
    params = json.loads((tmp_path / "params.json").read_text()) | {"use_scaled_rope": True}
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match="params.json: use_scaled_rope"):
        load_meta(tmp_path, max_seq_len=64)


def test_weights_that_do_not_fit_params_are_reported(tmp_path):
    save_meta(random_model(tiny_config()), tmp_path)
    params = json.loads((tmp_path / "params.json").read_text()) | {"n_layers": 3}
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match=r"(?s)do not match.*Missing.*layers\.2\.attention_norm"):
        load_meta(tmp_path, max_seq_len=64)


def test_shards_that_do_not_divide_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not divisible into 3 shards"):
        save_meta(random_model(tiny_config()), tmp_path, n_shards=3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"model_type": "mistral"}, "model_type 'mistral'"),
        ({"head_dim": 32}, "head_dim 32"),
    ],
)
def test_unsupported_hf_configs_are_named(change, message, tmp_path):
    save_hf(random_model(tiny_config()), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"config.json: {message}"):
        load_hf(tmp_path)
