"""Task generators for souping experiments: needles, two-hop facts, long documents, SQuAD and HotpotQA."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ragsoup.errors import RagsoupError
from ragsoup.tasks.base import SoupExample
from ragsoup.tasks.filler import FillerSource, ProseFiller
from ragsoup.tasks.longdoc import longdoc_example
from ragsoup.tasks.needle import make_needle_corpus, needle_example
from ragsoup.tasks.twohop import make_twohop_corpus, twohop_example

TASKS: tuple[str, ...] = (
    "needle", "needle-multikey", "needle-distractor", "needle-multivalue", "needle-packed", "needle-word",
    "needle-word-distractor", "two-hop", "two-hop-sub", "two-hop-bridge", "longdoc", "longdoc-multifact",
)

_GENERATORS: dict[str, Callable[..., SoupExample]] = {
    "needle": lambda rng, k, **kw: needle_example(rng, k, variant="single", **kw),
    "needle-multikey": lambda rng, k, **kw: needle_example(rng, k, variant="multikey", **kw),
    "needle-distractor": lambda rng, k, **kw: needle_example(rng, k, variant="distractor", **kw),
    "needle-multivalue": lambda rng, k, **kw: needle_example(rng, k, variant="multivalue", **kw),
    "needle-packed": lambda rng, k, **kw: needle_example(rng, k, variant="packed", **kw),
    "needle-word": lambda rng, k, **kw: needle_example(rng, k, variant="single", values="word", **kw),
    "needle-word-distractor": lambda rng, k, **kw: needle_example(rng, k, variant="distractor", values="word", **kw),
    "two-hop": twohop_example,
    "two-hop-sub": lambda rng, k, **kw: twohop_example(rng, k, sub_questions=True, **kw),
    "two-hop-bridge": lambda rng, k, **kw: twohop_example(rng, k, bridge=True, **kw),
    "longdoc": lambda rng, k, **kw: longdoc_example(rng, k, n_facts=1, **kw),
    "longdoc-multifact": lambda rng, k, **kw: longdoc_example(rng, k, n_facts=4, **kw),
}


def generate_example(task: str, rng: random.Random, k: int, **kw: Any) -> SoupExample:
    """Return one synthetic example of the named task with k passages (kw go to the generator)."""
    try:
        gen = _GENERATORS[task]
    except KeyError:
        raise RagsoupError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}") from None
    return gen(rng, k, **kw)


__all__ = [
    "TASKS",
    "FillerSource",
    "ProseFiller",
    "SoupExample",
    "generate_example",
    "longdoc_example",
    "make_needle_corpus",
    "make_twohop_corpus",
    "needle_example",
    "twohop_example",
]
