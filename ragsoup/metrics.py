"""Answer metrics: the official SQuAD v1.1 / HotpotQA exact match and token F1.

The normalisation follows the official evaluation scripts exactly (in this order):
lower-case, drop ASCII punctuation (``string.punctuation``), drop the articles
"a", "an", "the" as whole words, collapse whitespace.

Edge cases, as in the official scripts:
- ``exact_match("", "")`` is 1.0, but ``f1_score("", "")`` is 0.0 (no shared tokens);
- HotpotQA rule: when either normalised side is "yes", "no" or "noanswer" and the two
  differ, F1 is 0.0 (no partial credit for "no" vs "no way").
"""

from __future__ import annotations

import re
import string
from collections import Counter

from ragsoup.errors import RagsoupError

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_SPECIAL = frozenset({"yes", "no", "noanswer"})


def normalize_answer(s: str) -> str:
    """Lower-case, strip punctuation, drop articles and collapse whitespace (official order)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """Return 1.0 when the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Return the token-level F1 between prediction and gold (HotpotQA yes/no/noanswer rule)."""
    pred_norm = normalize_answer(prediction)
    gold_norm = normalize_answer(gold)
    if (pred_norm in _SPECIAL or gold_norm in _SPECIAL) and pred_norm != gold_norm:
        return 0.0
    pred_tokens = pred_norm.split()
    gold_tokens = gold_norm.split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_em_f1(prediction: str, golds: list[str]) -> tuple[float, float]:
    """Return (max EM, max F1) of the prediction over all gold answers."""
    if isinstance(golds, str):
        golds = [golds]
    if not golds:
        raise RagsoupError("best_em_f1 needs at least one gold answer; got an empty list")
    em = max(exact_match(prediction, g) for g in golds)
    f1 = max(f1_score(prediction, g) for g in golds)
    return em, f1


def gold_retrieved(retrieved_ids: list[str], gold_ids: list[str], require_all: bool = False) -> bool:
    """True if a retrieved passage is a gold one (every gold one with ``require_all``): the same id, or a chunk
    ``GOLD-i`` that indexing cut from it (the id scheme of ``corpus._Collector.add_text`` for records with ids)."""
    found = set()
    for rid in retrieved_ids:
        head, _, tail = rid.rpartition("-")
        found.add(rid)
        if tail.isdigit():
            found.add(head)
    hit = [g in found for g in gold_ids]
    return bool(hit) and (all(hit) if require_all else any(hit))
