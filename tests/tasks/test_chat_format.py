"""Llama 2's chat format: Meta's ids, the answer loss mask, and the exported chat template.

The tokenizer is trained with our settings (`train_tokenizer`) on multilingual prose, Python code
and chat-shaped lines, so "[INST]", "<<SYS>>" and indentation have pieces of their own. Dialogues
are seeded: with and without a system message, one to four pairs, messages of words in eleven
languages, code with its indentation, digits, emoji, tags as text, Unicode from every plane, and
whitespace Python's str.strip removes (tabs, newlines, NBSP, U+3000, U+2028, U+001C) around and
inside them. The oracle is Meta's `chat_completion` structure written out in `meta_reference`.
"""

import json
import os
import random
from pathlib import Path

import jinja2
import pytest

from tasks.chat_format import CHAT_TEMPLATE, ChatExample, encode_dialogue, encode_prompt
from tasks.tokenizer import export_hf, train_tokenizer
from tests.tasks.test_tokenizer import TRICKY, WORDS, random_unicode, synthetic_corpus

CODE_FILES = sorted(Path(os.__file__).parent.glob("*.py"))[1:40:4]
CONTROL_STRINGS = ["<s>", "</s>", "<unk>"]
TAGS_AS_TEXT = ["[INST]", "[/INST]", " [INST] ", "<<SYS>>\n", "\n<</SYS>>\n\n", "[INST]hi[/INST]", "\u2581", "▁[/INST]▁"]
STRIPPED_WHITESPACE = ["", " ", "  ", "\t", "\n", "\n\n", " \n\t", "\r\n", "\u00a0", "\u3000", "\u2028", "\x1c", "\x85"]
SEPARATORS = [" ", "  ", "\n", "\n\n", "\t", "    ", " \n", "\n    ", ""]
NO_SPLIT_SPECIALS = {"tokenizer_kwargs": {"split_special_tokens": False}}


def code_snippets() -> list[str]:
    lines = [line for path in CODE_FILES for line in path.read_text(encoding="utf-8").split("\n")]
    rng = random.Random(7)
    starts = rng.sample(range(len(lines) - 8), 60)
    return ["\n".join(lines[start:start + rng.randint(1, 8)]) for start in starts]


def training_texts() -> list[str]:
    rng = random.Random(3)
    chat_lines = [f"[INST] {rng.choice(TRICKY)} [/INST] {' '.join(rng.sample(WORDS['en'], 4))}" for _ in range(300)]
    chat_lines += ["<<SYS>>", "<</SYS>>", "You are a helpful assistant."] * 50
    code = [path.read_text(encoding="utf-8") for path in CODE_FILES]
    return synthetic_corpus() + chat_lines + code


def message_text(rng: random.Random, snippets: list[str], controls: bool) -> str:
    """Fragments of every kind joined by whitespace, wrapped in whitespace that strip removes."""
    kinds = [
        lambda: " ".join(rng.choice(WORDS[rng.choice(sorted(WORDS))]) for _ in range(rng.randint(1, 8))),
        lambda: rng.choice(TRICKY),
        lambda: rng.choice(snippets),
        lambda: str(rng.randint(0, 10 ** rng.randint(1, 20))),
        lambda: rng.choice(["🙂", "👍🏽", "👨‍👩‍👧", "🇫🇷", "e\u0301", "𠜎"]),
        lambda: rng.choice(TAGS_AS_TEXT),
        lambda: random_unicode(rng, rng.randint(1, 6)),
    ]
    if controls:
        kinds.append(lambda: rng.choice(CONTROL_STRINGS + ["a</s>b", "</s><s>[INST] ", "<s>[INST]"]))
    body = "".join(rng.choice(kinds)() + rng.choice(SEPARATORS) for _ in range(rng.randint(0, 5)))
    return rng.choice(STRIPPED_WHITESPACE) + body + rng.choice(STRIPPED_WHITESPACE)


