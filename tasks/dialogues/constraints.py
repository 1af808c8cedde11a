"""Synthetic system instructions for Ghost Attention (Llama 2, 3.3), each with a checker.

A :class:`Constraint` is an instruction a chat model is to keep for a whole dialogue, of four
kinds, as in the paper: a language ("Always answer in French."), an answer form (capital letters,
a fixed opening word, at most N words, a closing exclamation mark), a persona and a hobby. The
paper's personas and hobbies are judged by people; ours carry a mark a rule can check: a persona
names a signature word its answers must use ("Act as a pirate and say 'arr' in every answer."),
a hobby must be mentioned by name. ``follows(answer)`` tells whether one answer keeps it.

Checkers, and what they cannot tell:

- language: fastText lid.176 (`tasks.language.detect_language`) must give the language with a
  score of at least :data:`LANGUAGE_MIN_SCORE`, on an answer with at least
  :data:`LANGUAGE_MIN_LETTERS` letters. On a few words lid.176 is unsure or wrong ("ja" is
  Finnish to it, "Answer: 4" German, "kiwi plum fig" English at 0.34), so a short right answer
  can fail and a sentence of loanwords pass; numbers and names alone never pass.
- forms: exact rules on the answer with its outer whitespace stripped; an empty answer follows
  none of them (it answers nothing). Capital letters: at least one letter and no lowercase one
  (digits and punctuation are free). The opening word is case-sensitive. A word is a run of
  letters, digits and apostrophes, so punctuation alone counts no words.
- persona and hobby: the mark as a whole word, in any case ("Arr!" and "ARR" count; "carry" does not).

Every constraint has a stable ``id`` (``kind:detail``, as ``language:fr`` or ``form:max_words:5``)
from which :func:`constraint_by_id` rebuilds it; :func:`draw_constraint` draws one from a seeded
``random.Random``, each kind equally likely, then each constraint of the kind equally likely.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tasks.language import detect_language

KINDS = ("language", "form", "persona", "hobby")
LANGUAGES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese"}
LANGUAGE_MIN_SCORE = 0.5
LANGUAGE_MIN_LETTERS = 8
PREFIX = "Answer:"
MAX_WORDS = (1, 3, 5, 10)
# persona -> (description, the word its answers must use)
PERSONAS = {
    "pirate": ("a pirate", "arr"),
    "shakespeare": ("Shakespeare", "thou"),
    "robot": ("a robot", "beep"),
    "cowboy": ("a cowboy", "howdy"),
}
HOBBIES = ("tennis", "chess", "gardening", "painting", "hiking", "cooking", "surfing", "jazz")
WORD = re.compile(r"[\w']+")


@dataclass(frozen=True)
class Constraint:
    """An instruction (``text``) of a ``kind``, named by ``id``; ``rule`` is its checker."""

    id: str
    kind: str
    text: str
    rule: Callable[[str], bool] = field(compare=False, repr=False)

    def follows(self, answer: str) -> bool:
        return bool(self.rule(answer))


def follows_language(code: str) -> Callable[[str], bool]:
    def rule(answer: str) -> bool:
        text = " ".join(answer.split())  # lid.176 reads one line
        if sum(c.isalpha() for c in text) < LANGUAGE_MIN_LETTERS:
            return False
        language, score = detect_language(text)
        return language == code and score >= LANGUAGE_MIN_SCORE
    return rule


def in_capitals(answer: str) -> bool:
    return any(c.isalpha() for c in answer) and not any(c.islower() for c in answer)


def starts_with_prefix(answer: str) -> bool:
    return answer.strip().startswith(PREFIX)


def at_most_words(limit: int) -> Callable[[str], bool]:
    return lambda answer: 1 <= len(WORD.findall(answer)) <= limit


def ends_with_exclamation(answer: str) -> bool:
    text = answer.strip()
    return text.endswith("!") and bool(text.rstrip("!").strip())


def uses_word(word: str) -> Callable[[str], bool]:
    pattern = re.compile(rf"(?<![\w']){re.escape(word)}(?![\w'])", re.IGNORECASE)
    return lambda answer: pattern.search(answer) is not None


def _language(code: str) -> Constraint:
    return Constraint(f"language:{code}", "language", f"Always answer in {LANGUAGES[code]}.", follows_language(code))


def _forms() -> list[Constraint]:
    forms = [
        Constraint("form:capitals", "form", "Answer in capital letters only.", in_capitals),
        Constraint("form:prefix", "form", f"Start every answer with '{PREFIX}'.", starts_with_prefix),
        Constraint("form:exclamation", "form", "End every answer with an exclamation mark.", ends_with_exclamation),
    ]
    for limit in MAX_WORDS:
        words = "word" if limit == 1 else "words"
        forms.append(Constraint(f"form:max_words:{limit}", "form", f"Answer in at most {limit} {words}.",
                                at_most_words(limit)))
    return forms


def _persona(name: str) -> Constraint:
    who, word = PERSONAS[name]
    return Constraint(f"persona:{name}", "persona", f"Act as {who} and say '{word}' in every answer.", uses_word(word))


def _hobby(hobby: str) -> Constraint:
    return Constraint(f"hobby:{hobby}", "hobby", f"You love {hobby}: mention {hobby} in every answer.", uses_word(hobby))


def all_constraints(kinds: Sequence[str] = KINDS) -> dict[str, list[Constraint]]:
    """kind -> its constraints, in a fixed order."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown or no constraint kinds {unknown or list(kinds)}; kinds are {', '.join(KINDS)}")
    made = {
        "language": [_language(code) for code in LANGUAGES],
        "form": _forms(),
        "persona": [_persona(name) for name in PERSONAS],
        "hobby": [_hobby(hobby) for hobby in HOBBIES],
    }
    return {kind: made[kind] for kind in KINDS if kind in kinds}


def draw_constraint(rng: random.Random, kinds: Sequence[str] = KINDS) -> Constraint:
    """A kind drawn uniformly from ``kinds``, then one of its constraints uniformly."""
    by_kind = all_constraints(kinds)
    return rng.choice(by_kind[rng.choice(sorted(by_kind))])


def constraint_by_id(constraint_id: str) -> Constraint:
    for constraints in all_constraints().values():
        for constraint in constraints:
            if constraint.id == constraint_id:
                return constraint
    raise ValueError(f"no constraint {constraint_id!r}")
