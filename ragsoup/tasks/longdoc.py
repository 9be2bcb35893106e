"""Long-document task: one document split into k consecutive segments, all of them souped (no retrieval).

The document is one contiguous stretch of filler text (template essay text, or real prose from one book with
``filler=ProseFiller(...)``) cut into segments by ``ragsoup.corpus.chunk_text``, the splitter `ragsoup ask --doc`
uses. ``n_facts`` needle facts with distinct keys sit in distinct random segments; the question asks for one.
Segments stay in document order (unlike the needle task, whose passages are independent and shuffled).
"""

from __future__ import annotations

import random

from ragsoup.tasks.base import PassageSource, SoupExample, check_k, check_passage_chars, insert_sentence
from ragsoup.tasks.filler import FillerSource
from ragsoup.tasks.needle import _KeyValueSampler, needle_question, needle_sentence


def document_segments(rng: random.Random, source: PassageSource, k: int, segment_chars: int) -> list[str]:
    """Up to k consecutive segments of one stretch of filler text, cut with ask --doc's splitter."""
    from ragsoup.corpus import chunk_text

    text = source.passage(rng, int(k * segment_chars * 1.3))  # chunks run a little under segment_chars
    return chunk_text(text, max_chars=segment_chars)[:k]


def longdoc_example(
    rng: random.Random,
    k: int,
    filler: PassageSource | None = None,
    passage_chars: int = 200,
    n_facts: int = 1,
) -> SoupExample:
    """One long document of (up to) k segments holding n_facts key/value facts; asks for one of them."""
    check_k(k)
    check_passage_chars(passage_chars)
    check_k(n_facts, what="n_facts")
    source = filler if filler is not None else FillerSource()
    segments = document_segments(rng, source, k, passage_chars)
    kv = _KeyValueSampler()
    facts = [(kv.key(rng), kv.value(rng)) for _ in range(min(n_facts, len(segments)))]
    where = rng.sample(range(len(segments)), len(facts))
    for (key, value), i in zip(facts, where):
        segments[i] = insert_sentence(rng, segments[i], needle_sentence(key, value))
    (key, value), gold = facts[0], where[0]
    extra = [(needle_question(k_), v) for k_, v in facts[1:]]
    return SoupExample(docs=segments, question=needle_question(key), answer=value, gold=[gold],
                       extra=extra)
