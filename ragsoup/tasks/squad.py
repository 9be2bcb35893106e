"""SQuAD v1.1: loading, article-level train/val split and souping examples with distractors."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragsoup.errors import RagsoupError
from ragsoup.tasks.base import SoupExample, check_k, shuffle_with_gold


# The held-out split every command uses: 5% of articles by a hash of their title (never trained on).
SQUAD_VAL_FRACTION = 0.05
# where the project's SQuAD v1.1 train file lies (../shared/data, see its SOURCES.md); never committed
SQUAD_TRAIN_PATH = "../shared/data/squad/train-v1.1.reconstructed.json.gz"
SQUAD_SPLIT_SEED = 0


def read_json(path: str | Path, what: str) -> Any:
    """Read a .json or .json.gz file, turning I/O and parse failures into RagsoupError."""
    path = Path(path)
    if not path.is_file():
        raise RagsoupError(f"{what} file not found: {path}")
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RagsoupError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise RagsoupError(f"cannot read {what} file {path}: {e}") from e


def load_squad(path: str | Path) -> list[dict]:
    """Read SQuAD v1.1 JSON (.json or .json.gz) into records {id, title, context, question, answers}."""
    data = read_json(path, "SQuAD")
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise RagsoupError(f'{path}: not SQuAD v1.1 JSON (expected an object with a "data" list of articles)')
    records: list[dict] = []
    try:
        for a_idx, article in enumerate(data["data"]):
            title = article["title"]
            for p_idx, para in enumerate(article["paragraphs"]):
                context = para["context"]
                for q_idx, qa in enumerate(para["qas"]):
                    answers: list[str] = []
                    for ans in qa.get("answers", []):
                        if ans["text"] not in answers:
                            answers.append(ans["text"])
                    records.append(
                        {
                            "id": str(qa.get("id", f"{a_idx}-{p_idx}-{q_idx}")),
                            "title": title,
                            "context": context,
                            "question": qa["question"],
                            "answers": answers,
                        }
                    )
    except (KeyError, TypeError) as e:
        raise RagsoupError(
            f"{path}: malformed SQuAD v1.1 JSON (missing or wrong field {e}); expected "
            "data[].title, data[].paragraphs[].context, data[].paragraphs[].qas[].question/answers[].text"
        ) from e
    return records


def _article_score(title: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\x00{title}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_article(
    records: list[dict], val_fraction: float = 0.05, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Split records into (train, val) by a hash of (seed, article title); no article is in both."""
    if not 0.0 <= val_fraction <= 1.0:
        raise RagsoupError(f"val_fraction must be in [0, 1]; got {val_fraction}")
    train: list[dict] = []
    val: list[dict] = []
    cache: dict[str, bool] = {}
    for rec in records:
        title = rec["title"]
        if title not in cache:
            cache[title] = _article_score(title, seed) < val_fraction
        (val if cache[title] else train).append(rec)
    return train, val


SPLITS = ("all", "train", "val")


def split_side(records: list[dict], split: str) -> list[dict]:
    """The records of one side of ragsoup's by-article split ("train" or "val"), or all of them ("all")."""
    if split not in SPLITS:
        raise RagsoupError(f"unknown split {split!r}: use all, train or val")
    if split == "all":
        return records
    return split_by_article(records, SQUAD_VAL_FRACTION, SQUAD_SPLIT_SEED)[split == "val"]


def _at_most(segments: list[str], k: int) -> list[str]:
    """Neighbouring segments joined into at most k passages (as even in count as possible), so that an example
    always holds exactly k passages."""
    if len(segments) <= k:
        return segments
    cuts = [round(i * len(segments) / k) for i in range(k + 1)]
    return [" ".join(segments[a:b]) for a, b in zip(cuts, cuts[1:])]


