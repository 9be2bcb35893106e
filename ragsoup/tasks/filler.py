"""Digit-free filler passages: a template essay generator and a real-prose sampler.

Both sources implement ``passage(rng, n_chars) -> str``, are deterministic given the
``random.Random`` they are handed, never emit a digit (so the only numbers in a haystack
come from needles or facts) and never emit the needle phrase "magic number".
"""

from __future__ import annotations

import bisect
import gzip
import random
import re
from pathlib import Path

from ragsoup.errors import RagsoupError
from ragsoup.jsonl import iter_jsonl
from ragsoup.tasks.base import split_sentences

# ---------------------------------------------------------------------------
# Vocabulary of the template essay generator
# ---------------------------------------------------------------------------

WORDS: dict[str, tuple[str, ...]] = {
    "adj": (
        "quiet", "busy", "narrow", "wide", "ancient", "modest", "humble", "famous", "crowded",
        "empty", "gentle", "steep", "rocky", "fertile", "dusty", "muddy", "sunny", "windy",
        "damp", "chilly", "mild", "warm", "bright", "dim", "sturdy", "simple", "plain",
        "elegant", "weathered", "crooked", "winding", "distant", "remote", "lively", "sleepy",
        "prosperous", "careful", "patient", "clever", "decent", "generous", "cautious",
        "curious", "stubborn", "solemn", "grand", "tiny", "vast", "fragrant", "bitter", "sweet",
        "salty", "fresh", "ripe", "golden", "pale", "green", "grey", "brown", "faded", "rough",
        "smooth", "heavy", "slow", "swift", "hidden", "open", "familiar", "ordinary", "unusual",
        "seasonal", "local", "northern", "southern", "eastern", "western", "coastal", "inland",
        "sheltered", "orderly", "untidy", "thrifty", "hardy", "peculiar", "respectable",
        "neglected", "handsome", "shabby", "tidy", "spacious", "cramped", "lonely",
    ),
    "material": (
        "stone", "brick", "timber", "thatched", "whitewashed", "painted", "slate-roofed",
        "half-timbered", "plastered", "wooden", "red-brick", "grey-stone",
    ),
    "place": (
        "town", "village", "hamlet", "valley", "harbour", "port", "market square", "hillside",
        "riverbank", "meadow", "orchard", "forest", "moor", "marsh", "coast", "bay", "island",
        "plain", "ridge", "old quarter", "parish", "district", "estate", "farmstead",
        "crossroads", "borough", "cove", "glen", "heath", "lakeside", "upland", "lowland",
    ),
    "building": (
        "mill", "chapel", "bridge", "granary", "inn", "library", "town hall", "watchtower",
        "warehouse", "bakery", "smithy", "schoolhouse", "church", "barn", "cottage", "manor",
        "lighthouse", "tavern", "workshop", "stable", "courthouse", "market hall", "abbey",
        "castle", "gatehouse", "well", "fountain", "almshouse", "customs house", "dovecote",
    ),
    "people": (
        "farmers", "merchants", "travellers", "fishermen", "weavers", "bakers", "millers",
        "shepherds", "pilgrims", "scholars", "children", "elders", "sailors", "potters",
        "carpenters", "masons", "innkeepers", "clerks", "musicians", "painters", "traders",
        "peddlers", "herders", "gardeners", "tailors", "cobblers", "brewers", "neighbours",
        "visitors", "villagers", "townsfolk", "apprentices", "monks", "poets", "teachers",
        "boatmen", "carters", "beekeepers", "chandlers", "drovers",
    ),
    "goods": (
        "wool", "grain", "salt", "lumber", "cloth", "copper", "honey", "pottery", "spices",
        "leather", "wine", "olive oil", "barley", "linen", "silk", "tin", "iron", "furs",
        "candles", "rope", "glass", "paper", "tea", "coffee", "dyes", "baskets", "tools",
        "nails", "horses", "cattle", "sheep", "lace", "soap", "tallow", "hemp", "flax",
    ),
    "food": (
        "bread", "soup", "stew", "porridge", "apples", "pears", "plums", "cherries", "fish",
        "beans", "cabbage", "pies", "cakes", "onions", "turnips", "carrots", "potatoes",
        "mushrooms", "herbs", "butter", "eggs", "milk", "oats", "chestnuts", "walnuts",
        "berries", "pickles", "dumplings", "sausages", "roast mutton", "cider", "ale",
        "cheese", "smoked eel", "pancakes", "barley broth", "baked trout", "quince jelly",
    ),
    "weather": (
        "rain", "fog", "wind", "frost", "sunshine", "mist", "snow", "drizzle", "thunder",
        "hail", "storms", "heavy clouds", "heat", "cold", "dew", "gales", "showers", "breezes",
        "sleet", "haze",
    ),
    "season": (
        "spring", "summer", "autumn", "winter", "early spring", "late summer", "midwinter",
        "harvest time", "the wet season", "the dry months",
    ),
    "time": (
        "in the early morning", "at dusk", "before the harvest", "after the long winter",
        "during the fair", "in older times", "for many years", "on market days",
        "in the evenings", "at first light", "late in the season", "in good years",
        "in lean years", "around midsummer", "on feast days", "at the turn of the season",
        "in the cool of the evening", "through the long afternoons", "once a week",
        "at the end of each month", "whenever the roads allowed",
    ),
    "route": (
        "the old road", "the river", "the coastal path", "the mountain pass", "the canal",
        "the northern track", "the drovers' road", "the forest trail", "the causeway",
        "the valley road", "the toll road", "the ferry crossing", "the high road",
        "the shore road", "the pilgrims' way", "the packhorse trail",
    ),
    "vpast": (
        "gathered", "travelled", "worked", "rested", "traded", "argued", "sang", "waited",
        "walked", "prospered", "struggled", "bargained", "celebrated", "wandered", "laboured",
        "settled", "feasted", "prayed", "quarrelled", "danced", "gossiped", "lingered",
    ),
    "vtpast": (
        "built", "repaired", "painted", "sold", "bought", "carried", "stored", "shared",
        "praised", "admired", "visited", "guarded", "cleaned", "decorated", "restored",
        "abandoned", "rebuilt", "enlarged", "described", "mapped",
    ),
    "adv": (
        "slowly", "often", "rarely", "quietly", "steadily", "usually", "seldom", "gradually",
        "patiently", "cheerfully", "carefully", "gladly", "eagerly", "reluctantly",
        "sometimes", "always", "generally", "mostly", "dutifully", "happily",
    ),
    "feeling": (
        "pleasant", "tiresome", "peaceful", "uncertain", "cheerful", "calm", "cosy",
        "restless", "gloomy", "hopeful", "drowsy", "welcoming", "dreary", "festive",
    ),
    "abstract": (
        "custom", "tradition", "habit", "story", "legend", "rumour", "lesson", "proverb",
        "memory", "dispute", "agreement", "festival", "journey", "bargain", "craft", "tale",
        "song", "recipe", "rule", "ceremony", "superstition", "quarrel",
    ),
}

