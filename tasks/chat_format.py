"""Llama 2's chat format, token for token as Meta's reference `chat_completion` builds it.

A dialogue is an optional system message, then user and assistant messages alternating, starting
with the user. Each user/assistant pair is one SentencePiece encoding, with BOS and EOS:
`encode(f"[INST] {user} [/INST] {answer} ", bos=True, eos=True)`, user and answer stripped; the
pairs' ids are concatenated. The system message goes inside the first user message as
`"<<SYS>>\\n" + system + "\\n<</SYS>>\\n\\n" + user`, and the strip applies to that whole text, so
(as in Meta's code) the system text keeps its own outer whitespace and a user text after it keeps
its leading whitespace. A prompt for generation ends in a user message, encoded
`encode(f"[INST] {user} [/INST]", bos=True, eos=False)`. Because every pair is encoded on its own,
each starts with BOS and SentencePiece's dummy prefix ("<s>" "▁[" ...). Tags and control pieces
typed inside a message are text, as they are to SentencePiece.

The loss mask marks each answer with its closing EOS (with `last_answer_only`, only the last
answer: Ghost Attention's training dialogues, whose earlier turns are context only). The answer's first token is found by
construction: the pair's ids are compared with the ids of its prompt part
(`f"[INST] {user} [/INST]"`) encoded alone, never by looking for "[/INST]" in the ids (whose
pieces depend on the text before them). With LLaMA's trainer settings (split by whitespace and
by script) no piece spans "]" and the space after it, so the prompt part's ids are a prefix of
the pair's. A model trained without those splits can merge across the boundary; then the answer
starts at the first token where the two encodings part ways, so a token holding both the end of
"[/INST]" and the start of the answer is trained on: every answer character is supervised.

`CHAT_TEMPLATE` gives the same ids through Hugging Face's `apply_chat_template` on the tokenizer
`tasks.tokenizer.export_hf` writes. That export keeps "<s>", "</s>" and "<unk>" in any text as
text (split_special_tokens), which holds for the template's own BOS and EOS too: the only way to
text-encode to a control id is a special token matched in the text, and matching cannot tell the
template's "</s>" from a user's. So a caller asks for the matching, and the template refuses any
message that spells a control token, which would otherwise become one:

    tokenizer.apply_chat_template(messages, tokenizer_kwargs={"split_special_tokens": False})

Messages spelling control tokens are encoded (as text, exactly) by `encode_dialogue` and
`encode_prompt`. Each pair after a matched special token is a separate piece of text to the Rust
tokenizer, which prepends the dummy prefix to each: "<s>" "▁[", as in Meta's code (the template
published for Llama 2 on the Hugging Face hub gives "<s>" "[" with the hub's tokenizer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tasks.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
ROLES = ("system", "user", "assistant")
SHAPE = "an optional system message, then user and assistant messages alternating, starting with user"


@dataclass(frozen=True)
class ChatExample:
    """A dialogue's ids and, per id, whether it is an assistant's (answer tokens and their EOS)."""

    ids: list[int]
    loss_mask: list[bool]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.loss_mask):
            raise ValueError(f"{len(self.ids)} ids but {len(self.loss_mask)} loss mask entries")


def encode_dialogue(tokenizer: Tokenizer, messages: Iterable[Mapping[str, str]], *,
                    last_answer_only: bool = False) -> ChatExample:
    """The ids of a dialogue that ends with an assistant message, and its loss mask: every answer
    and its EOS, or with `last_answer_only` the last answer and its EOS alone (the ids are the same)."""
    users, answers = _pairs(messages, last_role="assistant")
    ids: list[int] = []
    loss_mask: list[bool] = []
    for n, (user, answer) in enumerate(zip(users, answers)):
        pair = tokenizer.encode(f"{B_INST} {user} {E_INST} {answer} ", bos=True, eos=True)
        ids += pair
        if last_answer_only and n < len(answers) - 1:
            loss_mask += [False] * len(pair)
            continue
        prompt = tokenizer.encode(f"{B_INST} {user} {E_INST}", bos=True, eos=False)
        answer_start = _common_prefix_length(prompt, pair)
        loss_mask += [False] * answer_start + [True] * (len(pair) - answer_start)
    return ChatExample(ids, loss_mask)


def encode_prompt(tokenizer: Tokenizer, messages: Iterable[Mapping[str, str]]) -> list[int]:
    """The ids to generate the next answer from: a dialogue that ends with a user message."""
    users, answers = _pairs(messages, last_role="user")
    ids: list[int] = []
    for user, answer in zip(users, answers):
        ids += tokenizer.encode(f"{B_INST} {user} {E_INST} {answer} ", bos=True, eos=True)
    return ids + tokenizer.encode(f"{B_INST} {users[-1]} {E_INST}", bos=True, eos=False)


def _pairs(messages: Iterable[Mapping[str, str]], *, last_role: str) -> tuple[list[str], list[str]]:
    """The user texts (the system message inside the first) and the answers, stripped as Meta does."""
    messages = list(messages)
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index} is not a mapping with 'role' and 'content': {message!r}")
        if message["role"] not in ROLES:
            raise ValueError(f"message {index} has unknown role {message['role']!r} (roles: {', '.join(ROLES)})")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {index} content is {type(message['content']).__name__}, not text")
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    offset = len(messages) - len(turns)
    if not turns:
        raise ValueError(f"the dialogue has no user message; Llama 2's format needs {SHAPE}")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"message {index + offset} is {message['role']!r} where {expected!r} belongs: "
                             f"Llama 2's format needs {SHAPE}")
    if turns[-1]["role"] != last_role:
        use = "encode_prompt" if last_role == "assistant" else "encode_dialogue"
        raise ValueError(f"the dialogue's last message is {turns[-1]['role']!r}, not {last_role!r} (see {use})")
    users = [message["content"] for message in turns[0::2]]
    if system is not None:
        users[0] = B_SYS + system + E_SYS + users[0]
    return [user.strip() for user in users], [message["content"].strip() for message in turns[1::2]]


def _common_prefix_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


# Jinja's str.strip is Python's, so the template strips exactly the whitespace `_pairs` strips.
CHAT_TEMPLATE = (
    "{%- if bos_token is not defined or eos_token is not defined -%}"
    "{{ raise_exception('Llama 2 chat format: the tokenizer has no BOS or no EOS token') }}"
    "{%- endif -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}{%- set offset = 1 -%}"
    "{%- else -%}"
    "{%- set system = none -%}{%- set turns = messages -%}{%- set offset = 0 -%}"
    "{%- endif -%}"
    "{%- if not turns -%}"
    "{{ raise_exception('Llama 2 chat format: the dialogue has no user message; it needs " + SHAPE + "') }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set index = loop.index0 -%}"
    "{%- if message['role'] not in " + repr(list(ROLES)) + " -%}"
    "{{ raise_exception('Llama 2 chat format: message ' ~ index ~ ' has unknown role ' ~ message['role']) }}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{ raise_exception('Llama 2 chat format: message ' ~ index ~ ' content is not text') }}"
    "{%- endif -%}"
    # with special tokens matched, a control token spelled in a message would become that token
    "{%- for control in (bos_token, eos_token, unk_token) -%}"
    "{%- if control is defined and control and control in message['content'] -%}"
    "{{ raise_exception('Llama 2 chat format: message ' ~ index ~ ' contains the control token '"
    " ~ control ~ ', which this template would let the tokenizer match; encode it with tasks.chat_format') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endfor -%}"
    "{%- for message in turns -%}"
    "{%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}"
    "{%- if message['role'] != expected -%}"
    "{{ raise_exception('Llama 2 chat format: message ' ~ (loop.index0 + offset) ~ ' is ' ~ message['role']"
    " ~ ' where ' ~ expected ~ ' belongs; it needs " + SHAPE + "') }}"
    "{%- endif -%}"
    "{%- if expected == 'user' -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set user = " + repr(B_SYS) + " + system + " + repr(E_SYS) + " + message['content'] -%}"
    "{%- else -%}"
    "{%- set user = message['content'] -%}"
    "{%- endif -%}"
    "{{- bos_token + '" + B_INST + " ' + user.strip() + ' " + E_INST + "' -}}"
    "{%- else -%}"
    "{{- ' ' + message['content'].strip() + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    # Llama 2's user turn already ends in the answer's cue, so a dialogue ending in a user message is
    # the generation prompt with or without add_generation_prompt; after an answer there is none.
    "{%- if add_generation_prompt and turns[-1]['role'] != 'user' -%}"
    "{{ raise_exception('Llama 2 chat format: add_generation_prompt on a dialogue that ends with an "
    "assistant message; a prompt ends with a user message') }}"
    "{%- endif -%}"
)
