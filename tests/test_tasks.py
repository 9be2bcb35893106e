"""Task generators, filler sources, dataset loaders and corpus files."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest

from ragsoup.errors import RagsoupError
from ragsoup.tasks import TASKS, FillerSource, ProseFiller, SoupExample, generate_example, twohop
from ragsoup.tasks.base import NameGenerator, insert_sentence, split_sentences
from ragsoup.tasks.files import make_corpus, read_corpus, read_questions, write_corpus
from ragsoup.tasks.filler import VOCABULARY, make_title, strip_gutenberg
from ragsoup.tasks.hotpot import hotpot_examples, load_hotpot
from ragsoup.tasks.needle import EXAMPLE_VARIANTS, VARIANTS, make_needle_corpus, needle_example
from ragsoup.tasks.squad import load_squad, split_by_article, squad_examples
from ragsoup.tasks.twohop import make_twohop_corpus, twohop_example

DIGIT = re.compile(r"\d")
NEEDLE_RE = re.compile(r"The special magic number for ([a-z -]+) is (\d{6})\.")


def _examples(task: str, seed: int, k: int = 6, n: int = 5) -> list[SoupExample]:
    rng = random.Random(seed)
    return [generate_example(task, rng, k) for _ in range(n)]


# ---------------------------------------------------------------------------
# Filler
# ---------------------------------------------------------------------------


def test_filler_deterministic_digit_free_and_needle_free() -> None:
    src = FillerSource()
    a = [src.passage(random.Random(7), 300) for _ in range(3)]
    b = [src.passage(random.Random(7), 300) for _ in range(3)]
    assert a == b
    rng = random.Random(0)
    texts = [src.passage(rng, 400) for _ in range(300)]
    assert len(set(texts)) == len(texts)
    for text in texts:
        assert not DIGIT.search(text)
        low = text.lower()
        assert "magic" not in low and "number" not in low
        for phrase in ("born in", "works in", "lives in", "capital of", "located in", "a city in"):
            assert phrase not in low
        assert 200 <= len(text) <= 600
        assert text[0].isupper() and text.endswith(".")
    assert not re.search(r"\ba [aeio]", " ".join(texts))  # a/an agreement


def test_filler_vocabulary_is_varied() -> None:
    assert len(VOCABULARY) >= 300
    rng = random.Random(1)
    words = set(re.findall(r"[a-z]+", " ".join(FillerSource().passage(rng, 2000) for _ in range(20)).lower()))
    assert len(words) >= 250


def test_filler_lengths() -> None:
    src = FillerSource()
    rng = random.Random(3)
    assert src.passage(rng, 0) == ""
    assert len(split_sentences(src.passage(rng, 1))) == 1
    lengths = [len(src.passage(rng, 500)) for _ in range(50)]
    assert all(abs(n - 500) < 120 for n in lengths)


def test_titles_digit_free() -> None:
    rng = random.Random(2)
    for _ in range(50):
        title = make_title(rng)
        assert title and not DIGIT.search(title) and title[0].isupper()


GUTENBERG_TEXT = """The Project Gutenberg EBook of Tiny Tales, by Nobody

This eBook is for the use of anyone anywhere at no cost. Release Date: 1901.

*** START OF THIS PROJECT GUTENBERG EBOOK TINY TALES ***

Produced by Some Volunteers at www.pgdp.net

CHAPTER I

The old miller walked to the river every morning. He liked to watch the boats go by. In 1888 he bought a new wheel for the mill. Mr. Hobbs, his neighbour, thought this was a fine idea.

The rain fell all afternoon, and the children stayed inside. Their mother read to them from a thick book. Nobody complained about the weather.

"Will it stop soon?" asked the youngest. "Perhaps by supper," said her mother.

*** END OF THIS PROJECT GUTENBERG EBOOK TINY TALES ***

