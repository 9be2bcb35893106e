"""HotpotQA (distractor setting): loading and souping examples from each question's context."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from ragsoup.errors import RagsoupError
from ragsoup.tasks.base import SoupExample, shuffle_with_gold
from ragsoup.tasks.squad import read_json

_REQUIRED = ("_id", "question", "answer", "supporting_facts", "context")


def load_hotpot(path: str | Path) -> list[dict]:
    """Read HotpotQA JSON (.json or .json.gz: a list of question objects) and validate its layout."""
    data = read_json(path, "HotpotQA")
    if not isinstance(data, list):
        raise RagsoupError(f"{path}: not HotpotQA JSON (expected a list of question objects)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise RagsoupError(f"{path}: item {i} is not an object")
        missing = [key for key in _REQUIRED if key not in rec]
        if missing:
            raise RagsoupError(f"{path}: item {i} lacks {', '.join(missing)} (needs {', '.join(_REQUIRED)})")
        ctx = rec["context"]
        if not isinstance(ctx, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list) for p in ctx
        ):
            raise RagsoupError(f'{path}: item {i}: "context" must be a list of [title, [sentences]]')
        sf = rec["supporting_facts"]
        if not isinstance(sf, list) or not all(isinstance(f, list) and len(f) == 2 for f in sf):
            raise RagsoupError(f'{path}: item {i}: "supporting_facts" must be a list of [title, sentence_index]')
    return data


def paragraph_text(title: str, sentences: list[str]) -> str:
    """Return the passage text of one HotpotQA paragraph: title + ": " + joined sentences."""
    return title + ": " + "".join(sentences)


def hotpot_examples(
    records: list[dict],
    rng: random.Random,
    k: int | None = None,
    shuffle_records: bool = True,
) -> Iterator[SoupExample]:
    """Yield one example per record: its context paragraphs shuffled, truncated to k keeping the gold ones.

    gold = indices of the paragraphs whose titles appear in supporting_facts. Records whose
    supporting titles are missing from their context are skipped; k smaller than a record's
    number of gold paragraphs raises RagsoupError.
    """
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise RagsoupError(f"k must be None or an integer >= 1; got {k!r}")
    return _hotpot_iter(records, rng, k, shuffle_records)


def _hotpot_iter(
    records: list[dict], rng: random.Random, k: int | None, shuffle_records: bool
) -> Iterator[SoupExample]:
    order = list(range(len(records)))
    if shuffle_records:
        rng.shuffle(order)
    for r_idx in order:
        rec = records[r_idx]
        first_index: dict[str, int] = {}
        docs: list[str] = []
        for title, sentences in rec["context"]:
            if title in first_index:
                continue  # a repeated title would make gold ambiguous; keep the first
            first_index[title] = len(docs)
            docs.append(paragraph_text(title, sentences))
        gold_titles = list(dict.fromkeys(t for t, _ in rec["supporting_facts"]))
        gold = [first_index[t] for t in gold_titles if t in first_index]
        if not gold:
            continue
        if k is not None and k < len(gold):
            raise RagsoupError(
                f"k={k} is smaller than the {len(gold)} gold paragraphs of HotpotQA question {rec['_id']}"
            )
        if k is not None and k < len(docs):
            others = [i for i in range(len(docs)) if i not in gold]
            keep = sorted(gold + rng.sample(others, k - len(gold)))
            gold = [keep.index(g) for g in gold]
            docs = [docs[i] for i in keep]
        docs, gold = shuffle_with_gold(rng, docs, gold)
        yield SoupExample(docs=docs, question=rec["question"], answer=str(rec["answer"]), gold=gold)


def hotpot_corpus(records: list[dict], n_passages: int, n_queries: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A retrieval corpus from HotpotQA records: every distinct context paragraph (one per title) of whole
    records, in file order, up to n_passages; and n_queries of those records' questions (seeded sample) whose
    supporting paragraphs are all in it, with the supporting paragraphs' ids as gold."""
    ids: dict[str, str] = {}
    corpus: list[dict] = []
    askable: list[dict] = []
    for rec in records:
        new: dict[str, list[str]] = {}
        for title, sentences in rec["context"]:
            if title not in ids and title not in new:  # a title's first paragraph only, as in hotpot_examples
                new[title] = sentences
        if corpus and len(corpus) + len(new) > n_passages:
            break
        for title, sentences in new.items():
            ids[title] = f"hotpot-{len(corpus):05d}"
            corpus.append({"id": ids[title], "title": title, "text": paragraph_text(title, sentences)})
        gold = list(dict.fromkeys(t for t, _ in rec["supporting_facts"]))
        if gold and all(t in ids for t in gold):
            askable.append({"question": rec["question"], "answer": str(rec["answer"]),
                            "gold_ids": [ids[t] for t in gold]})
    chosen = random.Random(seed).sample(askable, min(n_queries, len(askable)))
    return corpus, chosen