def dialogue(rng: random.Random, snippets: list[str], *, ending: str, controls: bool = False) -> list[dict]:
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": message_text(rng, snippets, controls)})
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": message_text(rng, snippets, controls)})
        messages.append({"role": "assistant", "content": message_text(rng, snippets, controls)})
    if ending == "user":
        messages.append({"role": "user", "content": message_text(rng, snippets, controls)})
    return messages


def dialogues(seed: int, count: int, *, ending: str, controls: bool = False) -> list[list[dict]]:
    rng, snippets = random.Random(seed), code_snippets()
    return [dialogue(rng, snippets, ending=ending, controls=controls) for _ in range(count)]


def meta_reference(tokenizer, messages: list[dict]) -> list[int]:
    """Meta's chat_completion structure: system into the first user text, each pair encoded alone."""
    if messages[0]["role"] == "system":
        first = "<<SYS>>\n" + messages[0]["content"] + "\n<</SYS>>\n\n" + messages[1]["content"]
        messages = [{"role": "user", "content": first}, *messages[2:]]
    ids = []
    for user, answer in zip(messages[0::2], messages[1::2]):
        ids += tokenizer.encode(f"[INST] {user['content'].strip()} [/INST] {answer['content'].strip()} ", True, True)
    if messages[-1]["role"] == "user":
        ids += tokenizer.encode(f"[INST] {messages[-1]['content'].strip()} [/INST]", True, False)
    return ids


def answer_spans(example: ChatExample) -> list[list[int]]:
    spans, current = [], []
    for token_id, trained in zip(example.ids, example.loss_mask):
        if trained:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(training_texts(), tmp_path_factory.mktemp("chat"), vocab_size=2000)


