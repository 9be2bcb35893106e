"""Core task types and helpers shared by the task generators."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ragsoup.errors import RagsoupError


@dataclass
class SoupExample:
    """One souping example: k passages (in feed order), a question, its answer and gold passages."""

    docs: list[str]
    question: str
    answer: str
    gold: list[int]
    # Every acceptable answer string (SQuAD / HotpotQA may list several); always contains
    # ``answer`` first. Filled in automatically when left empty.
    answers: list[str] = field(default_factory=list)
    # Further (question, answer) pairs answerable from the same docs (other needles' keys), so that
    # training can supervise several questions per soup at the cost of one encode.
    extra: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.answers:
            self.answers = [self.answer]
        elif self.answers[0] != self.answer:
            self.answers = [self.answer] + [a for a in self.answers if a != self.answer]


@runtime_checkable
class PassageSource(Protocol):
    """Anything that can produce a digit-free filler passage of about n_chars characters."""

    def passage(self, rng: random.Random, n_chars: int) -> str:
        """Return a filler passage of roughly n_chars characters."""
        ...

    def describe(self) -> str:
        """Return a one-line description of where the filler comes from."""
        ...


# ---------------------------------------------------------------------------
# Sentence handling
# ---------------------------------------------------------------------------

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019])\s+")
_ABBREV = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Sr|Jr|Mt|Capt|Col|Gen|Rev|Prof|Hon|vs|etc|viz|cf)|\b[A-Z])\.$")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at ., ! or ? followed by whitespace (common abbreviations kept)."""
    pieces = [p for p in _SENT_SPLIT.split(text.strip()) if p]
    out: list[str] = []
    for piece in pieces:
        if out and _ABBREV.search(out[-1]):
            out[-1] = out[-1] + " " + piece
        else:
            out.append(piece)
    return out


def insert_sentence(rng: random.Random, passage: str, sentence: str) -> str:
    """Insert sentence at a uniformly random sentence boundary of passage (start and end included)."""
    sentences = split_sentences(passage)
    pos = rng.randint(0, len(sentences))
    sentences.insert(pos, sentence)
    return " ".join(sentences)


def embed_sentences(rng: random.Random, source: PassageSource, sentences: list[str], passage_chars: int) -> str:
    """Return a filler passage of about passage_chars characters holding each sentence at a random boundary."""
    body = source.passage(rng, max(passage_chars - sum(len(s) + 1 for s in sentences), 0))
    for sentence in sentences:
        body = insert_sentence(rng, body, sentence) if body else sentence
    return body


def embed_sentence(rng: random.Random, source: PassageSource, sentence: str, passage_chars: int) -> str:
    """Return a filler passage of about passage_chars characters holding sentence at a random boundary."""
    return embed_sentences(rng, source, [sentence], passage_chars)


def check_passage_chars(passage_chars: int) -> None:
    """Raise RagsoupError unless passage_chars is a positive int."""
    if isinstance(passage_chars, bool) or not isinstance(passage_chars, int) or passage_chars < 1:
        raise RagsoupError(f"passage_chars must be a positive integer; got {passage_chars!r}")