TEMPLATES: tuple[str, ...] = (
    # weather and seasons
    "The {weather} in {season} often made the {place} feel {feeling}.",
    "In {season} the {weather} came down from the hills and settled over the {place}.",
    "Few {people} cared for the {weather}, but it was good for the {food} and the {goods}.",
    "When the {weather} lifted, the {people} went out to the {place} {adv}.",
    "The {adj} days of {season} were known for {weather} and {adj2} skies.",
    "Old {people} claimed they could smell the {weather} coming a day before it arrived.",
    "After a week of {weather}, the roads around the {place} were {adj} and hard to use.",
    # towns and buildings
    "The {place} was {adj} and {adj2}, with a {material} {building} standing near its centre.",
    "Visitors to the {place} usually remarked on the {adj} {building}.",
    "The {people} of the {place} {vtpast} the {building} {time}.",
    "Around the {building} the streets were {adj} and lined with {material} houses.",
    "Nobody in the {place} could remember who first {vtpast} the {building}.",
    "Beyond the {building} lay a {adj} {place} where the {people} kept their gardens.",
    "The {material} {building} was the pride of the {place}, though it was rather {adj}.",
    # trade
    "The {people} {adv} traded {goods} for {goods2} at the market.",
    "Much of the {goods} travelled along {route} on its way to the {place}.",
    "Prices for {goods} rose in lean years and fell again when the roads were clear.",
    "A {adj} bargain over {goods} could keep the {people} talking for a week.",
    "The {people} kept their {goods} in the {building} until the fair.",
    "Carts loaded with {goods} and {goods2} crossed the {place} {time}.",
    "Some {people} grew wealthy from {goods}, while others lost everything in a single season.",
    # food
    "In {season} the {people} ate {food} with {food2} and plenty of bread.",
    "The {building} was known for its {adj} {food}.",
    "Most households kept a store of {food} for the {adj} months.",
    "A meal of {food} and {food2} was considered {feeling} after a day of work.",
    "The {people} {adv} shared their {food} with {people2} who passed through the {place}.",
    "Nothing pleased the {people} more than {food} cooked over an open fire {time}.",
    # travel
    "Travellers who took {route} reached the {place} {time}.",
    "The journey along {route} was {adj} but rarely dangerous.",
    "Many {people} preferred {route} to {route2}, though it took longer.",
    "The {people} {vpast} at the {building} before continuing along {route}.",
    "From the {place} one could follow {route} as far as the {adj} {place2}.",
    "Those who travelled in {season} {adv} complained about the {weather}.",
    # history
    "In older times the {place} belonged to a {adj} family of {people}.",
    "The {building} was {vtpast} after a fire, and its {adj} walls still stand.",
    "Old stories tell of a {adj} {abstract} among the {people} of the {place}.",
    "The {abstract} of sharing {food} at the {building} goes back a long way.",
    "Historians describe that period as {adj} and somewhat {adj2}.",
    "Records of the {place} mention {people} who {vpast} there {time}.",
    "Later writers {vtpast} the {building} as the heart of the old {place}.",
    # people and customs
    "The {people} were {adv} {adj} and {adj2} in their dealings.",
    "Each year in {season} the {people} held a {abstract} near the {building}.",
    "Children played by the {building} while the {people} {vpast}.",
    "It was a {abstract} in the {place} to greet strangers with {food}.",
    "The {people} {adv} {vpast} {time}.",
    "Each {abstract} in the {place} was {adv} passed from the {people} to the {people2}.",
    "A {adj} {abstract} about the {building} is still told by the {people}.",
    "The {people} and the {people2} {adv} {vpast} together in the {place}.",
)

