"""Answering questions: retrieve top-k, read their cached states, soup them, decode from the soup."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ragsoup.background import load_background, model_background
from ragsoup.device import pick_device
from ragsoup.checkpoint import Loaded, load_model
from ragsoup.errors import RagsoupError
from ragsoup.generate import generate
from ragsoup.indexdir import DEFAULT_INDEX, read_manifest, read_passages
from ragsoup.retrieve import (bridge_first, bridge_names, bridge_queries, get_embedder, hop_weight_scores, load_index,
                              merge_hops, names_any, score_passages, search)
from ragsoup.soup import DEFAULT_TEMPERATURE, check_pool, check_weighting, relevance_weights, soup_rows
from ragsoup.statecache import DeviceStateCache
from ragsoup.store import StateStore, segments, unflatten_states


# a second hop reads this many more than k candidates, then takes those that name its bridge first (two-hop corpus,
# 1,000 passages, k = 5: both facts retrieved for 87.0% of questions with k candidates, 91.5% with k + 20, 92.0% with
# k + 50; docs/results.md section 1)
BRIDGE_CANDIDATES = 32


def check_hops(hops: int, k: int) -> None:
    """Raise unless ``hops`` is 1 or 2 and, with two, k leaves the second hop a slot."""
    if hops not in (1, 2):
        raise RagsoupError(f"--hops must be 1 or 2 (got {hops})")
    if hops == 2 and k < 2:
        raise RagsoupError("--hops 2 needs --k 2 or more: the second hop's passages take half of the k slots")


@dataclass
class AskResult:
    question: str
    answer: str
    k: int
    pool: str
    passages: list[dict]
    timings_ms: dict
    notices: list[str] = field(default_factory=list)
    weights: str = "uniform"
    hops: int = 1
    background: str | None = None  # --pool centered: what the soup was centred on (model or corpus)
    extractive: bool = False  # the answer was decoded as a span of its passages

    def to_json(self) -> dict:
        """The `ask --json` object."""
        d = asdict(self)
        d["passages"] = [{"id": p["id"], "score": p["score"], "weight": p["weight"], "hop": p["hop"], "text": p["text"]}
                         for p in self.passages]
        d.pop("notices")
        if d["background"] is None:  # only a centered soup has one
            d.pop("background")
        return d


def _shown_weights(weights: torch.Tensor | None, k: int) -> list[float]:
    """Each passage's soup weight as reported (4 decimals): the given weights, or 1/k each for an equal soup."""
    return [round(float(w), 4) for w in (weights.tolist() if weights is not None else [1.0 / k] * k)]


