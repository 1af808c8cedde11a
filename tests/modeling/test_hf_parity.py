"""Our model against transformers' LlamaForCausalLM on the same weights, in fp32."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from modeling.checkpoints import load_hf, save_hf
from modeling.llama import IGNORE_INDEX
from tests.modeling.helpers import assert_equal_within, random_model, random_tokens, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {
    "multi-head": tiny_config(n_heads=4, n_kv_heads=4),
    "grouped-query, rope theta 5e5": tiny_config(n_heads=8, n_kv_heads=2, rope_theta=500000.0),
    "one kv head, 3 layers, 70B-style FFN rule": tiny_config(
        n_layers=3, n_heads=4, n_kv_heads=1, ffn_dim_multiplier=1.3, multiple_of=48, norm_eps=1e-6
    ),
}


def hf_from_weights_of(model, folder):
    """A transformers model with our model's weights, exported by HF's own save_pretrained."""
    save_hf(model, folder / "ours")
    hf = LlamaForCausalLM.from_pretrained(folder / "ours").eval()
    hf.save_pretrained(folder / "hf")
    return hf


@pytest.mark.parametrize("name", CONFIGS)
def test_hidden_states_logits_and_loss_match_transformers(name, tmp_path):
    config = CONFIGS[name]
    # Start from transformers' side: its own checkpoint, read by our HF loader.
    hf = hf_from_weights_of(random_model(config, seed=5), tmp_path)
    ours = load_hf(tmp_path / "hf").eval()
    tokens = random_tokens(3, 24, config.vocab_size)
    labels = tokens.clone()
    labels[1, :6] = IGNORE_INDEX
    with torch.no_grad():
        expected = hf(tokens, labels=labels, output_hidden_states=True)
        # transformers shifts labels inside; our targets are the next tokens already.
        targets = torch.cat([labels[:, 1:], torch.full((3, 1), IGNORE_INDEX)], dim=1)
        got = ours(tokens, targets, return_hidden_states=True)

    assert len(got.hidden_states) == len(expected.hidden_states) == config.n_layers + 1
    for layer, (a, b) in enumerate(zip(got.hidden_states[:-1], expected.hidden_states[:-1])):
        assert_equal_within(a, b, what=f"hidden state {layer}")
    # transformers' last hidden state is after the final norm.
    with torch.no_grad():
        assert_equal_within(ours.norm(got.hidden_states[-1]), expected.hidden_states[-1], what="final norm")
    assert_equal_within(got.logits, expected.logits, what="logits")
    assert_equal_within(got.loss, expected.loss, what="loss")
