from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling.configs import ModelConfig
from modeling.llama import IGNORE_INDEX, Llama, RMSNorm, apply_rope, rope_table
from tests.modeling.helpers import assert_equal_within, random_model, random_tokens, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

def test_logits_shape_and_hidden_states():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(2, 10, config.vocab_size)
    out = model(tokens, return_hidden_states=True)
    assert out.logits.shape == (2, 10, config.vocab_size)
    assert out.loss is None
    assert len(out.hidden_states) == config.n_layers + 1
    torch.testing.assert_close(out.hidden_states[0], model.tok_embeddings(tokens))
    torch.testing.assert_close(out.logits, model.output(model.norm(out.hidden_states[-1])))


def test_loss_is_mean_cross_entropy_over_targets_not_ignored():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(2, 12, config.vocab_size)
    targets = random_tokens(2, 12, config.vocab_size, seed=2)
    targets[0, :5] = IGNORE_INDEX
    out = model(tokens, targets)
    kept = targets != IGNORE_INDEX
    log_probs = out.logits.log_softmax(-1)
    expected = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0][kept].mean()
    torch.testing.assert_close(out.loss, expected)


def test_a_token_never_sees_the_future():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(1, 16, config.vocab_size)
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 1) % config.vocab_size
    before, after = model(tokens).logits, model(changed).logits
    torch.testing.assert_close(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


def test_document_mask_makes_a_packed_row_equal_its_documents_alone():
    config = tiny_config()
    model = random_model(config)
    first, second = random_tokens(1, 7, config.vocab_size, seed=3), random_tokens(1, 9, config.vocab_size, seed=4)
    packed = torch.cat([first, second], dim=1)
    doc_ids = torch.tensor([[0] * 7 + [1] * 9])
    logits = model(packed, doc_ids=doc_ids).logits
    # The second document sits at positions 7..15 in the row and 0..8 alone: RoPE is relative.
    assert_equal_within(logits[:, :7], model(first).logits, what="first document")
    assert_equal_within(logits[:, 7:], model(second).logits, what="second document")
    assert not torch.allclose(model(packed).logits[:, 7:], model(second).logits, atol=1e-3)


def test_grouped_query_heads_share_keys_and_values_in_consecutive_groups():
    # A GQA model equals the multi-head model whose key/value heads are repeated per group.
    gqa_config = tiny_config(n_heads=4, n_kv_heads=2)
    gqa = random_model(gqa_config)
    mha = Llama(tiny_config(n_heads=4, n_kv_heads=4)).eval()
    state = gqa.state_dict()
    head_dim = gqa_config.head_dim
    for name, tensor in state.items():
        if name.endswith(("wk.weight", "wv.weight")):
            state[name] = tensor.view(2, head_dim, -1).repeat_interleave(2, dim=0).reshape(4 * head_dim, -1)
    mha.load_state_dict(state)
    tokens = random_tokens(2, 10, gqa_config.vocab_size)
    assert_equal_within(gqa(tokens).logits, mha(tokens).logits)


def test_rope_rotates_interleaved_pairs_by_position_times_frequency():
    head_dim, theta, position = 8, 10000.0, 5
    x = torch.randn(1, 1, 1, head_dim)
    rotated = apply_rope(x, rope_table(head_dim, 16, theta)[position : position + 1])
    for i in range(head_dim // 2):
        angle = position * theta ** (-2 * i / head_dim)
        a, b = x[0, 0, 0, 2 * i], x[0, 0, 0, 2 * i + 1]
        expected = torch.stack([a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)])
        torch.testing.assert_close(rotated[0, 0, 0, 2 * i : 2 * i + 2], expected)


def test_rms_norm_is_computed_in_fp32_for_bf16_activations():
    norm = RMSNorm(256, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 256) * 30).to(torch.bfloat16)
    x32 = x.float()
    expected = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * norm.weight
    assert norm(x).dtype == torch.bfloat16
    assert torch.equal(norm(x), expected)


def test_bf16_model_keeps_fp32_rotations_and_tracks_the_fp32_model():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(2, 12, config.vocab_size)
    reference = model(tokens).logits
    model.to(torch.bfloat16)
    assert model.rope_on(tokens.device).dtype == torch.complex64
    logits = model(tokens).logits
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_positions_beyond_the_context_are_refused():
    model = random_model(tiny_config(max_seq_len=8))
    with pytest.raises(ValueError, match="exceed max_seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_init_follows_torchtitan():
    torch.manual_seed(0)
    config = ModelConfig(dim=256, n_layers=4, n_heads=4, vocab_size=2000)
    model = Llama(config)

    def std(p):
        return p.detach().float().std().item()

    assert std(model.tok_embeddings.weight) == pytest.approx(1.0, rel=0.02)
    for block in model.layers:
        residual_std = 0.02 / math.sqrt(2 * (block.layer + 1))
        for linear in (block.attention.wq, block.attention.wk, block.attention.wv, block.feed_forward.w1):
            assert std(linear.weight) == pytest.approx(0.02, rel=0.03)
        for linear in (block.attention.wo, block.feed_forward.w2, block.feed_forward.w3):
            assert std(linear.weight) == pytest.approx(residual_std, rel=0.03)
        assert torch.equal(block.attention_norm.weight, torch.ones(256))
    output_std = 256**-0.5
    assert model.output.weight.abs().max() <= 3 * output_std
    # A normal truncated at 3 sigma keeps 98.7% of the variance.
    assert std(model.output.weight) == pytest.approx(0.9866 * output_std, rel=0.03)


def test_a_model_built_on_meta_materialises_with_init_weights():
    config = tiny_config()
    with torch.device("meta"):
        model = Llama(config)
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    logits = model(random_tokens(1, 6, config.vocab_size)).logits
    assert torch.isfinite(logits).all()


def test_backward_reaches_every_parameter():
    config = tiny_config()
    model = random_model(config).train()
    tokens = random_tokens(2, 8, config.vocab_size)
    model(tokens, F.pad(tokens[:, 1:], (0, 1), value=IGNORE_INDEX)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