class SquadPool:
    """The distinct paragraphs of some SQuAD records, grouped by article, for drawing gold + distractor sets."""

    def __init__(self, records: list[dict]) -> None:
        by_title: dict[str, dict[str, None]] = {}  # dicts as insertion-ordered sets
        for rec in records:
            by_title.setdefault(rec["title"], {})[rec["context"]] = None
        self.records = [r for r in records if r["answers"]]
        self.paragraphs: list[str] = []
        self.span: dict[str, tuple[int, int]] = {}
        for title, paras in by_title.items():
            self.span[title] = (len(self.paragraphs), len(self.paragraphs) + len(paras))
            self.paragraphs.extend(paras)
        self.index_of = {(t, p): self.span[t][0] + i for t, paras in by_title.items() for i, p in enumerate(paras)}
        self.qas_of: dict[int, list[tuple[str, str]]] = {}  # paragraph index -> its (question, first answer) pairs
        for rec in self.records:
            self.qas_of.setdefault(self.index_of[(rec["title"], rec["context"])], []).append(
                (rec["question"], rec["answers"][0]))

    def distractors(self, rng: random.Random, rec: dict, n: int, same_article: int) -> list[int]:
        """n distinct paragraph indices other than rec's: up to same_article from its article, the rest from others."""
        start, end = self.span[rec["title"]]
        gold_idx = self.index_of[(rec["title"], rec["context"])]
        own = [i for i in range(start, end) if i != gold_idx]
        chosen = rng.sample(own, min(same_article, len(own), n))
        n_other_pool = len(self.paragraphs) - (end - start)
        for j in rng.sample(range(n_other_pool), min(n - len(chosen), n_other_pool)):
            chosen.append(j if j < start else j + (end - start))
        if len(chosen) < n:  # too few other articles: top up from the own article
            rest = [i for i in own if i not in chosen]
            chosen += rng.sample(rest, n - len(chosen))
        return chosen

    def example(self, rng: random.Random, rec: dict, k: int, same_article: int = 1, segment_chars: int = 0
                ) -> SoupExample:
        """rec's paragraph plus k-1 distractors, shuffled; with segment_chars > 0 the gold paragraph is first cut
        into segments of about that many characters (all of them gold; neighbours joined when there are more than
        k), and distractors fill up to k passages: always exactly k passages."""
        gold_text = rec["context"]
        golds = [gold_text]
        if segment_chars > 0:
            from ragsoup.corpus import chunk_text

            golds = _at_most(chunk_text(gold_text, max_chars=segment_chars) or [gold_text], k)
        n_dis = max(0, k - len(golds))
        chosen = self.distractors(rng, rec, n_dis, same_article)
        docs, gold = shuffle_with_gold(rng, golds + [self.paragraphs[i] for i in chosen], range(len(golds)))
        return SoupExample(docs=docs, question=rec["question"], answer=rec["answers"][0], gold=gold,
                           answers=list(rec["answers"]), extra=self.extra_questions(rec, chosen))

    def extra_questions(self, rec: dict, distractors: list[int]) -> list[tuple[str, str]]:
        """Other questions the same soup answers (training's --extra-questions): the gold paragraph's other
        questions, then the distractors' own, one per paragraph in turn; chosen without the rng, so the
        examples themselves do not depend on whether extras are used."""
        gold_idx = self.index_of[(rec["title"], rec["context"])]
        own = [qa for qa in self.qas_of.get(gold_idx, []) if qa[0] != rec["question"]]
        others = [self.qas_of.get(i, []) for i in distractors]
        round_robin = [qas[j] for j in range(max(map(len, others), default=0)) for qas in others if j < len(qas)]
        return own + round_robin


def squad_examples(
    records: list[dict],
    rng: random.Random,
    k: int,
    same_article_distractors: int = 1,
    shuffle_records: bool = True,
) -> Iterator[SoupExample]:
    """Yield one example per record: its paragraph plus k-1 distinct distractor paragraphs, shuffled.

    Up to ``same_article_distractors`` distractors come from the question's own article, the
    rest from other articles (topped up from the own article if there are too few others).
    Records are visited once, in an rng-shuffled order unless shuffle_records is False; records
    without answers are skipped. ``answer`` is the first gold answer, ``answers`` all of them.
    """
    check_k(k)
    if same_article_distractors < 0:
        raise RagsoupError(f"same_article_distractors must be >= 0; got {same_article_distractors}")
    pool = SquadPool(records)
    if len(pool.paragraphs) < k:
        raise RagsoupError(f"k={k} passages requested but the records hold only {len(pool.paragraphs)} distinct paragraphs")
    return _squad_iter(pool, rng, k, same_article_distractors, shuffle_records)


def _squad_iter(pool: SquadPool, rng: random.Random, k: int, same_article: int, shuffle_records: bool
                ) -> Iterator[SoupExample]:
    order = list(range(len(pool.records)))
    if shuffle_records:
        rng.shuffle(order)
    for r_idx in order:
        yield pool.example(rng, pool.records[r_idx], k, same_article)


def squad_corpus(records: list[dict], n_passages: int, n_queries: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A retrieval corpus from SQuAD records: the paragraphs of whole articles (in file order) up to n_passages,
    and n_queries of their questions (seeded sample) with every gold answer and the paragraph id as gold."""
    pool = SquadPool(records)
    keep: list[int] = []
    for start, end in pool.span.values():  # whole articles, so same-article distractors stay in the corpus
        if keep and len(keep) + (end - start) > n_passages:
            break
        keep.extend(range(start, end))
    ids = {i: f"squad-{i:05d}" for i in keep}
    titles = {i: t for t, (s, e) in pool.span.items() for i in range(s, e) if i in ids}
    corpus = [{"id": ids[i], "title": titles[i], "text": pool.paragraphs[i]} for i in keep]
    askable = [r for r in pool.records if pool.index_of[(r["title"], r["context"])] in ids]
    chosen = random.Random(seed).sample(askable, min(n_queries, len(askable)))
    questions = [{"question": r["question"], "answer": r["answers"][0], "answers": list(r["answers"]),
                  "gold_ids": [ids[pool.index_of[(r["title"], r["context"])]]]} for r in chosen]
    return corpus, questions