This file should be named 12345.txt. Gutenberg is a trademark.
"""


def test_strip_gutenberg() -> None:
    body = strip_gutenberg(GUTENBERG_TEXT)
    assert "START OF" not in body and "END OF" not in body
    assert "Release Date" not in body and "trademark" not in body
    assert "old miller" in body


@pytest.mark.parametrize("kind", ["txt", "jsonl.gz", "jsonl"])
def test_prose_filler_files(tmp_path: Path, kind: str) -> None:
    if kind == "txt":
        path = tmp_path / "book.txt"
        path.write_text(GUTENBERG_TEXT, encoding="utf-8")
    else:
        path = tmp_path / f"books.{kind}"
        other = GUTENBERG_TEXT.replace("old miller", "young baker").replace("TINY TALES", "OTHER TALES")
        lines = "".join(json.dumps({"title": t, "text": x}) + "\n" for t, x in [("a", GUTENBERG_TEXT), ("b", other)])
        if kind.endswith(".gz"):
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(lines)
        else:
            path.write_text(lines, encoding="utf-8")
    prose = ProseFiller(path)
    assert prose.n_books == (1 if kind == "txt" else 2)
    rng = random.Random(0)
    passages = [prose.passage(rng, 120) for _ in range(40)]
    assert [prose.passage(random.Random(5), 120) for _ in range(3)] == [
        prose.passage(random.Random(5), 120) for _ in range(3)
    ]
    joined = " ".join(passages)
    assert not DIGIT.search(joined)  # the "In 1888" sentence is dropped
    for banned in ("Gutenberg", "START OF", "END OF", "Produced by", "CHAPTER", "www", "trademark"):
        assert banned not in joined
    for p in passages:
        assert p and p[0] in "TMHN\"" and p.rstrip("\"").endswith((".", "?", "!"))
    assert "Mr. Hobbs, his neighbour, thought this was a fine idea." in joined  # abbreviation kept whole
    # used as needle filler
    ex = needle_example(random.Random(1), 3, filler=prose, passage_chars=150)
    assert ex.answer in ex.docs[ex.gold[0]]


def test_prose_filler_errors(tmp_path: Path) -> None:
    with pytest.raises(RagsoupError, match="not found"):
        ProseFiller(tmp_path / "missing.txt")
    empty = tmp_path / "digits.txt"
    empty.write_text("In 1900 it rained. On 3 May it snowed.\n", encoding="utf-8")
    with pytest.raises(RagsoupError, match="no usable"):
        ProseFiller(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Fine."}\nnot json\n', encoding="utf-8")
    with pytest.raises(RagsoupError, match="bad.jsonl:2"):
        ProseFiller(bad)


def test_sentence_helpers() -> None:
    assert split_sentences("One. Two? Three! Mr. Smith came.") == ["One.", "Two?", "Three!", "Mr. Smith came."]
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        out = insert_sentence(rng, "A b. C d.", "X.")
        assert out in {"X. A b. C d.", "A b. X. C d.", "A b. C d. X."}
        seen.add(out)
    assert len(seen) == 3


def test_name_generator_distinct_and_no_substrings() -> None:
    gen = NameGenerator(forbidden=VOCABULARY)
    rng = random.Random(0)
    words = [gen.word(rng) for _ in range(500)]
    assert len(set(words)) == 500
    for w in words:
        assert w not in VOCABULARY and w.isalpha() and w.islower()
    for i, a in enumerate(words[:150]):
        for b in words[:150]:
            assert a == b or a not in b
    assert not gen.reserve(words[0])


def test_a_name_that_is_a_whole_suffix_does_not_exhaust_the_two_hop_world() -> None:
    # seed 7's step 1192 of a training run reserved the country "Avia" ("av" + "-ia") and then drew the suffix
    # "-avia", which every candidate would contain: the generator gave up with "name space is exhausted"
    gen = NameGenerator()
    assert gen.can_end_with("avia") and gen.reserve("avia")
    assert not gen.can_end_with("avia") and not gen.can_end_with("navia") and gen.can_end_with("ia")
    world = twohop._World()
    world.names.reserve("avia")
    rng = random.Random(0)
    suffixes = {world._suffix(rng, twohop.COUNTRY_SUFFIXES) for _ in range(200)}
    assert "avia" not in suffixes and len(suffixes) == len(twohop.COUNTRY_SUFFIXES) - 1
    for _ in range(30):  # every later chain still gets fresh names
        world.chain(rng)


# ---------------------------------------------------------------------------
# Needle and two-hop examples
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_examples_deterministic_per_seed(task: str) -> None:
    a = _examples(task, 11)
    b = _examples(task, 11)
    c = _examples(task, 12)
    assert a == b
    assert a != c


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_examples_shape(task: str, k: int) -> None:
    for ex in _examples(task, k, k=k, n=4):
        assert len(ex.docs) == k
        assert ex.gold == sorted(set(ex.gold)) and all(0 <= g < k for g in ex.gold)
        assert ex.answers[0] == ex.answer
        assert ex.question.endswith("?")
        assert all(d.strip() for d in ex.docs)


@pytest.mark.parametrize("variant", EXAMPLE_VARIANTS)
def test_needle_answer_in_gold(variant: str) -> None:
    rng = random.Random(5)
    for _ in range(20):
        k = rng.randint(1, 10)
        ex = needle_example(rng, k, variant=variant, passage_chars=200)
        key = re.search(r"for (.+)\?$", ex.question).group(1)
        found = [(i, m.group(1), m.group(2)) for i, d in enumerate(ex.docs) for m in NEEDLE_RE.finditer(d)]
        asked = [(i, v) for i, kk, v in found if kk == key]
        assert [i for i, _ in asked] == ex.gold
        for d in ex.docs:  # only numbers in the haystack are needle values
            assert set(re.findall(r"\d+", d)) <= {v for _, _, v in found}
        for _, _, v in found:
            assert len(v) == 6 and v[0] != "0"
        if variant == "multivalue":
            assert ex.question.startswith("What are all the special magic numbers for ")
            assert ex.answer == ", ".join(v for _, v in asked)
            assert len(asked) == min(k, 4)
        else:
            assert len(ex.gold) == 1 and ex.answer in ex.docs[ex.gold[0]]
            assert ex.question == f"What is the special magic number for {key}?"
        n_needles = {"single": 1, "multikey": k, "distractor": 1 + min(k - 1, 3), "multivalue": min(k, 4),
                     "packed": 1 + len(ex.extra)}[variant]
        assert len(found) == n_needles
        assert len({v for _, _, v in found}) == n_needles  # distinct values
        if variant in ("multikey", "distractor"):
            keys = [kk for _, kk, _ in found]
            assert len(set(keys)) == len(keys)  # distinct keys
            assert [i for i, _, _ in found] == sorted({i for i, _, _ in found})  # one needle per passage
        if variant == "packed":  # 2-4 needles of distinct keys, all in the gold passage; each other one asked too
            assert 2 <= n_needles <= 4 and {i for i, _, _ in found} == set(ex.gold)
            assert len({kk for _, kk, _ in found}) == n_needles
            assert sorted(ex.extra) == sorted((f"What is the special magic number for {kk}?", v)
                                              for _, kk, v in found if kk != key)


@pytest.mark.parametrize("variant", ["single", "distractor"])
def test_word_needles_hold_made_up_names_each_answered_by_its_passage(variant: str) -> None:
    word_re = re.compile(r"The special magic word for ([a-z][a-z -]*?) is ([A-Z][a-z]+)\.")
    rng = random.Random(8)
    for _ in range(20):
        k = rng.randint(1, 10)
        ex = needle_example(rng, k, variant=variant, passage_chars=200, values="word")
        found = {m.group(1): (i, m.group(2)) for i, d in enumerate(ex.docs) for m in word_re.finditer(d)}
        key = re.fullmatch(r"What is the special magic word for (.+)\?", ex.question).group(1)
        assert found[key] == (ex.gold[0], ex.answer)
        assert len(found) == (1 if variant == "single" else 1 + min(k - 1, 3))
        assert len({v for _, v in found.values()}) == len(found)  # distinct names
        assert not any(re.search(r"\d", d) for d in ex.docs)  # no numbers at all: the values are words
        for question, answer in ex.extra:  # every other needle's own question, answered by its passage
            other = re.fullmatch(r"What is the special magic word for (.+)\?", question).group(1)
            assert found[other][1] == answer and other != key
        assert len(ex.extra) == len(found) - 1
    with pytest.raises(RagsoupError, match="word values"):
        needle_example(rng, 3, variant="multikey", values="word")
    with pytest.raises(RagsoupError, match="values"):
        needle_example(rng, 3, values="letters")


def test_needle_keys_vary_and_avoid_filler_words() -> None:
    rng = random.Random(0)
    keys = [re.search(r"for (.+)\?$", needle_example(rng, 1).question).group(1) for _ in range(200)]
    assert len(set(keys)) > 190
    assert any(" " in k for k in keys) and any(" " not in k for k in keys)
    for key in keys:
        assert not set(key.split()) & VOCABULARY


def test_needle_passages_have_similar_length() -> None:
    ex = needle_example(random.Random(0), 8, variant="distractor", passage_chars=300)
    assert all(200 <= len(d) <= 420 for d in ex.docs)


def test_needle_errors() -> None:
    with pytest.raises(RagsoupError, match="variant"):
        needle_example(random.Random(0), 3, variant="nope")
    with pytest.raises(RagsoupError):
        needle_example(random.Random(0), 0)
    with pytest.raises(RagsoupError):
        needle_example(random.Random(0), 3, passage_chars=0)
    with pytest.raises(RagsoupError, match="needle-multikey"):
        generate_example("needles", random.Random(0), 3)


def test_twohop_structure() -> None:
    rng = random.Random(9)
    for _ in range(20):
        k = rng.randint(2, 10)
        ex = twohop_example(rng, k)
        assert len(ex.docs) == k and len(ex.gold) == 2
        person = re.match(r"In which country (?:was|does) (\w+ \w+) (?:born|work|live)\?$", ex.question).group(1)
        person_doc = [i for i, d in enumerate(ex.docs) if person in d]
        assert len(person_doc) == 1 and person_doc[0] in ex.gold
        m = re.search(re.escape(person) + r" (?:was born|works|lives) in (\w+)\.", ex.docs[person_doc[0]])
        city = m.group(1)
        capital_doc = [i for i in ex.gold if i != person_doc[0]][0]
        assert re.search(
            re.escape(city) + r" is (?:the capital of|located in|a city in) " + re.escape(ex.answer) + r"\.",
            ex.docs[capital_doc],
        )
        # the city's country is stated only in the gold passage; the answer appears in it
        assert ex.answer in ex.docs[capital_doc]
        assert sum(f"{city} is " in d for d in ex.docs) == 1
        for d in ex.docs:
            assert not DIGIT.search(d)
        if k >= 4:  # distractors carry facts of the same kinds
            others = [d for i, d in enumerate(ex.docs) if i not in ex.gold]
            assert any(re.search(r"(?:was born|works|lives) in ", d) for d in others)
            assert any(re.search(r" is (?:the capital of|located in|a city in) ", d) for d in others)


def test_twohop_bridge_names_the_city_then_the_country() -> None:
    from ragsoup.tasks.twohop import final_answer

    for seed in range(10):
        plain = twohop_example(random.Random(seed), 5)
        bridged = generate_example("two-hop-bridge", random.Random(seed), 5)
        assert (bridged.docs, bridged.question, bridged.gold) == (plain.docs, plain.question, plain.gold)
        city, country = bridged.answer.split(", ")
        assert country == plain.answer and final_answer(bridged.answer) == plain.answer
        person = re.match(r"In which country (?:was|does) (\w+ \w+) ", bridged.question).group(1)
        assert any(f"{person} " in d and f" in {city}." in d for d in bridged.docs)
    assert final_answer("Soferary") == "Soferary"  # answers without a bridge pass through


def test_twohop_sub_questions_ask_each_hop_then_the_distractor_chains() -> None:
    for seed, k in [(0, 1), (1, 2), (2, 5), (3, 8)]:
        plain = twohop_example(random.Random(seed), k)
        sub = generate_example("two-hop-sub", random.Random(seed), k)
        assert (sub.docs, sub.question, sub.answer, sub.gold) == (plain.docs, plain.question, plain.answer, plain.gold)
        assert plain.extra == []
        (q1, city), (q2, country) = sub.extra[:2]
        person = re.match(r"In which country (?:was|does) (\w+ \w+) ", sub.question).group(1)
        assert q1.startswith("In which city ") and person in q1 and q2 == f"In which country is {city}?"
        assert country == sub.answer
        assert any(re.search(re.escape(person) + r" (?:was born|works|lives) in " + city + r"\.", d) for d in sub.docs)
        # the other extras are the complete distractor chains' own two-hop questions, answered in the passages
        assert len(sub.extra) == 2 + max(k - 2, 0) // 2
        for q, a in sub.extra[2:]:
            assert q.startswith("In which country ") and q != sub.question and any(a in d for d in sub.docs)


def test_twohop_single_passage() -> None:
    for seed in range(10):
        ex = twohop_example(random.Random(seed), 1)
        assert ex.gold == [0] and len(ex.docs) == 1
        assert ex.answer in ex.docs[0]
        assert re.search(r"(?:was born|works|lives) in ", ex.docs[0])
    with pytest.raises(RagsoupError):
        twohop_example(random.Random(0), 0)


# ---------------------------------------------------------------------------
# Shared corpora and files
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_needle_corpus(variant: str) -> None:
    records, queries = make_needle_corpus(60, 8, seed=3, variant=variant, n_values=3)
    assert (records, queries) == make_needle_corpus(60, 8, seed=3, variant=variant, n_values=3)
    assert records != make_needle_corpus(60, 8, seed=4, variant=variant, n_values=3)[0]
    ids = [r["id"] for r in records]
    assert len(ids) == 60 and len(set(ids)) == 60
    by_id = {r["id"]: r["text"] for r in records}
    assert len(queries) == 8 and len({q["question"] for q in queries}) == 8
    for q in queries:
        assert q["gold_ids"] and all(g in by_id for g in q["gold_ids"])
        values = q["answer"].split(", ")
        assert len(values) == (3 if variant == "multivalue" else 1)
        for g, v in zip(q["gold_ids"], values):
            assert v in by_id[g]
    n_needles = sum(bool(NEEDLE_RE.search(r["text"])) for r in records)
    expected = {"single": 8, "multikey": 60, "distractor": 8 + 24, "multivalue": 24}[variant]
    assert n_needles == expected
    for r in records:
        assert not DIGIT.search(r["title"])


def test_twohop_corpus() -> None:
    records, queries = make_twohop_corpus(40, 10, seed=1)
    assert (records, queries) == make_twohop_corpus(40, 10, seed=1)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == 40
    by_id = {r["id"]: r["text"] for r in records}
    for q in queries:
        assert len(q["gold_ids"]) == 2 and all(g in by_id for g in q["gold_ids"])
        assert any(q["answer"] in by_id[g] for g in q["gold_ids"])
    assert len({q["answer"] for q in queries}) == 10
    with pytest.raises(RagsoupError):
        make_twohop_corpus(5, 3, seed=0)


def test_corpus_errors() -> None:
    with pytest.raises(RagsoupError):
        make_needle_corpus(5, 6, seed=0)
    with pytest.raises(RagsoupError):
        make_needle_corpus(10, 3, seed=0, variant="multivalue", n_values=4)


def test_write_read_roundtrip(tmp_path: Path) -> None:
    records, queries = make_needle_corpus(30, 5, seed=0)
    out = write_corpus(tmp_path / "c", records, queries, {"task": "needle", "seed": 0, "command": "ragsoup x"})
    assert read_questions(out / "questions.jsonl") == queries
    assert read_questions(out) == queries
    assert read_corpus(out / "corpus.jsonl") == records
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "needle" in readme and "ragsoup x" in readme and "seed: 0" in readme
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
    with pytest.raises(RagsoupError, match="not in the corpus"):
        write_corpus(tmp_path / "d", records, [{"question": "q?", "answer": "a", "gold_ids": ["nope"]}], {})
    with pytest.raises(RagsoupError, match="duplicate"):
        write_corpus(tmp_path / "d", records + records[:1], [], {})


def test_make_corpus_files_identical_per_seed(tmp_path: Path) -> None:
    a = make_corpus("two-hop", 20, 4, 0, tmp_path / "a")
    b = make_corpus("two-hop", 20, 4, 0, tmp_path / "b")
    for name in ("corpus.jsonl", "questions.jsonl", "README.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    c = make_corpus("needle", 20, 4, 0, tmp_path / "c", variant="multikey")
    assert len(read_corpus(c)) == 20 and len(read_questions(c)) == 4
    d = make_corpus("needle-distractor", 20, 4, 0, tmp_path / "d")
    assert "variant: distractor" in (d / "README.md").read_text(encoding="utf-8")
    with pytest.raises(RagsoupError, match="two-hop"):
        make_corpus("squad", 20, 4, 0, tmp_path / "e")
    with pytest.raises(RagsoupError, match="variant"):
        make_corpus("two-hop", 20, 4, 0, tmp_path / "e", variant="multikey")
    with pytest.raises(RagsoupError, match="implies"):
        make_corpus("needle-multikey", 20, 4, 0, tmp_path / "e", variant="distractor")


def test_read_questions_errors(tmp_path: Path) -> None:
    with pytest.raises(RagsoupError, match="not found"):
        read_questions(tmp_path / "missing.jsonl")
    p = tmp_path / "q.jsonl"
    p.write_text('{"question": "q", "answer": "a", "gold_ids": []}\n{oops\n', encoding="utf-8")
    with pytest.raises(RagsoupError, match=r"q\.jsonl:2"):
        read_questions(p)
    p.write_text('\n{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(RagsoupError, match="gold_ids"):
        read_questions(p)
    p.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(RagsoupError, match="object"):
        read_questions(p)
    p.write_text('{"question": "q", "answer": "a", "gold_ids": "x"}\n', encoding="utf-8")
    with pytest.raises(RagsoupError, match="list"):
        read_questions(p)


# ---------------------------------------------------------------------------
# SQuAD and HotpotQA
# ---------------------------------------------------------------------------


def _squad_json() -> dict:
    def para(title: str, j: int) -> dict:
        ctx = f"{title} paragraph {j} says the answer is {title}-ans-{j}."
        return {
            "context": ctx,
            "qas": [
                {
                    "id": f"{title}-{j}-{q}",
                    "question": f"What does {title} paragraph {j} say ({q})?",
                    "answers": [
                        {"text": f"{title}-ans-{j}", "answer_start": ctx.index(f"{title}-ans-{j}")},
                        {"text": f"{title}-ans-{j}", "answer_start": ctx.index(f"{title}-ans-{j}")},
                    ],
                }
                for q in range(2)
            ],
        }

    titles = [f"Article_{c}" for c in "ABCDEFGHIJ"]
    return {"version": "1.1", "data": [{"title": t, "paragraphs": [para(t, j) for j in range(3)]} for t in titles]}


@pytest.mark.parametrize("gz", [False, True])
def test_load_squad(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("train.json.gz" if gz else "train.json")
    text = json.dumps(_squad_json())
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    recs = load_squad(path)
    assert len(recs) == 10 * 3 * 2
    r = recs[0]
    assert r["title"] == "Article_A" and r["answers"] == ["Article_A-ans-0"]
    assert r["context"].startswith("Article_A paragraph 0") and r["question"].endswith("?")


def test_load_squad_errors(tmp_path: Path) -> None:
    with pytest.raises(RagsoupError, match="not found"):
        load_squad(tmp_path / "nope.json")
    p = tmp_path / "bad.json"
    p.write_text("{", encoding="utf-8")
    with pytest.raises(RagsoupError, match="JSON"):
        load_squad(p)
    p.write_text(json.dumps({"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}), encoding="utf-8")
    with pytest.raises(RagsoupError, match="context"):
        load_squad(p)


def _squad_records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_squad_json()), encoding="utf-8")
    return load_squad(path)


def test_split_by_article(tmp_path: Path) -> None:
    recs = _squad_records(tmp_path)
    many = [dict(r, title=f"{r['title']}_{i}") for i in range(30) for r in recs]
    train, val = split_by_article(many, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(many)
    t_titles, v_titles = {r["title"] for r in train}, {r["title"] for r in val}
    assert not t_titles & v_titles
    assert 0.05 < len(v_titles) / (len(t_titles) + len(v_titles)) < 0.4
    assert split_by_article(list(reversed(many)), 0.2, 0)[1] == list(reversed(val))  # order independent
    assert {r["title"] for r in split_by_article(many, 0.2, seed=1)[1]} != v_titles
    assert split_by_article(many, 0.0)[1] == [] and split_by_article(many, 1.0)[0] == []


def test_squad_examples(tmp_path: Path) -> None:
    recs = _squad_records(tmp_path)
    exs = list(squad_examples(recs, random.Random(0), k=4, same_article_distractors=1))
    assert len(exs) == len(recs)
    assert exs == list(squad_examples(recs, random.Random(0), k=4, same_article_distractors=1))
    for ex in exs:
        assert len(ex.docs) == 4 and len(set(ex.docs)) == 4 and len(ex.gold) == 1
        gold_doc = ex.docs[ex.gold[0]]
        assert ex.answer in gold_doc
        article = gold_doc.split(" ")[0]
        same = [d for i, d in enumerate(ex.docs) if i != ex.gold[0] and d.startswith(article + " ")]
        assert len(same) == 1
    # only one article: distractors must all come from it
    one = [r for r in recs if r["title"] == "Article_A"]
    ex = next(squad_examples(one, random.Random(0), k=3, same_article_distractors=0))
    assert len(set(ex.docs)) == 3
    with pytest.raises(RagsoupError):
        squad_examples(one, random.Random(0), k=4)


def test_squad_extra_questions_are_answered_by_the_same_soup(tmp_path: Path) -> None:
    recs = _squad_records(tmp_path)
    exs = list(squad_examples(recs, random.Random(0), k=4, same_article_distractors=1))
    for ex in exs:
        # the gold paragraph's other question first, then one question of each distractor paragraph, in turn
        assert len(ex.extra) == 1 + 3 * 2
        own_q, own_a = ex.extra[0]
        assert own_q != ex.question and own_a == ex.answer  # the toy file's two questions share a paragraph
        for q, a in ex.extra:
            assert q != ex.question and sum(a in d for d in ex.docs) == 1
        assert [a for _, a in ex.extra[1:4]] == [a for _, a in ex.extra[4:7]]  # round robin over distractors
        assert {a for _, a in ex.extra[1:]} == {d.split()[-1].rstrip(".") for i, d in enumerate(ex.docs)
                                              if i not in ex.gold}


def test_squad_segments_always_give_exactly_k_passages(tmp_path: Path) -> None:
    from ragsoup.tasks.squad import SquadPool

    recs = _squad_records(tmp_path)
    long_ctx = " ".join(f"Sentence number {i} of the long paragraph is here." for i in range(12))
    recs[0] = dict(recs[0], context=long_ctx + " The answer is Article_A-ans-0.")
    pool = SquadPool(recs)
    for k in (1, 2, 5, 20):
        ex = pool.example(random.Random(k), recs[0], k, same_article=1, segment_chars=120)
        assert len(ex.docs) == k
        golds = [ex.docs[i] for i in ex.gold]
        assert all(g in recs[0]["context"] for g in golds)  # each a contiguous piece of the paragraph ...
        assert sorted(" ".join(golds).split()) == sorted(recs[0]["context"].split())  # ... and none lost
        assert len(golds) == min(k, 7) and any(ex.answer in g for g in golds)


HOTPOT = [
    {
        "_id": "h1",
        "question": "Which band formed first, Alpha or Beta?",
        "answer": "Alpha",
        "type": "comparison",
        "level": "easy",
        "supporting_facts": [["Alpha", 0], ["Beta", 1], ["Alpha", 1]],
        "context": [
            ["Gamma", ["Gamma is a lake.", " It is deep."]],
            ["Alpha", ["Alpha is a band.", " It formed early."]],
            ["Delta", ["Delta is a river."]],
            ["Beta", ["Beta is a band.", " It formed late."]],
            ["Epsilon", ["Epsilon is a town."]],
        ],
    },
    {
        "_id": "h2",
        "question": "Is Zeta a city?",
        "answer": "yes",
        "supporting_facts": [["Zeta", 0], ["Eta", 0]],
        "context": [["Zeta", ["Zeta is a city."]], ["Eta", ["Eta is near Zeta."]], ["Theta", ["Theta."]]],
    },
]


def test_load_hotpot_and_examples(tmp_path: Path) -> None:
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(HOTPOT), encoding="utf-8")
    recs = load_hotpot(path)
    assert len(recs) == 2
    exs = list(hotpot_examples(recs, random.Random(0), shuffle_records=False))
    assert [len(e.docs) for e in exs] == [5, 3]
    e = exs[0]
    assert sorted(e.docs[g].split(":")[0] for g in e.gold) == ["Alpha", "Beta"]
    assert "Alpha: Alpha is a band. It formed early." in e.docs
    assert e.answer == "Alpha" and exs[1].answer == "yes"
    for k in (2, 3, 4):
        for ex in hotpot_examples(recs, random.Random(k), k=k):
            assert len(ex.docs) == min(k, 5 if ex.question.startswith("Which") else 3)
            titles = {ex.docs[g].split(":")[0] for g in ex.gold}
            assert titles in ({"Alpha", "Beta"}, {"Zeta", "Eta"})
    assert list(hotpot_examples(recs, random.Random(1), k=3)) == list(hotpot_examples(recs, random.Random(1), k=3))
    with pytest.raises(RagsoupError, match="smaller"):
        list(hotpot_examples(recs, random.Random(0), k=1))


def test_load_hotpot_errors(tmp_path: Path) -> None:
    p = tmp_path / "h.json"
    p.write_text(json.dumps({"data": []}), encoding="utf-8")
    with pytest.raises(RagsoupError, match="list"):
        load_hotpot(p)
    p.write_text(json.dumps([{"_id": "x", "question": "q"}]), encoding="utf-8")
    with pytest.raises(RagsoupError, match="answer"):
        load_hotpot(p)


def test_distractor_extra_questions_are_answerable_from_their_docs():
    import random as _random

    from ragsoup.tasks.needle import needle_example as _needle

    ex = _needle(_random.Random(7), 6, variant="distractor", passage_chars=120)
    assert len(ex.extra) == 3
    for question, answer in ex.extra:
        key = question.removeprefix("What is the special magic number for ").removesuffix("?")
        assert any(f"The special magic number for {key} is {answer}." in d for d in ex.docs)


def test_longdoc_is_one_document_in_order_with_facts_in_distinct_segments() -> None:
    from ragsoup.corpus import chunk_text
    from ragsoup.tasks.longdoc import longdoc_example

    for seed in range(5):
        ex = longdoc_example(random.Random(seed), 12, passage_chars=150, n_facts=4)
        assert len(ex.docs) == 12 and len(ex.extra) == 3
        assert ex.answer in ex.docs[ex.gold[0]] and ex.question.endswith("?")
        holders = [i for i, d in enumerate(ex.docs) if "special magic number" in d]
        assert len(holders) == 4 and ex.gold[0] in holders
        for q, a in ex.extra:
            assert sum(a in d for d in ex.docs) == 1
        # the other segments are exactly what ask --doc's splitter cut from one stretch of text, in order
        plain = [d for i, d in enumerate(ex.docs) if i not in holders]
        assert all(len(d) <= 150 for d in plain)
        assert chunk_text(" ".join(ex.docs[:2]), max_chars=10_000) == [" ".join(ex.docs[:2])]
    one = longdoc_example(random.Random(0), 1, passage_chars=150)
    assert len(one.docs) == 1 and one.gold == [0] and one.answer in one.docs[0]
    assert longdoc_example(random.Random(3), 8).docs == longdoc_example(random.Random(3), 8).docs


def test_longdoc_with_prose_keeps_the_book_order(tmp_path: Path) -> None:
    from ragsoup.tasks.filler import ProseFiller
    from ragsoup.tasks.longdoc import longdoc_example

    sentences = [f"Sentence number {w} of the tale was calm and slow." for w in
                 "one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split()]
    (tmp_path / "book.txt").write_text(" ".join(sentences * 3))
    names = [s.split()[2] for s in sentences]
    for seed in range(3):
        ex = longdoc_example(random.Random(seed), 4, filler=ProseFiller(tmp_path / "book.txt"), passage_chars=120)
        order = [names.index(w) for w in " ".join(ex.docs).split() if w in names]
        assert len(order) >= 6
        assert all(b == (a + 1) % len(names) for a, b in zip(order, order[1:])), order  # consecutive sentences
