from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from modeling.checkpoints import save_hf
from modeling.generate import GREEDY, KVCache, Sampling, generate, next_tokens
from tests.modeling.helpers import assert_equal_within, random_model, random_tokens, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 17, 3, 88, 41], [9], [60, 2, 2, 71, 30, 12, 8, 50, 19], [33, 44, 7]]


def greedy_by_full_recomputation(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The definition of greedy decoding: rerun the whole sequence, take the argmax, repeat."""
    sequence = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(prompt) :]


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_cached_batched_greedy_equals_full_recomputation_per_prompt(kv_heads):
    model = random_model(tiny_config(n_heads=4, n_kv_heads=kv_heads))
    got = generate(model, PROMPTS, max_new_tokens=10)
    assert got == [greedy_by_full_recomputation(model, p, 10) for p in PROMPTS]


def test_a_sequence_fed_in_chunks_through_the_cache_gives_the_full_forward_logits():
    config = tiny_config()
    model = random_model(config)
    tokens = random_tokens(2, 20, config.vocab_size)
    cache = KVCache(config, batch=2, max_len=20, dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():
        chunks = [model(tokens[:, a:b], kv_cache=cache).logits for a, b in ((0, 7), (7, 8), (8, 20))]
        assert_equal_within(torch.cat(chunks, dim=1), model(tokens).logits)
    assert cache.length == 20


def test_greedy_matches_transformers_generate_with_left_padding_and_eos(tmp_path):
    model = random_model(tiny_config(n_heads=8, n_kv_heads=2, rope_theta=500000.0), seed=3)
    unconstrained = generate(model, PROMPTS, max_new_tokens=12)
    eos = unconstrained[0][4]  # a token the first row emits, so a stop really happens
    save_hf(model, tmp_path, eos_token_id=eos)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    longest = max(map(len, PROMPTS))
    input_ids = torch.tensor([[0] * (longest - len(p)) + p for p in PROMPTS])
    attention_mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in PROMPTS])
    hf_out = hf.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=eos)
    expected = []
    for row in hf_out[:, longest:].tolist():
        expected.append(row[: row.index(eos) + 1] if eos in row else row)

    got = generate(model, PROMPTS, max_new_tokens=12, stop_tokens=[eos])
    assert got == expected
    assert len(got[0]) == 5 and got[0][-1] == eos


def test_a_stop_token_ends_only_its_own_row():
    model = random_model(tiny_config())
    free = generate(model, PROMPTS, max_new_tokens=10)
    stop = free[2][3]
    stopped = generate(model, PROMPTS, max_new_tokens=10, stop_tokens={stop})
    for free_row, stopped_row in zip(free, stopped):
        expected = free_row[: free_row.index(stop) + 1] if stop in free_row else free_row
        assert stopped_row == expected
    assert len(stopped[2]) <= 4


def test_sampling_is_reproducible_with_a_seed():
    model = random_model(tiny_config())
    sampling = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    first = generate(model, PROMPTS, max_new_tokens=16, sampling=sampling, seed=1)
    assert generate(model, PROMPTS, max_new_tokens=16, sampling=sampling, seed=1) == first
    assert generate(model, PROMPTS, max_new_tokens=16, sampling=sampling, seed=2) != first


def test_a_head_wider_than_the_tokenizer_never_draws_past_its_vocabulary():
    model = random_model(tiny_config())  # 96 logits; say the tokenizer has 40 pieces
    unlimited = generate(model, PROMPTS, max_new_tokens=16, sampling=Sampling(temperature=2.0), seed=1)
    assert max(max(row) for row in unlimited) >= 40
    for sampling in (GREEDY, Sampling(temperature=2.0)):
        drawn = generate(model, PROMPTS, max_new_tokens=16, sampling=sampling, seed=1, vocab_size=40)
        assert max(max(row) for row in drawn) < 40
    assert generate(model, PROMPTS, max_new_tokens=8, vocab_size=96) == generate(model, PROMPTS, max_new_tokens=8)


def test_top_k_of_one_and_a_tiny_top_p_are_greedy():
    model = random_model(tiny_config())
    greedy = generate(model, PROMPTS, max_new_tokens=8)
    assert generate(model, PROMPTS, max_new_tokens=8, sampling=Sampling(temperature=1.0, top_k=1), seed=0) == greedy
    assert generate(model, PROMPTS, max_new_tokens=8, sampling=Sampling(temperature=1.0, top_p=1e-6), seed=0) == greedy


def sample_counts(sampling: Sampling, probs: list[float], draws: int = 4000) -> torch.Tensor:
    logits = torch.tensor(probs).log().expand(draws, -1)
    tokens = next_tokens(logits, sampling, torch.Generator().manual_seed(0))
    return torch.bincount(tokens, minlength=len(probs)) / draws


def test_top_p_keeps_the_smallest_set_reaching_p_renormalised():
    frequencies = sample_counts(Sampling(temperature=1.0, top_p=0.7), [0.5, 0.3, 0.15, 0.05])
    assert frequencies[2] == 0 and frequencies[3] == 0
    assert frequencies[0] == pytest.approx(0.5 / 0.8, abs=0.03)


def test_top_k_keeps_the_k_most_likely():
    frequencies = sample_counts(Sampling(temperature=1.0, top_k=2), [0.1, 0.5, 0.05, 0.35])
    assert frequencies[0] == 0 and frequencies[2] == 0
    assert frequencies[1] == pytest.approx(0.5 / 0.85, abs=0.03)


def test_temperature_sharpens_and_flattens():
    probs = [0.6, 0.3, 0.1]
    cold = sample_counts(Sampling(temperature=0.5), probs)
    hot = sample_counts(Sampling(temperature=2.0), probs)
    # p^(1/T) renormalised: T=0.5 gives 0.78 for the first token, T=2 gives 0.48.
    assert cold[0] == pytest.approx(0.36 / 0.46, abs=0.03)
    assert hot[0] == pytest.approx(0.6**0.5 / (0.6**0.5 + 0.3**0.5 + 0.1**0.5), abs=0.03)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    assert next_tokens(logits, GREEDY).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompts=[[1] * 60], max_new_tokens=5), "exceeds max_seq_len 64"),
        (dict(prompts=[[1], []], max_new_tokens=5), "at least one token"),
        (dict(prompts=[[1]], max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(random_model(tiny_config()), **kwargs)


@pytest.mark.parametrize(("field", "value"), [("temperature", -1.0), ("top_k", 0), ("top_p", 0.0), ("top_p", 1.5)])
def test_bad_sampling_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        Sampling(**{field: value})
