"""RULER-style needle-in-a-haystack tasks over digit-free filler passages.

Needle sentence: ``"The special magic number for {KEY} is {VALUE}."``, inserted at a random
sentence boundary of one filler passage (that passage's filler is shortened by the needle's
length so every passage is about ``passage_chars`` long).

- KEY: either a made-up pronounceable word ("velbrane") or an adjective-noun pair
  ("crimson lantern") whose words never occur in the template filler's vocabulary.
  Keys are distinct within an example / corpus and none is a substring of another.
- VALUE: a 6-digit decimal number in [100000, 999999] (never a leading zero), distinct
  within an example / corpus.

Variants: "single", "multikey", "distractor", "multivalue", "packed" (see ``needle_example``).

Word values (``values="word"``, training tasks ``needle-word`` and ``needle-word-distractor``): the needle reads
``"The special magic word for {KEY} is {WORD}."`` with WORD a made-up capitalised name like the two-hop task's
cities and countries, so that copying a name out of a soup is practised where the lookup is a single fact.
"""

from __future__ import annotations

import random

from ragsoup.errors import RagsoupError
from ragsoup.tasks.base import (
    NameGenerator,
    PassageSource,
    SoupExample,
    check_k,
    check_passage_chars,
    embed_sentence,
    embed_sentences,
    shuffle_with_gold,
)
from ragsoup.tasks.filler import VOCABULARY, FillerSource, make_title

VARIANTS: tuple[str, ...] = ("single", "multikey", "distractor", "multivalue")  # corpus and example variants
EXAMPLE_VARIANTS: tuple[str, ...] = VARIANTS + ("packed",)  # "packed" has no corpus form
NEEDLE_TEMPLATE = "The special magic number for {key} is {value}."
QUESTION_TEMPLATE = "What is the special magic number for {key}?"
MULTIVALUE_QUESTION_TEMPLATE = "What are all the special magic numbers for {key}?"
WORD_NEEDLE_TEMPLATE = "The special magic word for {key} is {value}."
WORD_QUESTION_TEMPLATE = "What is the special magic word for {key}?"
# value kind -> (needle sentence, question) templates
_TEMPLATES: dict[str, tuple[str, str]] = {
    "number": (NEEDLE_TEMPLATE, QUESTION_TEMPLATE),
    "word": (WORD_NEEDLE_TEMPLATE, WORD_QUESTION_TEMPLATE),
}
VALUE_KINDS: tuple[str, ...] = tuple(_TEMPLATES)
MAX_DISTRACTORS = 3
DEFAULT_N_VALUES = 4

_KEY_ADJECTIVES: tuple[str, ...] = (
    "crimson", "amber", "azure", "scarlet", "violet", "indigo", "ivory", "ebony", "copper-red",
    "emerald", "jade", "cobalt", "saffron", "maroon", "turquoise", "lavender", "obsidian",
    "velvet", "frozen", "silent", "hollow", "brittle", "glassy", "rusty", "shiny", "sleek",
    "dizzy", "fuzzy", "jagged", "lucky", "nimble", "noisy", "odd", "polite", "proud", "rapid",
    "shy", "silly", "spotted", "striped", "tangled", "tender", "vivid", "wild", "wise", "zany",
    "cosmic", "electric", "lunar", "solar", "arctic", "tropical", "mossy", "misty-eyed", "royal",
    "secret", "tireless", "wobbly", "brave", "fierce",
)
_KEY_NOUNS: tuple[str, ...] = (
    "falcon", "lantern", "otter", "compass", "violin", "anchor", "badger", "beacon", "cactus",
    "comet", "dolphin", "ferret", "garnet", "glacier", "harp", "heron", "iguana", "jackal",
    "kettle", "koala", "lobster", "magnet", "marble", "meteor", "narwhal", "octopus", "panda",
    "parrot", "pelican", "penguin", "pepper", "piano", "pigeon", "puffin", "quartz", "raccoon",
    "raven", "robot", "rocket", "saddle", "sapphire", "scooter", "squirrel", "telescope",
    "tiger", "trumpet", "tulip", "turtle", "umbrella", "volcano", "walrus", "whistle", "yacht",
    "zebra", "zeppelin", "balloon", "giraffe", "hedgehog", "kangaroo", "mango", "pumpkin",
    "sparrow", "spider", "starfish", "thimble", "tortoise", "wizard", "unicorn", "dragon",
    "goblin", "kite", "oyster", "crayon", "notebook", "teapot", "bicycle", "flamingo", "moose",
)
KEY_ADJECTIVES: tuple[str, ...] = tuple(w for w in _KEY_ADJECTIVES if w not in VOCABULARY)
KEY_NOUNS: tuple[str, ...] = tuple(w for w in _KEY_NOUNS if w not in VOCABULARY)