class Engine:
    """A loaded index + model, ready to answer questions (load once, ask many times)."""

    def __init__(self, index_dir: str | Path | None = None, model: str | Path | None = None, device: str = "auto",
                 cache_mb: float = 2048.0, background: str = "model") -> None:
        self.index_dir = Path(index_dir) if index_dir else DEFAULT_INDEX
        if index_dir is None and not (self.index_dir / "manifest.json").exists():
            raise RagsoupError(
                f"no index at {self.index_dir}: build the demo one with `ragsoup index corpora/demo` or pass --index DIR"
            )
        self.manifest = m = read_manifest(self.index_dir)
        self.device = pick_device(device)
        self.loaded: Loaded = load_model(model if model is not None else m.model, device=self.device)
        if self.loaded.fingerprint != m.model_fingerprint:
            raise RagsoupError(
                f"index {self.index_dir} was built with model {m.model_fingerprint} but model {self.loaded.fingerprint} "
                f"({self.loaded.path}) is loaded: rebuild with `ragsoup index CORPUS --model {self.loaded.path}` or drop --model"
            )
        data = self.index_dir / m.data_dir
        self.passages = read_passages(data / "passages.jsonl")
        self.faiss = load_index(data / "faiss.index")
        self.store = StateStore(data / "states.npy", m.state_numel, m.state_dtype)
        if not (len(self.passages) == self.faiss.ntotal == len(self.store) == m.n_passages):
            raise RagsoupError(f"index {self.index_dir} is inconsistent (row counts differ): rebuild it with `ragsoup index`")
        self.embedder = get_embedder(m.embedder, self.device)
        self.segments = segments(self.loaded.model.cfg)
        # for --pool centered: the model's background state (None if absent) or the corpus's (the index's mean state)
        self.background, self.background_source = _pick_background(background, data, self.loaded.path, m.state_numel)
        # on a GPU, hot rows stay on the device (LRU, cache_mb) and soups are pooled there; on a CPU the rows
        # stream from the memory map straight into the soup
        self.cache = DeviceStateCache(self.store.view(), self.device, cache_mb) if self.device == "cuda" else None

    def ask(self, question: str, k: int = 5, pool: str = "mean", max_new_tokens: int = 32,
            weights: str | None = None, temperature: float = DEFAULT_TEMPERATURE, hops: int = 1,
            extractive: bool = False) -> AskResult:
        """Answer one question from the soup of its top-k passages' states."""
        return self.ask_batch([question], k, pool, max_new_tokens, weights, temperature, hops, extractive)[0]

    def retrieve(self, questions: Sequence[str], k: int,
                 hops: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-k (scores, rows, hop, weight scores) per question.

        hops=2 adds a second search with what the top passage's sentence closest to the question adds to it
        (``bridge_queries``: the bridge to a fact the question does not name), its passages that name the bridge
        first (``bridge_first``), and merges the two (``merge_hops``). The weight scores are the scores, except that
        a second-hop passage naming its bridge scores as the first hop's best (``hop_weight_scores``).
        """
        q = self.embedder.encode(list(questions))
        scores, rows = search(self.faiss, q, k)
        if hops == 1:
            return scores, rows, np.ones_like(rows), scores
        bridges = bridge_queries(self.embedder, questions, q, [self.passages[r[0]].text for r in rows.tolist()])
        names = [bridge_names(b) for b in bridges]
        second = search(self.faiss, self.embedder.encode(bridges), k + BRIDGE_CANDIDATES)
        scores, rows, hop = merge_hops((scores, rows), bridge_first(second, self._naming(second[1], names)), k)
        return scores, rows, hop, hop_weight_scores(scores, hop, self._naming(rows, names))

    def _naming(self, rows: np.ndarray, names: Sequence[frozenset[str]]) -> np.ndarray:
        """[n, m] bool: whether passage ``rows[i, j]`` names one of question i's bridge ``names`` (-1 rows: no)."""
        return np.array([[r >= 0 and names_any(self.passages[r].text, names[i]) for r in row]
                         for i, row in enumerate(rows.tolist())], bool).reshape(rows.shape)

    def ask_batch(self, questions: Sequence[str], k: int = 5, pool: str = "mean", max_new_tokens: int = 32,
                  weights: str | None = None, temperature: float = DEFAULT_TEMPERATURE,
                  hops: int = 1, extractive: bool = False) -> list[AskResult]:
        """Answer several questions at once: one embedding call, one FAISS search, one batched decode.

        Each question gets its own top-k soup; timings are the batch's per stage, divided by its size.
        ``weights``: "retrieval" weighs each passage by softmax(score / temperature), "uniform" is the plain soup;
        None: retrieval where the pooling takes weights (mean, centered), else uniform. ``hops=2``: see ``retrieve``.
        ``extractive``: each answer is decoded as a span of its k passages' text (``generate``'s ``spans_of``).
        """
        questions = [q.strip() for q in questions]
        if not questions or not all(questions):
            raise RagsoupError("the question is empty: ask something, e.g. ragsoup ask \"What is ...?\"")
        if k <= 0:
            raise RagsoupError(f"--k must be at least 1 (got {k})")
        check_pool(pool)
        weights = check_weighting(weights, pool, temperature)
        if pool == "centered" and self.background is None:
            raise RagsoupError(f"pooling 'centered' needs the model's background state: create it with "
                               f"`ragsoup background {self.loaded.path}`, or centre on the index's with --background "
                               f"corpus, or use --pool mean")
        notices = []
        if k > len(self.passages):
            notices.append(f"k={k} is more than the {len(self.passages)} passages in the index; using k={len(self.passages)}")
            k = len(self.passages)
        check_hops(hops, k)
        t0 = time.perf_counter()
        scores, rows, hop, w_scores = self.retrieve(questions, k, hops)
        t1 = time.perf_counter()
        w_all = relevance_weights(w_scores, temperature) if weights == "retrieval" else None  # [n, k]
        # each question's k rows stream, in file order, straight from the memory map into its fp32 soup (one pass)
        view = self.store.view() if self.cache is None else None
        soups = []
        for i, r in enumerate(rows.tolist()):
            order = sorted(range(len(r)), key=r.__getitem__)
            idx = [r[j] for j in order]
            w = None if w_all is None else w_all[i, order]
            if self.cache is not None:
                soups.append(self.cache.soup(idx, pool, self.segments, self.background, w))
            else:
                soups.append(soup_rows(view, pool, self.segments, index=idx, background=self.background, weights=w))
        souped = torch.stack(soups)
        states = unflatten_states(souped.to(self.device), self.loaded.model.cfg)
        if self.device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        spans_of = ([[self.passages[r].text for r in row if r >= 0] for row in rows.tolist()]
                    if extractive else None)
        answers = generate(self.loaded.model, self.loaded.tokenizer, states, questions, max_new_tokens,
                           spans_of=spans_of)
        t3 = time.perf_counter()
        n = len(questions)
        ms = lambda a, b: round((b - a) * 1000 / n, 3)  # noqa: E731
        timings = {"retrieve": ms(t0, t1), "soup": ms(t1, t2), "decode": ms(t2, t3), "total": ms(t0, t3)}
        out = []
        for i, (question, answer, r_row, s_row) in enumerate(zip(questions, answers, rows.tolist(), scores.tolist())):
            ws = _shown_weights(None if w_all is None else w_all[i], len(r_row))
            passages = [
                {"id": self.passages[r].id, "score": round(float(sc), 4), "weight": wt, "hop": int(h),
                 "text": self.passages[r].text, "title": self.passages[r].title, "source": self.passages[r].source}
                for r, sc, wt, h in zip(r_row, s_row, ws, hop[i].tolist())
            ]
            out.append(AskResult(question, answer, k, pool, passages, dict(timings), list(notices), weights, hops,
                                 self.background_source if pool == "centered" else None, extractive))
        return out


BACKGROUNDS = ("model", "corpus")


def _pick_background(which: str, data_dir: Path, model_dir: Path, numel: int) -> tuple[torch.Tensor | None, str]:
    """(row [D] or None, "model" | "corpus" | "none"): the background the centered soup reads, per ``which``."""
    if which not in BACKGROUNDS:
        raise RagsoupError(f"unknown background '{which}': use model or corpus")
    folder = data_dir if which == "corpus" else model_dir
    row = load_background(folder, numel)
    if row is None and which == "corpus":
        raise RagsoupError(f"index data {data_dir} has no corpus background (built before ragsoup stored one): "
                           f"rebuild the index with `ragsoup index`, or use --background model")
    return row, which if row is not None else "none"


def ask_document(
    doc: str | Path, question: str, model: str | Path | None = None, chunk_chars: int = 200, pool: str = "mean",
    max_new_tokens: int = 32, device: str = "auto", weights: str | None = None,
    temperature: float = DEFAULT_TEMPERATURE, extractive: bool = False,
) -> AskResult:
    """Long-document mode: split one document into segments, encode each alone, soup them all, answer.

    ``weights="retrieval"`` weighs each segment by its embedder score for the question (softmax / temperature).
    """
    from ragsoup.corpus import chunk_text
    from ragsoup.evaluate import soup_state

    question = question.strip()
    if not question:
        raise RagsoupError("the question is empty: ask something, e.g. ragsoup ask --doc FILE \"What is ...?\"")
    check_pool(pool)
    weights = check_weighting(weights, pool, temperature)
    path = Path(doc)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RagsoupError(f"document {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RagsoupError(f"cannot read {path} as UTF-8 text ({exc})") from exc
    segments = chunk_text(text, max_chars=chunk_chars)
    if not segments:
        raise RagsoupError(f"document {path} is empty")
    dev = pick_device(device)
    loaded = load_model(model, device=dev)
    t0 = time.perf_counter()
    scores, w = np.zeros(len(segments), dtype=np.float32), None
    if weights == "retrieval":
        scores = score_passages(get_embedder(None, dev), question, segments)
        w = relevance_weights(scores, temperature)
    states = soup_state(loaded.model, loaded.tokenizer, segments, pool, background=model_background(loaded), weights=w)
    t1 = time.perf_counter()
    answer = generate(loaded.model, loaded.tokenizer, states, [question], max_new_tokens,
                      spans_of=[segments] if extractive else None)[0]
    t2 = time.perf_counter()
    passages = [{"id": f"{path.name}#{i}", "score": round(float(sc), 4), "weight": wt, "hop": 1, "text": s,
                 "title": path.name, "source": str(path)}
                for i, (s, sc, wt) in enumerate(zip(segments, scores, _shown_weights(w, len(segments))))]
    timings = {"retrieve": 0.0, "soup": round((t1 - t0) * 1000, 3), "decode": round((t2 - t1) * 1000, 3),
               "total": round((t2 - t0) * 1000, 3)}
    return AskResult(question, answer, len(segments), pool, passages, timings, weights=weights,
                     background="model" if pool == "centered" else None, extractive=extractive)