def shuffle_with_gold(
    rng: random.Random, docs: list[str], gold: Iterable[int]
) -> tuple[list[str], list[int]]:
    """Shuffle docs and return (shuffled docs, sorted new indices of the gold docs)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    new_pos = {old: new for new, old in enumerate(order)}
    return [docs[i] for i in order], sorted(new_pos[g] for g in gold)


def check_k(k: int, minimum: int = 1, what: str = "k") -> None:
    """Raise RagsoupError unless k is an int >= minimum."""
    if isinstance(k, bool) or not isinstance(k, int) or k < minimum:
        raise RagsoupError(f"{what} must be an integer >= {minimum}; got {k!r}")


# ---------------------------------------------------------------------------
# Made-up names
# ---------------------------------------------------------------------------

_ONSETS = (
    "b", "br", "bl", "c", "ch", "cr", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j",
    "k", "kr", "l", "m", "n", "p", "pr", "pl", "qu", "r", "s", "sh", "sk", "sl", "sn", "st",
    "t", "th", "tr", "v", "w", "z", "",
)
_MIDDLES = (
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "l", "n", "r", "s",
    "nd", "nt", "rb", "rd", "rm", "rn", "lv", "lb", "st", "sk", "th", "sh", "br", "tr", "dr",
    "gr", "ld", "mb", "nc",
)
_LINKS = ("b", "d", "g", "l", "m", "n", "r", "s", "t", "v", "z", "nd", "rd", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "e", "ai", "ei", "ou", "au", "ea")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "nd", "rn", "lt", "rk", "st", "th", "x", "nt")
_ENDINGS = ("e", "a", "o", "in", "en", "ar", "el", "is", "ane", "ora", "ith", "ock")


class NameGenerator:
    """Generates distinct pronounceable made-up words; no word is a substring of another."""

    def __init__(self, forbidden: Iterable[str] = ()) -> None:
        self._forbidden = {w.lower() for w in forbidden}
        self._used: set[str] = set()
        self._substrings: set[str] = set()

    def _contains_used(self, t: str) -> bool:
        """True when a reserved word (3+ letters) lies inside the lowercase string t."""
        n = len(t)
        return any(t[i:j] in self._used for i in range(n) for j in range(i + 3, n + 1))

    def _ok(self, token: str) -> bool:
        t = token.lower()
        if len(t) < 3 or t in self._forbidden or t in self._substrings:
            return False
        return not self._contains_used(t)

    def reserve(self, token: str) -> bool:
        """Mark token as used; return False (and reserve nothing) if it clashes with an earlier one."""
        if not self._ok(token):
            return False
        t = token.lower()
        self._used.add(t)
        n = len(t)
        self._substrings.update(t[i:j] for i in range(n) for j in range(i + 1, n + 1))
        return True

    def can_end_with(self, suffix: str) -> bool:
        """False when a reserved word lies inside ``suffix``, so that every word ending in it would clash."""
        return not self._contains_used(suffix.lower())

    def raw_word(self, rng: random.Random, min_syl: int = 2, max_syl: int = 3, final: bool = True) -> str:
        """Return a random pronounceable lowercase word (not reserved, may clash)."""
        n_syl = rng.randint(min_syl, max_syl)
        word = rng.choice(_ONSETS) + rng.choice(_VOWELS)
        for _ in range(n_syl - 1):
            word += rng.choice(_MIDDLES) + rng.choice(_VOWELS)
        if final:
            word += rng.choice(_CODAS) if rng.random() < 0.6 else rng.choice(_ENDINGS)
        return re.sub(r"([aiuy])\1+", r"\1", re.sub(r"(.)\1\1+", r"\1\1", word))

    def word(
        self,
        rng: random.Random,
        min_syl: int = 2,
        max_syl: int = 3,
        suffix: str = "",
        max_len: int = 11,
        max_tries: int = 10_000,
    ) -> str:
        """Return a fresh reserved made-up lowercase word (optionally ending in a fixed suffix)."""
        for _ in range(max_tries):
            candidate = self.raw_word(rng, min_syl, max_syl, final=not suffix)
            if suffix[:1] in ("a", "e", "i", "o", "u"):
                candidate += rng.choice(_LINKS)
            candidate = re.sub(r"([aiuy])\1+", r"\1", candidate + suffix)
            if len(candidate) > max_len + len(suffix):
                continue
            if self.reserve(candidate):
                return candidate
        raise RagsoupError("could not generate a fresh made-up name; the name space is exhausted")

    def name(
        self, rng: random.Random, min_syl: int = 2, max_syl: int = 3, suffix: str = "", max_len: int = 11
    ) -> str:
        """Return a fresh reserved made-up word with a capital first letter."""
        return self.word(rng, min_syl, max_syl, suffix, max_len=max_len).capitalize()