@pytest.fixture(scope="module")
def hf(tokenizer, tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(export_hf(tokenizer, tmp_path_factory.mktemp("chat-hf")))


def test_the_ids_are_metas_pairs_each_encoded_alone(tokenizer):
    for messages in dialogues(1, 300, ending="assistant", controls=True):
        assert encode_dialogue(tokenizer, messages).ids == meta_reference(tokenizer, messages)
    for messages in dialogues(2, 300, ending="user", controls=True):
        assert encode_prompt(tokenizer, messages) == meta_reference(tokenizer, messages)


def test_a_system_message_goes_inside_the_first_user_text_and_only_the_whole_is_stripped(tokenizer):
    messages = [
        {"role": "system", "content": "  Be brief.\t"},
        {"role": "user", "content": "\n  Hi there  \n"},
        {"role": "assistant", "content": " Hello!\n"},
        {"role": "user", "content": " And\tnow? "},
    ]
    first = "[INST] <<SYS>>\n  Be brief.\t\n<</SYS>>\n\n\n  Hi there [/INST] Hello! "
    assert encode_prompt(tokenizer, messages) == (
        tokenizer.encode(first, True, True) + tokenizer.encode("[INST] And\tnow? [/INST]", True, False))
    ids = encode_dialogue(tokenizer, messages[:3]).ids
    assert ids == tokenizer.encode(first, True, True)
    # SentencePiece's dummy prefix after BOS, which the Llama 2 template on the hub drops
    assert tokenizer.piece(ids[1]).startswith("▁")


def test_the_loss_mask_is_each_answer_and_its_eos_and_control_strings_in_text_stay_text(tokenizer):
    for messages in dialogues(3, 300, ending="assistant", controls=True):
        example = encode_dialogue(tokenizer, messages)
        answers = [message["content"] for message in messages if message["role"] == "assistant"]
        spans = answer_spans(example)
        assert len(spans) == len(answers)
        for span, answer in zip(spans, answers):
            assert span[-1] == tokenizer.eos_id
            # SentencePiece decodes "▁" typed in a text as a space, like the space it stands for
            assert tokenizer.decode(span[:-1]) == f"{answer.strip()} ".replace("\u2581", " ")
        pair_starts = [i for i, trained in enumerate(example.loss_mask) if i == 0 or (example.loss_mask[i - 1] and not trained)]
        assert [i for i, token_id in enumerate(example.ids) if token_id == tokenizer.bos_id] == pair_starts
        answer_ends = [i for i, trained in enumerate(example.loss_mask)
                       if trained and (i + 1 == len(example.ids) or not example.loss_mask[i + 1])]
        assert [i for i, token_id in enumerate(example.ids) if token_id == tokenizer.eos_id] == answer_ends
        assert tokenizer.unk_id not in example.ids


def test_a_prompt_is_the_untrained_prefix_its_answered_dialogue_starts_with(tokenizer):
    for messages in dialogues(4, 200, ending="assistant"):
        prompt = encode_prompt(tokenizer, messages[:-1])
        example = encode_dialogue(tokenizer, messages)
        assert example.ids[:len(prompt)] == prompt
        assert not example.loss_mask[len(prompt) - 1] and all(example.loss_mask[len(prompt):])
        assert tokenizer.decode(example.ids[len(prompt):]) == tokenizer.decode(answer_spans(example)[-1])


def test_last_answer_only_trains_the_last_answer_and_its_eos_on_the_same_ids(tokenizer):
    for messages in dialogues(5, 200, ending="assistant", controls=True):
        every = encode_dialogue(tokenizer, messages)
        last = encode_dialogue(tokenizer, messages, last_answer_only=True)
        prompt = encode_prompt(tokenizer, messages[:-1])
        assert last.ids == every.ids == meta_reference(tokenizer, messages)
        assert last.loss_mask == [False] * len(prompt) + [True] * (len(every.ids) - len(prompt))
        assert last.ids[-1] == tokenizer.eos_id and answer_spans(last) == answer_spans(every)[-1:]
        # the earlier answers, trained by default, are context only
        answers = sum(m["role"] == "assistant" for m in messages)
        if answers > 1:
            assert sum(every.loss_mask) > sum(last.loss_mask)


def test_apply_chat_template_gives_the_same_ids(tokenizer, hf):
    compared = 0
    for messages in dialogues(5, 300, ending="assistant"):
        got = hf.apply_chat_template(messages, tokenize=True, **NO_SPLIT_SPECIALS)["input_ids"]
        assert got == encode_dialogue(tokenizer, messages).ids, messages
        compared += 1
    for messages in dialogues(6, 300, ending="user"):
        expected = encode_prompt(tokenizer, messages)
        for add_generation_prompt in (True, False):
            got = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                         **NO_SPLIT_SPECIALS)["input_ids"]
            assert got == expected, messages
            compared += 1
    assert compared == 900


@pytest.mark.parametrize("control", CONTROL_STRINGS)
@pytest.mark.parametrize("where", [0, 1, 2])
def test_the_template_refuses_a_control_token_that_encode_dialogue_keeps_as_text(tokenizer, hf, control, where):
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "ok"}]
    messages[where] = {**messages[where], "content": f"see{control} here"}
    with pytest.raises(jinja2.exceptions.TemplateError, match=f"message {where} contains the control token {control}"):
        hf.apply_chat_template(messages, tokenize=True, **NO_SPLIT_SPECIALS)
    ids = encode_dialogue(tokenizer, messages).ids
    assert ids.count(tokenizer.bos_id) == ids.count(tokenizer.eos_id) == 1 and tokenizer.unk_id not in ids


