"""Two-hop composition task: combine a person->city fact with a city->country fact.

Gold facts, each wrapped in a little digit-free filler in its own passage::

    "{PERSON} was born in {CITY}."   +   "{CITY} is the capital of {COUNTRY}."
    -> "In which country was {PERSON} born?"  -> COUNTRY

Person relations: born in / works in / lives in; city relations: capital of / located in /
a city in. All names are made up, distinct, never a substring of one another and never a
filler word. Distractor passages hold the same kinds of facts about other people, cities and
countries (mostly complete distractor chains), so the city passage cannot be found from the
question's words alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ragsoup.errors import RagsoupError
from ragsoup.tasks.base import (
    NameGenerator,
    PassageSource,
    SoupExample,
    check_k,
    check_passage_chars,
    embed_sentence,
    insert_sentence,
    shuffle_with_gold,
)
from ragsoup.tasks.filler import VOCABULARY, FillerSource, make_title

# relation -> (fact template, question template)
PERSON_RELATIONS: dict[str, tuple[str, str]] = {
    "born in": ("{person} was born in {city}.", "In which country was {person} born?"),
    "works in": ("{person} works in {city}.", "In which country does {person} work?"),
    "lives in": ("{person} lives in {city}.", "In which country does {person} live?"),
}
# relation -> the first hop asked on its own (answer: the city); training's extra questions (task two-hop-sub)
CITY_QUESTIONS: dict[str, str] = {
    "born in": "In which city was {person} born?",
    "works in": "In which city does {person} work?",
    "lives in": "In which city does {person} live?",
}
COUNTRY_QUESTION = "In which country is {city}?"  # the second hop asked on its own (answer: the country)
CITY_RELATIONS: dict[str, str] = {
    "capital of": "{city} is the capital of {country}.",
    "located in": "{city} is located in {country}.",
    "city in": "{city} is a city in {country}.",
}
CITY_SUFFIXES: tuple[str, ...] = ("holm", "ford", "burg", "wick", "mere", "stead", "port", "haven", "dale", "by", "ton")
COUNTRY_SUFFIXES: tuple[str, ...] = ("ia", "land", "ora", "istan", "ary", "esh", "avia", "onia")
DEFAULT_PASSAGE_CHARS = 200


@dataclass(frozen=True)
class Chain:
    """One person -> city -> country chain with the relations used to state it."""

    person: str
    city: str
    country: str
    person_relation: str
    city_relation: str

    @property
    def person_fact(self) -> str:
        """The sentence linking the person to the city."""
        return PERSON_RELATIONS[self.person_relation][0].format(person=self.person, city=self.city)

    @property
    def city_fact(self) -> str:
        """The sentence linking the city to the country."""
        return CITY_RELATIONS[self.city_relation].format(city=self.city, country=self.country)

    @property
    def question(self) -> str:
        """The question whose answer is the country."""
        return PERSON_RELATIONS[self.person_relation][1].format(person=self.person)

    @property
    def hop_questions(self) -> list[tuple[str, str]]:
        """Each hop asked on its own: (question, city) for the first, (question, country) for the second."""
        return [(CITY_QUESTIONS[self.person_relation].format(person=self.person), self.city),
                (COUNTRY_QUESTION.format(city=self.city), self.country)]


class _World:
    """Draws chains whose names are unique within one example or corpus."""

    def __init__(self) -> None:
        self.names = NameGenerator(forbidden=VOCABULARY)

    def chain(self, rng: random.Random) -> Chain:
        """Return a chain with a fresh person, city and country."""
        person = f"{self.names.name(rng, 2, 2, max_len=8)} {self.names.name(rng, 2, 3, max_len=9)}"
        city = self.names.name(rng, 1, 2, suffix=self._suffix(rng, CITY_SUFFIXES), max_len=7)
        country = self.names.name(rng, 1, 2, suffix=self._suffix(rng, COUNTRY_SUFFIXES), max_len=7)
        return Chain(
            person=person,
            city=city,
            country=country,
            person_relation=rng.choice(list(PERSON_RELATIONS)),
            city_relation=rng.choice(list(CITY_RELATIONS)),
        )

    def _suffix(self, rng: random.Random, options: tuple[str, ...]) -> str:
        """A random suffix from options; re-drawn among the usable ones when an earlier name blocks it
        (the country "Avia" blocks every "-avia"), so that the same draws as before give the same names."""
        suffix = rng.choice(options)
        if self.names.can_end_with(suffix):
            return suffix
        return rng.choice([s for s in options if self.names.can_end_with(s)])


def _distractors(rng: random.Random, world: _World, n: int) -> tuple[list[str], list[Chain]]:
    """n distractor facts (complete chains in pairs, plus one lone fact when n is odd) and the complete chains."""
    facts: list[str] = []
    chains: list[Chain] = []
    while len(facts) + 2 <= n:
        c = world.chain(rng)
        facts += [c.person_fact, c.city_fact]
        chains.append(c)
    if len(facts) < n:
        c = world.chain(rng)
        facts.append(c.person_fact if rng.random() < 0.5 else c.city_fact)
    return facts, chains


def twohop_example(
    rng: random.Random,
    k: int,
    filler: PassageSource | None = None,
    passage_chars: int = DEFAULT_PASSAGE_CHARS,
    bridge: bool = False,
    sub_questions: bool = False,
) -> SoupExample:
    """Return one two-hop example with k shuffled passages; gold = the two fact passages.

    With k == 1 both gold facts share the single passage (gold == [0]), so mixed-task training
    with k_min=1 still works; for k >= 2 they always sit in two different passages.
    ``bridge``: the answer names the bridge city first ("CITY, COUNTRY"), so the decoder makes the
    two lookups one after the other (see ``final_answer``).
    ``sub_questions``: ``extra`` holds each hop asked on its own (person -> city, city -> country), then the
    complete distractor chains' own questions, for training with several questions per soup; the passages, question
    and answer are the same as without it.
    """
    check_k(k)
    check_passage_chars(passage_chars)
    source = filler if filler is not None else FillerSource()
    world = _World()
    gold_chain = world.chain(rng)
    if k == 1:
        facts_one = [gold_chain.person_fact, gold_chain.city_fact]
        rng.shuffle(facts_one)
        text = embed_sentence(rng, source, facts_one[0], passage_chars - len(facts_one[1]) - 1)
        text = insert_sentence(rng, text, facts_one[1])
        extra = gold_chain.hop_questions if sub_questions else []
        return SoupExample(docs=[text], question=gold_chain.question, answer=_answer(gold_chain, bridge), gold=[0],
                           extra=extra)
    distractor_facts, chains = _distractors(rng, world, k - 2)
    facts = [gold_chain.person_fact, gold_chain.city_fact] + distractor_facts
    docs = [embed_sentence(rng, source, f, passage_chars) for f in facts]
    docs, gold = shuffle_with_gold(rng, docs, [0, 1])
    extra = gold_chain.hop_questions + [(c.question, _answer(c, bridge)) for c in chains] if sub_questions else []
    return SoupExample(docs=docs, question=gold_chain.question, answer=_answer(gold_chain, bridge), gold=gold,
                       extra=extra)


BRIDGE_SEP = ", "


def _answer(chain: Chain, bridge: bool) -> str:
    return f"{chain.city}{BRIDGE_SEP}{chain.country}" if bridge else chain.country


def final_answer(prediction: str) -> str:
    """The country of a bridged answer ("CITY, COUNTRY" -> "COUNTRY"); other answers unchanged."""
    return prediction.rsplit(BRIDGE_SEP, 1)[-1]


def make_twohop_corpus(
    n_passages: int,
    n_queries: int,
    seed: int,
    filler: PassageSource | None = None,
    passage_chars: int = DEFAULT_PASSAGE_CHARS,
) -> tuple[list[dict], list[dict]]:
    """Build one shared two-hop corpus and its queries.

    Returns (records, queries): records {"id", "title", "text"} in corpus order, every passage
    holding one fact; queries {"question", "answer", "gold_ids"} where gold_ids are the
    person-fact and city-fact passages, in corpus order. Passages not used by a query hold
    distractor chains.
    """
    check_k(n_passages, what="n_passages")
    check_k(n_queries, what="n_queries")
    check_passage_chars(passage_chars)
    if 2 * n_queries > n_passages:
        raise RagsoupError(
            f"{n_queries} two-hop queries need {2 * n_queries} passages but n_passages={n_passages}; "
            "lower n_queries or raise n_passages"
        )
    rng = random.Random(seed)
    source = filler if filler is not None else FillerSource()
    world = _World()
    width = max(6, len(str(n_passages - 1)))
    ids = [f"twohop-{i:0{width}d}" for i in range(n_passages)]
    positions = list(range(n_passages))
    rng.shuffle(positions)

    facts: dict[int, str] = {}
    queries: list[dict] = []
    for q in range(n_queries):
        chain = world.chain(rng)
        p_person, p_city = positions[2 * q], positions[2 * q + 1]
        facts[p_person] = chain.person_fact
        facts[p_city] = chain.city_fact
        queries.append(
            {"question": chain.question, "answer": chain.country, "gold_ids": [ids[p] for p in sorted((p_person, p_city))]}
        )
    rest = positions[2 * n_queries :]
    for pos, fact in zip(rest, _distractors(rng, world, len(rest))[0]):
        facts[pos] = fact

    records = [
        {"id": ids[pos], "title": make_title(rng), "text": embed_sentence(rng, source, facts[pos], passage_chars)}
        for pos in range(n_passages)
    ]
    return records, queries