CONNECTORS: tuple[str, ...] = (
    "Even so,", "In general,", "For the most part,", "As a rule,", "Over time,",
    "In those days,", "By contrast,", "Of course,", "At the same time,", "Now and then,",
    "Meanwhile,", "Later,", "Before long,", "In most years,", "To this day,",
    "According to the elders,", "It is said that", "Naturally,", "Likewise,", "Still,",
)

TITLE_TEMPLATES: tuple[str, ...] = (
    "Notes on the {adj} {place}",
    "A Short Account of {goods} and {goods2}",
    "On {season} in the {place}",
    "The {people} of the {place}",
    "Memories of the {building}",
    "Travels along {route}",
    "{food} and {food2}: A Kitchen History",
    "The {adj} {building} and Its Keepers",
    "Customs of the {adj} {place}",
)

_SLOT = re.compile(r"\{([a-z]+?)(\d?)\}")
_A_AN = re.compile(r"\b([Aa]) (?=[aeioAEIO]|[uU][nmp])")


def vocabulary() -> list[str]:
    """Return the sorted list of distinct lower-case words the template generator can emit."""
    words: set[str] = set()
    texts = list(TEMPLATES) + list(CONNECTORS) + list(TITLE_TEMPLATES)
    for values in WORDS.values():
        texts.extend(values)
    for text in texts:
        for w in re.findall(r"[A-Za-z']+", _SLOT.sub(" ", text)):
            words.add(w.lower().strip("'"))
    words.discard("")
    return sorted(words)