def needle_sentence(key: str, value: str, values: str = "number") -> str:
    """Return the needle sentence for key and value (a number, or a made-up word with values="word")."""
    return _TEMPLATES[values][0].format(key=key, value=value)


def needle_question(key: str, values: str = "number") -> str:
    """Return the question asking for key's value."""
    return _TEMPLATES[values][1].format(key=key)


class _KeyValueSampler:
    """Draws distinct keys and distinct 6-digit values for one example or corpus."""

    def __init__(self) -> None:
        self.names = NameGenerator(forbidden=set(VOCABULARY) | set(KEY_ADJECTIVES) | set(KEY_NOUNS))
        self.keys: set[str] = set()
        self.values: set[str] = set()

    def key(self, rng: random.Random) -> str:
        """Return a fresh key: a made-up word or an adjective-noun pair."""
        for _ in range(1000):
            if rng.random() < 0.5:
                return self.names.word(rng)
            key = f"{rng.choice(KEY_ADJECTIVES)} {rng.choice(KEY_NOUNS)}"
            if key not in self.keys:
                self.keys.add(key)
                return key
        return self.names.word(rng)

    def value(self, rng: random.Random, kind: str = "number") -> str:
        """Return a fresh value: 6 digits with no leading zero, or (kind "word") a made-up capitalised name."""
        if kind == "word":
            return self.names.name(rng, 1, 3, max_len=9)
        while True:
            value = str(rng.randint(100_000, 999_999))
            if value not in self.values:
                self.values.add(value)
                return value


def _source(filler: PassageSource | None) -> PassageSource:
    return filler if filler is not None else FillerSource()


def _check_variant(variant: str, valid: tuple[str, ...] = VARIANTS) -> None:
    if variant not in valid:
        raise RagsoupError(f"unknown needle variant {variant!r}; valid variants: {', '.join(valid)}")


def needle_example(
    rng: random.Random,
    k: int,
    variant: str = "single",
    filler: PassageSource | None = None,
    passage_chars: int = 300,
    n_values: int = DEFAULT_N_VALUES,
    values: str = "number",
) -> SoupExample:
    """Return one needle-in-a-haystack example with k shuffled passages.

    Variants: "single" (one needle among k-1 filler passages); "multikey" (every passage
    holds a needle with a distinct key, one is asked); "distractor" (the gold needle plus
    min(k-1, 3) passages with needles of other keys); "multivalue" (one key with
    min(k, n_values) distinct values in different passages; the answer lists them joined
    by ", " in document order); "packed" (the gold needle and 1-3 needles of other keys in one and the
    same passage, plus k-1 filler passages: telling keys apart is needed even at k = 1). ``values``
    "word" makes every value a made-up name ("single" and "distractor" only).
    """
    check_k(k)
    _check_variant(variant, EXAMPLE_VARIANTS)
    if values not in VALUE_KINDS:
        raise RagsoupError(f"unknown needle values {values!r}; valid: {', '.join(VALUE_KINDS)}")
    if values == "word" and variant not in ("single", "distractor"):
        raise RagsoupError(f"word values are for the single and distractor variants, not {variant!r}")
    check_passage_chars(passage_chars)
    check_k(n_values, what="n_values")
    source = _source(filler)
    kv = _KeyValueSampler()
    key = kv.key(rng)

    if variant == "multivalue":
        n_needles = min(k, n_values)
        values = [kv.value(rng) for _ in range(n_needles)]
        tagged: list[tuple[str, str | None]] = [
            (embed_sentence(rng, source, needle_sentence(key, v), passage_chars), v) for v in values
        ]
        tagged += [(source.passage(rng, passage_chars), None) for _ in range(k - n_needles)]
        rng.shuffle(tagged)
        return SoupExample(
            docs=[d for d, _ in tagged],
            question=MULTIVALUE_QUESTION_TEMPLATE.format(key=key),
            answer=", ".join(v for _, v in tagged if v is not None),
            gold=[i for i, (_, v) in enumerate(tagged) if v is not None],
        )

    value = kv.value(rng, values)
    if variant == "packed":
        return _packed_example(rng, k, source, passage_chars, kv, key, value)
    docs = [embed_sentence(rng, source, needle_sentence(key, value, values), passage_chars)]
    if variant == "multikey":
        n_other = k - 1
    elif variant == "distractor":
        n_other = min(k - 1, MAX_DISTRACTORS)
    else:
        n_other = 0
    extra: list[tuple[str, str]] = []
    for _ in range(n_other):
        other_key = kv.key(rng)
        other_value = kv.value(rng, values)
        docs.append(embed_sentence(rng, source, needle_sentence(other_key, other_value, values), passage_chars))
        extra.append((needle_question(other_key, values), other_value))
    docs += [source.passage(rng, passage_chars) for _ in range(k - 1 - n_other)]
    docs, gold = shuffle_with_gold(rng, docs, [0])
    return SoupExample(docs=docs, question=needle_question(key, values), answer=value, gold=gold, extra=extra)