def test_the_exports_default_keeps_every_string_as_text_on_the_chat_path_too(tokenizer, hf):
    """Why the template needs split_special_tokens=False: by default not even its own BOS is matched."""
    for messages in dialogues(7, 20, ending="assistant"):
        ids = hf(hf.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        assert not {tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id} & set(ids)


def test_a_merge_across_prompt_and_answer_trains_the_merged_token(tmp_path):
    """Without whitespace and script splits, "INST]▁Sure▁thing" is one piece: it counts as answer."""
    lines = synthetic_corpus() + ["[INST] what now [/INST] Sure thing"] * 300
    tokenizer = train_tokenizer(lines, tmp_path, vocab_size=900, split_by_whitespace=False,
                                split_by_unicode_script=False)
    prompt = tokenizer.encode("[INST] what now [/INST]", True, False)
    messages = [{"role": "user", "content": " what now\n"}, {"role": "assistant", "content": "Sure thing"}]
    example = encode_dialogue(tokenizer, messages)
    assert example.ids[:len(prompt)] != prompt, "the boundary should merge for this test to mean anything"
    untrained = example.loss_mask.index(True)
    assert example.ids[:untrained] == prompt[:untrained] and example.ids[untrained] != prompt[untrained]
    assert all(example.loss_mask[untrained:]) and example.ids[-1] == tokenizer.eos_id
    assert "]" in tokenizer.piece(example.ids[untrained]) and "Sure" in tokenizer.piece(example.ids[untrained])
    assert tokenizer.decode(example.ids[untrained:]).endswith("] Sure thing ")
    assert example == encode_dialogue(tokenizer, messages)


MALFORMED = [
    ([{"role": "system", "content": "sys"}], "no user message", "no user message"),
    ([{"role": "assistant", "content": "a"}], r"message 0 is 'assistant' where 'user' belongs",
     "message 0 is assistant where user belongs"),
    ([{"role": "user", "content": "u"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}],
     r"message 1 is 'user' where 'assistant' belongs", "message 1 is user where assistant belongs"),
    ([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "system", "content": "s"},
      {"role": "assistant", "content": "a"}], r"message 2 is 'system' where 'user' belongs",
     "message 2 is system where user belongs"),
    ([{"role": "system", "content": "s"}, {"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
     r"message 1 is 'system' where 'user' belongs", "message 1 is system where user belongs"),
    ([{"role": "user", "content": "u"}, {"role": "bot", "content": "a"}], "message 1 has unknown role 'bot'",
     "message 1 has unknown role bot"),
    ([{"role": "user", "content": ["u"]}, {"role": "assistant", "content": "a"}], "message 0 content is list, not text",
     "message 0 content is not text"),
]


@pytest.mark.parametrize("messages, python_error, template_error", MALFORMED)
def test_a_dialogue_out_of_shape_is_refused_by_name(tokenizer, hf, messages, python_error, template_error):
    with pytest.raises(ValueError, match=python_error):
        encode_dialogue(tokenizer, messages)
    with pytest.raises(ValueError, match=python_error):
        encode_prompt(tokenizer, messages)
    with pytest.raises(jinja2.exceptions.TemplateError, match=template_error):
        hf.apply_chat_template(messages, tokenize=False)


def test_each_function_refuses_the_other_ones_ending(tokenizer, hf):
    answered = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ValueError, match=r"last message is 'user', not 'assistant' \(see encode_prompt\)"):
        encode_dialogue(tokenizer, answered + [{"role": "user", "content": "u"}])
    with pytest.raises(ValueError, match=r"last message is 'assistant', not 'user' \(see encode_dialogue\)"):
        encode_prompt(tokenizer, answered)
    with pytest.raises(ValueError, match="not a mapping with 'role' and 'content'"):
        encode_dialogue(tokenizer, [{"content": "u"}, answered[1]])
    with pytest.raises(jinja2.exceptions.TemplateError, match="add_generation_prompt .* ends with an assistant"):
        hf.apply_chat_template(answered, add_generation_prompt=True, tokenize=False)
    with pytest.raises(ValueError, match="0 ids but 1 loss mask entries"):
        ChatExample([], [True])


def test_the_export_puts_the_template_where_transformers_reads_it(tokenizer, hf, tmp_path):
    folder = export_hf(tokenizer, tmp_path)
    assert json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"] == CHAT_TEMPLATE
    assert hf.chat_template == CHAT_TEMPLATE