VOCABULARY: frozenset[str] = frozenset(vocabulary())


def _fill(rng: random.Random, template: str) -> str:
    chosen: dict[tuple[str, str], str] = {}

    def sub(m: re.Match[str]) -> str:
        slot, idx = m.group(1), m.group(2)
        key = (slot, idx)
        if key not in chosen:
            taken = {v for (s, _), v in chosen.items() if s == slot}
            options = [w for w in WORDS[slot] if w not in taken] or list(WORDS[slot])
            chosen[key] = rng.choice(options)
        return chosen[key]

    return _A_AN.sub(r"\1n ", _SLOT.sub(sub, template))


def _capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def make_title(rng: random.Random) -> str:
    """Return a bland digit-free title such as "Notes on the Quiet Harbour"."""
    raw = _fill(rng, rng.choice(TITLE_TEMPLATES))
    small = {"a", "an", "and", "the", "of", "on", "in", "its"}
    words = raw.split(" ")
    return " ".join(
        w if (i > 0 and w.lower() in small) else _capitalize_first(w) for i, w in enumerate(words)
    )


def _assemble(rng: random.Random, next_sentence, n_chars: int) -> str:
    """Append sentences while shorter than n_chars, then keep whichever length is closer."""
    if n_chars <= 0:
        return ""
    sentences: list[str] = []
    total = -1
    while total < n_chars:
        s = next_sentence()
        if s is None:
            break
        sentences.append(s)
        total += len(s) + 1
    if len(sentences) > 1:
        without = total - len(sentences[-1]) - 1
        if abs(without - n_chars) < abs(total - n_chars):
            sentences.pop()
    return " ".join(sentences)


class FillerSource:
    """Template-grammar generator of bland, digit-free English essay passages."""

    def __init__(self, connector_prob: float = 0.2) -> None:
        self.connector_prob = connector_prob

    def sentence(self, rng: random.Random) -> str:
        """Return one random filler sentence."""
        text = _fill(rng, rng.choice(TEMPLATES))
        if rng.random() < self.connector_prob:
            connector = rng.choice(CONNECTORS)
            text = f"{connector} {text[0].lower()}{text[1:]}"  # no template starts with a proper noun
            text = _A_AN.sub(r"\1n ", text)
        return _capitalize_first(text)

    def passage(self, rng: random.Random, n_chars: int) -> str:
        """Return a passage of whole sentences whose length is as close to n_chars as possible."""
        return _assemble(rng, lambda: self.sentence(rng), n_chars)

    def describe(self) -> str:
        """Return a one-line description of this filler source."""
        return "template essay filler (ragsoup.tasks.filler.FillerSource)"


# ---------------------------------------------------------------------------
# Real prose
# ---------------------------------------------------------------------------

_START = re.compile(r"^\*\*\*\s*START OF[^\n]*$", re.MULTILINE | re.IGNORECASE)
_END = re.compile(r"^\*\*\*\s*END OF[^\n]*$", re.MULTILINE | re.IGNORECASE)
_BAD = re.compile(
    r"\d|magic number|gutenberg|https?:|www\.|e-?text|ebook|transcriber|[_*\[\]{}<>|@#$%^=~\\]",
    re.IGNORECASE,
)
_PARA_END = re.compile(r"[.!?][\"'\u201d\u2019)]*$")