def _packed_example(
    rng: random.Random, k: int, source: PassageSource, passage_chars: int, kv: _KeyValueSampler, key: str, value: str
) -> SoupExample:
    """The "packed" variant: the asked needle and 1-3 other keys' needles in one passage, k-1 filler passages."""
    others = [(kv.key(rng), kv.value(rng)) for _ in range(1 + rng.randrange(MAX_DISTRACTORS))]
    sentences = [needle_sentence(key, value)] + [needle_sentence(o_key, o_value) for o_key, o_value in others]
    docs = [embed_sentences(rng, source, sentences, passage_chars)]
    docs += [source.passage(rng, passage_chars) for _ in range(k - 1)]
    docs, gold = shuffle_with_gold(rng, docs, [0])
    extra = [(needle_question(o_key), o_value) for o_key, o_value in others]
    return SoupExample(docs=docs, question=needle_question(key), answer=value, gold=gold, extra=extra)


def make_needle_corpus(
    n_passages: int,
    n_queries: int,
    seed: int,
    variant: str = "single",
    filler: PassageSource | None = None,
    passage_chars: int = 300,
    n_values: int = DEFAULT_N_VALUES,
) -> tuple[list[dict], list[dict]]:
    """Build one shared haystack corpus and the queries about its needles.

    Returns (records, queries): records are {"id", "title", "text"} in corpus order; queries
    are {"question", "answer", "gold_ids"} (gold_ids in corpus order). Variants: "single"
    (n_queries passages each hold one distinct-key needle, each is asked once); "multikey"
    (every passage holds a needle, n_queries of them are asked); "distractor" (as single, plus
    up to 3 * n_queries further passages with needles of keys nobody asks about);
    "multivalue" (each asked key has n_values values in different passages).
    """
    _check_variant(variant)
    check_passage_chars(passage_chars)
    check_k(n_passages, what="n_passages")
    check_k(n_queries, what="n_queries")
    check_k(n_values, what="n_values")
    per_query = n_values if variant == "multivalue" else 1
    if n_queries * per_query > n_passages:
        raise RagsoupError(
            f"n_queries * {per_query} = {n_queries * per_query} needle passages do not fit in "
            f"n_passages={n_passages}; lower n_queries or raise n_passages"
        )
    rng = random.Random(seed)
    source = _source(filler)
    kv = _KeyValueSampler()
    width = max(6, len(str(n_passages - 1)))
    ids = [f"needle-{i:0{width}d}" for i in range(n_passages)]

    positions = list(range(n_passages))
    rng.shuffle(positions)
    needles: dict[int, str] = {}  # corpus position -> needle sentence
    queries: list[dict] = []
    cursor = 0
    for _ in range(n_queries):
        key = kv.key(rng)
        slots = sorted(positions[cursor : cursor + per_query])
        cursor += per_query
        values = [kv.value(rng) for _ in slots]
        for pos, value in zip(slots, values):
            needles[pos] = needle_sentence(key, value)
        if variant == "multivalue":
            question = MULTIVALUE_QUESTION_TEMPLATE.format(key=key)
        else:
            question = needle_question(key)
        queries.append({"question": question, "answer": ", ".join(values), "gold_ids": [ids[p] for p in slots]})
    if variant == "multikey":
        n_extra = n_passages - cursor
    elif variant == "distractor":
        n_extra = min(n_passages - cursor, MAX_DISTRACTORS * n_queries)
    else:
        n_extra = 0
    for pos in positions[cursor : cursor + n_extra]:
        needles[pos] = needle_sentence(kv.key(rng), kv.value(rng))

    records = []
    for pos in range(n_passages):
        if pos in needles:
            text = embed_sentence(rng, source, needles[pos], passage_chars)
        else:
            text = source.passage(rng, passage_chars)
        records.append({"id": ids[pos], "title": make_title(rng), "text": text})
    return records, queries
