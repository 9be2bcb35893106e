"""JSON Lines: one reading loop with one error message (corpora, questions files, prose fillers) and one atomic
writer (make-corpus files, eval predictions)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from ragsoup.atomic import atomic_write_text
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


def jsonl_text(rows: Iterable[Any]) -> str:
    """One JSON object per line (UTF-8 kept as is)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Write rows as a JSON Lines file, atomically."""
    atomic_write_text(path, jsonl_text(rows))
