"""Reading JSON Lines: one loop, one error message, shared by corpora, questions files and prose fillers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ragsoup.errors import RagsoupError


def iter_jsonl(f: IO[str], path: str | Path, error: type[RagsoupError] = RagsoupError) -> Iterator[tuple[int, Any]]:
    """(line number, object) for each non-blank line of an open text file; a malformed line raises ``error``."""
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{path}:{lineno}: not valid JSON ({exc.msg}): fix or remove line {lineno}") from exc
