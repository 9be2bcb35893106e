"""The index directory: manifest.json pointing at one immutable data folder.

    DIR/manifest.json            format version, model fingerprint, embedder, state dtype/shape, counts
    DIR/data-<id>/passages.jsonl one passage per line (row order = FAISS row = state row)
    DIR/data-<id>/embeddings.npy float32 [N, dim], normalised
    DIR/data-<id>/faiss.index    inner-product index over the embeddings
    DIR/data-<id>/states.npy     [N, D] state rows (see store.py)
    DIR/data-<id>/background.safetensors  the corpus background: the mean of the state rows, fp32 [D]
                                 (ragsoup.background; what --pool centered --background corpus centres on)

A build writes a fresh data folder, then replaces manifest.json atomically (the commit point), then
deletes the old folder: an interrupted build leaves the previous index loadable.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ragsoup.checkpoint import atomic_write_json
from ragsoup.corpus import Passage
from ragsoup.errors import RagsoupError

FORMAT_VERSION = 1
DEFAULT_INDEX = Path("indexes/demo")


@dataclass
class Manifest:
    data_dir: str
    n_passages: int
    model: str
    model_fingerprint: str
    model_config: dict
    embedder: str
    embed_dim: int
    state_dtype: str
    state_numel: int
    state_bytes_per_passage: int
    faiss_factory: str
    chunk_chars: int
    max_tokens: int
    corpus: str
    format_version: int = FORMAT_VERSION
    stats: dict = field(default_factory=dict)


def default_index_dir(corpus: str | Path) -> Path:
    """indexes/<corpus name>: corpora/demo -> indexes/demo, docs/faq.jsonl -> indexes/faq."""
    p = Path(corpus)
    name = p.name if p.is_dir() else p.name.split(".")[0]
    return DEFAULT_INDEX.parent / (name or "index")


def read_manifest(index_dir: Path) -> Manifest:
    """Read and validate DIR/manifest.json."""
    path = Path(index_dir) / "manifest.json"
    if not path.exists():
        raise RagsoupError(f"no index at {index_dir}: build one with `ragsoup index CORPUS --out {index_dir}`")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"expected a JSON object, got {type(raw).__name__}")
        names = {f.name for f in fields(Manifest)}
        m = Manifest(**{k: v for k, v in raw.items() if k in names})
        if not isinstance(m.data_dir, str) or not m.data_dir:
            raise TypeError("data_dir is not a folder name")
    except (OSError, ValueError, TypeError) as exc:
        raise RagsoupError(f"{path} is corrupt ({exc}): rebuild the index with `ragsoup index`") from exc
    if m.format_version != FORMAT_VERSION:
        raise RagsoupError(f"{path} has format {m.format_version}, this ragsoup reads {FORMAT_VERSION}: rebuild the index")
    if not (Path(index_dir) / m.data_dir).is_dir():
        raise RagsoupError(f"index data folder {Path(index_dir) / m.data_dir} is missing: rebuild the index with `ragsoup index`")
    return m


def write_manifest(index_dir: Path, m: Manifest) -> None:
    """Atomically replace DIR/manifest.json."""
    atomic_write_json(Path(index_dir) / "manifest.json", asdict(m))


def read_passages(path: Path) -> list[Passage]:
    """Read passages.jsonl."""
    try:
        with open(path, encoding="utf-8") as f:
            return [Passage(**json.loads(line)) for line in f if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise RagsoupError(f"{path} is missing or corrupt ({exc}): rebuild the index with `ragsoup index`") from exc


def write_passages(path: Path, passages: list[Passage]) -> None:
    """Write passages.jsonl (caller writes into a not-yet-committed data folder)."""
    with open(path, "w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def clean_stale(index_dir: Path, keep: str | None) -> None:
    """Remove data folders other than ``keep`` (left by replaced or interrupted builds)."""
    for d in Path(index_dir).glob("data-*"):
        if d.is_dir() and d.name != keep:
            shutil.rmtree(d, ignore_errors=True)