def gutenberg_shard(i: int) -> str:
    """Return the path of the project's Gutenberg shard i (0-3; ../shared/data, see its SOURCES.md; never committed)."""
    return f"../shared/data/gutenberg/books-0{i}.jsonl.gz"


def strip_gutenberg(text: str) -> str:
    """Return the body of a Project Gutenberg text without its START/END header and footer."""
    start = _START.search(text)
    if start:
        text = text[start.end():]
    end = _END.search(text)
    if end:
        text = text[: end.start()]
    return text


def _clean_sentences(text: str, min_chars: int, max_chars: int) -> list[str]:
    """Return the usable sentences of a text (digit-free, no markup, no headings) in order."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para or not _PARA_END.search(para):
            continue  # headings, tables of contents, verse fragments without an ending
        for s in split_sentences(para):
            letters = [c for c in s if c.isalpha()]
            if not (min_chars <= len(s) <= max_chars) or not letters:
                continue
            if sum(c.isupper() for c in letters) > 0.5 * len(letters):
                continue  # SHOUTED headings
            if _BAD.search(s) or any(c.isdigit() for c in s):
                continue
            out.append(s)
    return out


class ProseFiller:
    """Draws sentence-aligned windows of real prose from a .txt file or a Gutenberg .jsonl(.gz) shard."""

    def __init__(
        self,
        path: str | Path,
        max_books: int | None = None,
        min_sentence_chars: int = 20,
        max_sentence_chars: int = 400,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RagsoupError(f"prose file not found: {self.path} (give a .txt or a .jsonl/.jsonl.gz shard)")
        texts = self._read_texts(self.path, max_books)
        self._sentences: list[str] = []
        self._book_end: list[int] = []  # exclusive end index into _sentences, per book
        for text in texts:
            sents = _clean_sentences(strip_gutenberg(text), min_sentence_chars, max_sentence_chars)
            if sents:
                self._sentences.extend(sents)
                self._book_end.append(len(self._sentences))
        if not self._sentences:
            raise RagsoupError(f"no usable prose sentences in {self.path} (all were empty, headings or had digits)")
        self.n_books = len(self._book_end)

    @staticmethod
    def _read_texts(path: Path, max_books: int | None) -> list[str]:
        name = path.name.lower()
        opener = gzip.open if name.endswith(".gz") else open
        try:
            if name.endswith((".jsonl", ".jsonl.gz")):
                texts: list[str] = []
                with opener(path, "rt", encoding="utf-8") as f:
                    for lineno, obj in iter_jsonl(f, path):
                        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                            raise RagsoupError(f'{path}:{lineno}: expected an object with a "text" string')
                        texts.append(obj["text"])
                        if max_books is not None and len(texts) >= max_books:
                            break
                return texts
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                return [f.read()]
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise RagsoupError(f"cannot read prose file {path}: {e}") from e

    @property
    def n_sentences(self) -> int:
        """Number of usable sentences loaded."""
        return len(self._sentences)

    def passage(self, rng: random.Random, n_chars: int) -> str:
        """Return consecutive sentences from one book, starting at a random one, about n_chars long."""
        if n_chars <= 0:
            return ""
        start = rng.randrange(len(self._sentences))
        book = bisect.bisect_right(self._book_end, start)
        book_start = self._book_end[book - 1] if book else 0
        book_end = self._book_end[book]
        # If the window would run off the book's end, move its start back.
        length, j = 0, start
        while j < book_end and length < n_chars:
            length += len(self._sentences[j]) + 1
            j += 1
        while length < n_chars and start > book_start:
            start -= 1
            length += len(self._sentences[start]) + 1
        it = iter(self._sentences[start:book_end])
        return _assemble(rng, lambda: next(it, None), n_chars)

    def describe(self) -> str:
        """Return a one-line description of this filler source."""
        return f"real prose from {self.path.name} ({self.n_books} texts, {self.n_sentences} sentences)"
