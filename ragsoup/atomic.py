"""Atomic file writes: a temp file beside the target, then ``os.replace`` (readers never see a half-written file)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ragsoup.errors import RagsoupError


def umask() -> int:
    """The process's current umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temp file beside ``path`` and move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically; an OSError becomes a RagsoupError that names the file."""
    try:
        atomic_write_bytes(Path(path), text.encode("utf-8"))
    except OSError as e:
        raise RagsoupError(f"cannot write {path}: {e}") from e
