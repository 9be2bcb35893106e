"""Benchmarks: answer quality without retrieval (`eval`) and the retrieval + soup vs concat sweep (`bench`).

``run_eval`` scores examples that carry their own gold + distractor passages (SQuAD, HotpotQA or a
generated task), so answer quality is measured alone. ``run_bench`` indexes a generated corpus with the
same code path as ``ragsoup index`` and sends every query through the real pipeline for each k and mode:

    soup    Engine.ask: embed + FAISS top-k -> read k cached state rows -> pool -> decode
    concat  the same retrieval -> re-encode the k passages concatenated (best passage last by default,
            next to the question) -> decode

and reports EM/F1, recall@k, latency percentiles per stage, peak memory and the bytes of state read per
query, next to the machine's copy bandwidth (the lower bound on reading those bytes).
"""

from __future__ import annotations

import csv
import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ragsoup.errors import RagsoupError

# --------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------

DEFAULT_PASSAGE_CHARS = 200
EVAL_FILE_TASKS = ("squad", "hotpotqa")
EVAL_GENERATED_TASKS = ("needle", "needle-multikey", "needle-distractor", "needle-multivalue", "needle-packed",
                        "needle-word", "needle-word-distractor", "two-hop", "two-hop-bridge", "longdoc",
                        "longdoc-multifact")
EVAL_TASKS = EVAL_FILE_TASKS + EVAL_GENERATED_TASKS
BENCH_TASKS = ("needle", "needle-multikey", "needle-distractor", "two-hop", "squad", "hotpotqa")
MODES = ("soup", "concat")
# the order concat reads its k passages in: the best-scored one last, next to the question (a recurrent reader
# remembers the end best: two-hop corpus, k = 5, two hops: 50.0 EM vs 42.5 with the best first, docs/results.md 1b)
CONCAT_ORDERS = ("best-last", "best-first")


def model_info(model: str | Path | None) -> tuple[Path, str, dict]:
    """(checkpoint directory, fingerprint, config.json meta) without loading the weights."""
    from ragsoup.checkpoint import fingerprint, resolve_model_path

    path = resolve_model_path(model)
    try:
        conf = json.loads((path / "config.json").read_text())
        fp = fingerprint(path)
    except (OSError, ValueError) as exc:
        raise RagsoupError(f"cannot read model {path}: {exc}") from exc
    meta = {k: v for k, v in conf.items() if k not in ("model", "format")} if isinstance(conf, dict) else {}
    return path, fp, meta


def trained_passage_chars(meta: dict) -> int:
    """The passage length the model was trained on (``train.passage_chars`` in its meta), else 200."""
    train = meta.get("train") if isinstance(meta, dict) else None
    value = train.get("passage_chars") if isinstance(train, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_PASSAGE_CHARS


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def resolve_passage_chars(given: int | None, meta: Callable[[], dict]) -> int:
    """Generated passages' length: ``given`` (--passage-chars), else the model's trained length (``meta()`` is read
    only then)."""
    if given is None:
        return trained_passage_chars(meta())
    _check_positive("--passage-chars", given)
    return given


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise RagsoupError(f"{name} must be at least 1 (got {value})")


# --------------------------------------------------------------------------------------------------------------
# eval: answer quality on examples that carry their own passages
# --------------------------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    task: str
    mode: str
    k: int
    n: int
    em: float
    f1: float
    weights: str = "uniform"
    extractive: bool = False

    def to_json(self) -> dict:
        """The `eval --json` object."""
        return asdict(self)


def _examples_from_corpus_dir(data: Path, rng: random.Random, k: int, limit: int | None) -> list:
    """Examples from a make-corpus directory (or its questions.jsonl): gold passages + random distractors."""
    from ragsoup.tasks.base import SoupExample, shuffle_with_gold
    from ragsoup.tasks.files import CORPUS_FILE, read_corpus, read_questions

    questions = read_questions(data)
    corpus_path = data if data.is_dir() else data.parent / CORPUS_FILE
    records = read_corpus(corpus_path)
    text_of = {r["id"]: r["text"] for r in records}
    ids = list(text_of)
    out = []
    for i, q in enumerate(questions[: limit if limit is not None else len(questions)]):
        gold_ids = list(dict.fromkeys(q["gold_ids"]))
        unknown = [g for g in gold_ids if g not in text_of]
        if unknown:
            raise RagsoupError(f"{data}: question {i} cites gold id(s) not in {corpus_path}: {', '.join(unknown)}")
        if k < len(gold_ids):
            raise RagsoupError(f"--k {k} is smaller than the {len(gold_ids)} gold passages of question {i}: raise --k")
        gold_set = set(gold_ids)
        others = [j for j in ids if j not in gold_set]
        n_other = min(k - len(gold_ids), len(others))
        docs = [text_of[g] for g in gold_ids] + [text_of[j] for j in rng.sample(others, n_other)]
        docs, gold = shuffle_with_gold(rng, docs, range(len(gold_ids)))
        out.append(SoupExample(docs=docs, question=q["question"], answer=q["answer"], gold=gold))
    return out


def eval_examples(task: str, data: str | Path | None, k: int, limit: int | None, seed: int,
                  passage_chars: int = DEFAULT_PASSAGE_CHARS, filler: str | Path | None = None,
                  split: str = "all") -> list:
    """The SoupExamples `eval` scores: from a SQuAD/HotpotQA file, a make-corpus directory, or generated.

    ``split`` (SQuAD): all questions of the file, or the train / val side of ragsoup's article split.
    """
    from ragsoup.tasks import generate_example

    if task not in EVAL_TASKS:
        raise RagsoupError(f"unknown task '{task}': use one of {', '.join(EVAL_TASKS)}")
    from ragsoup.tasks.squad import SPLITS

    if split not in SPLITS:  # before reading any file
        raise RagsoupError(f"unknown --split '{split}': use all, train or val")
    _check_positive("--k", k)
    _check_positive("--limit", limit)
    rng = random.Random(seed)
    if task in EVAL_FILE_TASKS:
        if data is None:
            raise RagsoupError(f"--task {task} needs --data FILE (the original {task} JSON)")
        path = Path(data)
        if not path.exists():
            raise RagsoupError(f"--data file not found: {path}")
        if task == "squad":
            from ragsoup.tasks.squad import load_squad, split_side, squad_examples

            records = split_side(load_squad(path), split)
            it = squad_examples(records, rng, k)
        else:
            from ragsoup.tasks.hotpot import hotpot_examples, load_hotpot

            it = hotpot_examples(load_hotpot(path), rng, k)
        out = []
        for ex in it:
            if limit is not None and len(out) >= limit:
                break
            out.append(ex)
        if not out:
            raise RagsoupError(f"{path}: no answerable {task} questions found")
        return out
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise RagsoupError(f"--data file not found: {path}")
        return _examples_from_corpus_dir(path, rng, k, limit)
    n = limit if limit is not None else 200
    kw = {}
    if filler is not None:  # real prose haystacks (a .txt, or a Gutenberg .jsonl(.gz) shard)
        from ragsoup.tasks.filler import ProseFiller

        kw["filler"] = ProseFiller(filler)
    return [generate_example(task, rng, k, passage_chars=passage_chars, **kw) for _ in range(n)]


def run_eval(task: str, data: str | Path | None = None, k: int = 5, mode: str = "soup", pool: str = "mean",
             limit: int | None = None, model: str | Path | None = None, seed: int = 0, device: str = "auto",
             batch_size: int = 8, max_new_tokens: int = 32, max_tokens: int = 1024,
             on_start: Callable[[int], None] | None = None,
             on_batch: Callable[[int], None] | None = None, filler: str | Path | None = None,
             encoder: str | Path | None = None, split: str = "all", passage_chars: int | None = None,
             weights: str = "uniform", temperature: float | None = None,
             background_text: str | None = None, extractive: bool = False,
             predictions: str | Path | None = None) -> EvalResult:
    """Predict and score `task` examples (gold + distractor passages given, no retrieval); EM/F1 in percent.

    ``encoder``: a checkpoint that encodes the passages instead of ``model`` (decoder-only finetuned models).
    ``passage_chars``: generated tasks' passage length (default: the length the model was trained on).
    ``weights="retrieval"``: weigh each example's passages by the embedder's scores for its question, as ``ask``
    does with the retrieved ones (softmax / temperature); the embedder then does part of the reading.
    ``background_text``: centered only: centre on the mean state of 512 passages of this text ("template" or a prose
    file) instead of the model's background file, like an index's corpus background.
    ``extractive``: answers decoded as spans of each example's passages.
    ``predictions``: also write every question's record (``evaluate.prediction_records``) to this JSONL file.
    """
    from ragsoup.background import model_background, text_background
    from ragsoup.checkpoint import load_model
    from ragsoup.device import pick_device
    from ragsoup.evaluate import predict, prediction_records, score
    from ragsoup.jsonl import write_jsonl
    from ragsoup.soup import DEFAULT_TEMPERATURE, check_pool, check_weighting

    if mode not in MODES:
        raise RagsoupError(f"unknown mode '{mode}': use soup or concat")
    check_pool(pool)
    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    check_weighting(weights, pool, temperature)
    if weights == "retrieval" and mode != "soup":
        raise RagsoupError("--weights retrieval weighs a soup's passages: use it with --mode soup")
    if background_text and pool != "centered":
        raise RagsoupError("--background-text is what --pool centered centres on: use it with --pool centered")
    _check_positive("--batch-size", batch_size)
    if predictions is not None and not Path(predictions).parent.is_dir():
        raise RagsoupError(f"--predictions {predictions}: folder {Path(predictions).parent} does not exist; create it "
                           "or write the file elsewhere")
    if task not in EVAL_TASKS:  # before loading anything
        raise RagsoupError(f"unknown task '{task}': use one of {', '.join(EVAL_TASKS)}")
    if passage_chars is not None or (task in EVAL_GENERATED_TASKS and data is None):
        passage_chars = resolve_passage_chars(passage_chars, lambda: model_info(model)[2])
    else:
        passage_chars = DEFAULT_PASSAGE_CHARS
    examples = eval_examples(task, data, k, limit, seed, passage_chars, filler, split)
    loaded = load_model(model, device=pick_device(device))
    enc, states_from = None, loaded
    if encoder is not None:
        states_from = load_model(encoder, device=pick_device(device))
        if (states_from.model.cfg.state_numel() != loaded.model.cfg.state_numel()
                or states_from.tokenizer.vocab_size != loaded.tokenizer.vocab_size):
            raise RagsoupError(f"--encoder {encoder} does not match --model: it needs the same state size and tokenizer")
        enc = states_from.model
    if on_start:
        on_start(len(examples))
    background = None
    if pool == "centered":  # the encoder's states' background
        background = (text_background(states_from, background_text, passage_chars) if background_text
                      else model_background(states_from))
    w = example_weights(examples, temperature, pick_device(device)) if weights == "retrieval" else None
    preds = predict(loaded.model, loaded.tokenizer, examples, mode=mode, pool=pool, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, max_tokens=max_tokens, on_batch=on_batch, encoder=enc,
                    background=background, weights=w, extractive=extractive)
    if task == "two-hop-bridge":  # scored on the country, as two-hop is; the bridge city is the model's own step
        from dataclasses import replace

        from ragsoup.tasks.twohop import final_answer

        preds = [final_answer(p) for p in preds]
        examples = [replace(ex, answer=final_answer(ex.answer), answers=[]) for ex in examples]
    s = score(preds, examples)
    if predictions is not None:
        write_jsonl(predictions, prediction_records(preds, examples))
    return EvalResult(task=task, mode=mode, k=k, n=s["n"], em=s["em"], f1=s["f1"], weights=weights,
                      extractive=extractive)


def example_weights(examples: Sequence[Any], temperature: float, device: str = "cpu") -> list:
    """Each example's relevance weights [k]: softmax of the default embedder's passage scores / temperature."""
    from ragsoup.retrieve import get_embedder, score_passages
    from ragsoup.soup import relevance_weights

    emb = get_embedder(None, device)
    return [relevance_weights(score_passages(emb, ex.question, ex.docs), temperature) for ex in examples]


# --------------------------------------------------------------------------------------------------------------
# bench: memory bandwidth and peak memory
# --------------------------------------------------------------------------------------------------------------


def measure_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Plain large-array copy rate in GB/s (bytes copied / best time of ``repeats``)."""
    n = max(nbytes // 8, 1)
    src = np.ones(n, dtype=np.float64)
    dst = np.zeros(n, dtype=np.float64)  # both touched: no page faults inside the timed copies
    best = math.inf
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    del src, dst
    return n * 8 / best / 1e9


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_bytes() -> int | None:
    try:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak resident set size over a block: resets VmHWM via /proc/self/clear_refs, else samples statm."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.start_bytes: int | None = None
        self.peak_bytes: int | None = None
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        self.start_bytes = _rss_bytes()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
            self._hwm = _status_kb("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            self.peak_bytes = self.start_bytes or 0
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes()
            if rss is not None and rss > (self.peak_bytes or 0):
                self.peak_bytes = rss

    def __exit__(self, *exc: Any) -> None:
        if self._hwm:
            hwm = _status_kb("VmHWM")
            self.peak_bytes = hwm * 1024 if hwm is not None else None
        else:
            self._stop.set()
            if self._thread:
                self._thread.join()
            rss = _rss_bytes()
            if rss is not None and rss > (self.peak_bytes or 0):
                self.peak_bytes = rss

    @property
    def peak_mb(self) -> float | None:
        """Peak RSS during the block in MiB."""
        return None if self.peak_bytes is None else self.peak_bytes / 2**20

    @property
    def growth_mb(self) -> float | None:
        """Peak RSS during the block minus RSS at its start, in MiB."""
        if self.peak_bytes is None or self.start_bytes is None:
            return None
        return max(self.peak_bytes - self.start_bytes, 0) / 2**20


# --------------------------------------------------------------------------------------------------------------
# bench: corpus + index (cached), queries through the real pipeline
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BenchConfig:
    task: str = "needle"
    k_max: int = 256
    modes: tuple[str, ...] = ("soup", "concat")
    pool: str = "mean"
    background: str = "model"  # what --pool centered centres on: model (its background file) or corpus (the index's)
    # soup: "retrieval" (softmax of the retrieval scores / temperature), "uniform", or both ("uniform,retrieval":
    # one soup row per weighting and k); None: both where the pooling takes weights (mean, centered), else uniform
    weights: str | None = None
    temperature: float | None = None  # default: soup.DEFAULT_TEMPERATURE
    queries: int = 100
    passages: int = 4096
    model: str | None = None
    seed: int = 0
    device: str = "auto"
    concat_max_k: int | None = None  # default: k_max
    concat_queries: int | None = None  # default: min(queries, 20)
    warmup: int = 2  # untimed queries per (mode, k) before timing
    max_new_tokens: int = 32
    cache_dir: str | None = None  # default: .bench/<task>-<passages>-<seed>-<model fingerprint>
    batch_size: int = 16
    bandwidth_bytes: int = 256 << 20
    query_batch: int = 1  # soup: questions answered together (Engine.ask_batch); latencies are then per question
    cache_mb: float = 2048.0  # on a GPU: hot state rows kept on the device (LRU)
    embedder: str | None = None  # a sentence-transformers directory (default: the bundled MiniLM)
    passage_chars: int | None = None  # generated passages' length (default: the length the model was trained on)
    data: str | None = None  # squad / hotpotqa: the dataset file the corpus and questions come from
    split: str = "val"  # squad: ragsoup's by-article split side (val = held-out articles, train, all)
    hops: int = 1  # 2: ask's second search (Engine.retrieve) for soup and concat alike; the sweep then starts at k = 2
    concat_order: str = "best-last"  # concat's passage order (CONCAT_ORDERS); a soup's mean has none
    extractive: bool = False  # answers decoded as spans of the retrieved passages (both modes)

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """About a minute on a 2-core CPU: 256 passages, 16 queries, k up to 16."""
        base = dict(passages=256, queries=16, k_max=16, warmup=2, bandwidth_bytes=128 << 20)
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class BenchRow:
    mode: str
    k: int
    pool: str | None
    n_queries: int
    em: float
    f1: float
    recall_at_k: float
    recall_all_at_k: float
    latency_ms_p50: float
    latency_ms_p95: float
    stages_ms_p50: dict
    peak_mem_mb: float | None
    peak_mem_growth_mb: float | None
    state_bytes_read: int
    bandwidth_bound_ms: float | None = None  # soup: state_bytes_read / copy bandwidth
    load_soup_ms_p50: float | None = None  # soup: measured read + pool time
    query_batch: int = 1  # questions answered together; > 1: stage times are the batch's divided by its size
    weights: str | None = None  # soup: uniform | retrieval


@dataclass
class BenchResult:
    task: str
    model: str
    model_fingerprint: str
    device: str
    bandwidth_gbps: float
    threads: int  # torch CPU threads
    n_passages: int
    passage_chars: int
    index_dir: str
    index_seconds: float  # 0 when the cached index was reused
    rows: list[BenchRow] = field(default_factory=list)
    temperature: float | None = None  # the relevance weights' softmax temperature (soup rows with retrieval weights)
    background: str | None = None  # --pool centered: the background the soups were centred on (corpus or model)
    hops: int = 1  # retrieval hops (both modes read the same passages)
    concat_order: str = "best-last"  # the order concat read its passages in
    extractive: bool = False  # answers were decoded as spans of the retrieved passages (both modes)

    def to_json(self) -> dict:
        """The `bench --json` object (and results.json)."""
        return asdict(self)


Progress = Callable[[str, int, int], None]  # (label, done, total)


def sweep_ks(k_max: int, n_passages: int | None = None) -> list[int]:
    """Powers of two from 1 up to k_max (k_max itself added when it is not one), capped at n_passages."""
    _check_positive("--k", k_max)
    top = min(k_max, n_passages) if n_passages else k_max
    ks, k = [], 1
    while k <= top:
        ks.append(k)
        k *= 2
    if ks[-1] != top:
        ks.append(top)
    return ks


def prepare_index(cfg: BenchConfig, progress: Progress | None = None) -> tuple[Path, list[dict], float]:
    """Generate the corpus and index it like `ragsoup index` into the cache dir (reused when it matches).

    Returns (index dir, questions, seconds spent building; 0 when reused).
    """
    from ragsoup.build import DEFAULT_CHUNK_CHARS
    from ragsoup.indexdir import read_manifest
    from ragsoup.tasks.files import CORPUS_FILE, FILE_TASKS, make_corpus, make_file_corpus, read_questions, require_data

    path, fp, meta = model_info(cfg.model)
    from_file = cfg.task in FILE_TASKS
    if from_file:
        require_data(cfg.task, cfg.data)
    elif cfg.data is not None:
        raise RagsoupError(f"--data is for the squad and hotpotqa tasks; task {cfg.task} is generated")
    # a dataset's passages are what they are (indexed like `ragsoup index`, 600-character chunks)
    passage_chars = DEFAULT_CHUNK_CHARS if from_file else resolve_passage_chars(cfg.passage_chars, lambda: meta)
    name = f"{cfg.task}-{cfg.passages}-{cfg.seed}-{fp}"
    if from_file:
        data = Path(cfg.data).expanduser().resolve()
        if not data.is_file():
            raise RagsoupError(f"--data {cfg.data} not found")
        name = f"{cfg.task}-{data.name.split('.')[0]}-{cfg.split}-{cfg.passages}-{cfg.seed}-{fp}"
    elif passage_chars != trained_passage_chars(meta):
        name += f"-{passage_chars}c"
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(".bench") / name
    corpus_dir, index_dir = cache / "corpus", cache / "index"
    per_q = 2 if cfg.task == "two-hop" else 1
    # a fixed number of questions per corpus (1 in 8 passages), so --queries does not change the corpus
    corpus_queries = max(cfg.queries, cfg.passages // 8)
    if not from_file and corpus_queries * per_q > cfg.passages:
        raise RagsoupError(f"--queries {cfg.queries} needs {cfg.queries * per_q} gold passages but --passages is "
                           f"{cfg.passages}: raise --passages or lower --queries")
    params = {"task": cfg.task, "passages": cfg.passages, "corpus_queries": corpus_queries, "seed": cfg.seed,
              "passage_chars": passage_chars, "model_fingerprint": fp}
    if from_file:
        st = data.stat()
        params.update(data=str(data), data_bytes=st.st_size, data_mtime=st.st_mtime_ns, split=cfg.split)
    if cfg.embedder:
        params["embedder"] = str(Path(cfg.embedder).expanduser().resolve())
    stamp = cache / "bench.json"
    reuse = False
    if (index_dir / "manifest.json").exists() and stamp.exists():
        try:
            reuse = json.loads(stamp.read_text()) == params and read_manifest(index_dir).model_fingerprint == fp
        except (OSError, ValueError, RagsoupError):
            reuse = False
    seconds = 0.0
    if not reuse:
        from ragsoup.build import build_index

        t0 = time.perf_counter()
        cache.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        command = f"ragsoup bench --task {cfg.task} --passages {cfg.passages} (seed {cfg.seed})"
        if from_file:
            make_file_corpus(cfg.task, data, cfg.split, cfg.passages, corpus_queries, cfg.seed, corpus_dir, command)
        else:
            make_corpus(cfg.task, cfg.passages, corpus_queries, cfg.seed, corpus_dir, passage_chars=passage_chars,
                        command=command)

        def on_build(stage: str, done: int, total: int) -> None:
            if progress:
                progress({"embed": "embedding", "encode": "state encoding"}.get(stage, stage), done, total)

        build_index(corpus_dir / CORPUS_FILE, index_dir, model=str(path), batch_size=cfg.batch_size,
                    device=cfg.device, chunk_chars=passage_chars if from_file else max(600, 2 * passage_chars + 100),
                    embedder=cfg.embedder,
                    progress=on_build if progress else None)
        stamp.write_text(json.dumps(params, indent=2) + "\n")
        seconds = time.perf_counter() - t0
    return index_dir, read_questions(corpus_dir)[: cfg.queries], seconds


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _ask_soup(engine: Any, questions: list[str], k: int, pool: str, max_new_tokens: int,
              weights: str, temperature: float, hops: int = 1,
              extractive: bool = False) -> list[tuple[str, list[str], dict]]:
    """Questions answered together through Engine.ask_batch: (answer, retrieved passage ids, stage ms) each."""
    out = []
    for res in engine.ask_batch(questions, k=k, pool=pool, max_new_tokens=max_new_tokens, weights=weights,
                                temperature=temperature, hops=hops, extractive=extractive):
        t = res.timings_ms
        stages = {"retrieve": t["retrieve"], "load_soup": t["soup"], "decode": t["decode"], "total": t["total"]}
        out.append((res.answer, [p["id"] for p in res.passages], stages))
    return out


def _ask_concat(engine: Any, question: str, k: int, max_new_tokens: int, hops: int = 1,
                order: str = "best-last", extractive: bool = False) -> tuple[str, list[str], dict]:
    """One query the concat way: same retrieval, re-encode the k passages concatenated (``order``), decode."""
    from ragsoup.generate import concat_states, generate

    k = min(k, len(engine.passages))
    model, tok = engine.loaded.model, engine.loaded.tokenizer
    t0 = time.perf_counter()
    _, rows, _, _ = engine.retrieve([question], k, hops)
    rows = [r for r in rows[0].tolist() if r >= 0]
    if order == "best-last":
        rows = rows[::-1]
    t1 = time.perf_counter()
    texts = [engine.passages[r].text for r in rows]
    states = concat_states(model, tok, texts, engine.manifest.max_tokens)
    _sync(engine.device)
    t2 = time.perf_counter()
    answer = generate(model, tok, states, [question], max_new_tokens, spans_of=[texts] if extractive else None)[0]
    _sync(engine.device)
    t3 = time.perf_counter()
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    stages = {"retrieve": ms(t0, t1), "encode": ms(t1, t2), "decode": ms(t2, t3), "total": ms(t0, t3)}
    return answer, [engine.passages[r].id for r in rows], stages


def bench_row(engine: Any, mode: str, k: int, questions: list[dict], pool: str,
              warmup: int, max_new_tokens: int, bandwidth_gbps: float,
              progress: Progress | None = None, query_batch: int = 1, *, weights: str,
              temperature: float, hops: int = 1, concat_order: str = "best-last", extractive: bool = False) -> BenchRow:
    """Run ``questions`` through one (mode, k) after ``warmup`` untimed queries; aggregate one row.

    Soup answers ``query_batch`` questions at a time (one embedding call, one batched decode); concat one.
    """
    from ragsoup.metrics import best_em_f1, gold_retrieved

    step = query_batch if mode == "soup" else 1

    def answers(qs: list[dict]):
        for j in range(0, len(qs), step):
            chunk = [q["question"] for q in qs[j : j + step]]
            if mode == "soup":
                yield from _ask_soup(engine, chunk, k, pool, max_new_tokens, weights, temperature, hops, extractive)
            else:
                yield _ask_concat(engine, chunk[0], k, max_new_tokens, hops, concat_order, extractive)

    # concat warms up with one query at most: at large k each one re-encodes k passages
    for _ in answers(questions[: max(min(warmup, 1) if mode == "concat" else warmup * step, 0)]):
        pass
    ems, f1s, hits, hits_all, stages = [], [], [], [], []
    label = f"{mode} k={k}"
    with PeakMemory() as mem:
        for i, (q, (answer, ids, st)) in enumerate(zip(questions, answers(questions))):
            em, f1 = best_em_f1(answer, q.get("answers") or [q["answer"]])  # SQuAD: every accepted answer
            ems.append(em)
            f1s.append(f1)
            hits.append(float(gold_retrieved(ids, q["gold_ids"])))
            hits_all.append(float(gold_retrieved(ids, q["gold_ids"], require_all=True)))
            stages.append(st)
            if progress:
                progress(label, i + 1, len(questions))
    n = len(questions)
    mean = lambda xs: 100 * sum(xs) / n if n else float("nan")  # noqa: E731
    totals = [s["total"] for s in stages]
    p50 = {name: round(percentile([s[name] for s in stages], 50), 3) for name in (stages[0] if stages else {})}
    soup_k = min(k, len(engine.passages))
    state_bytes = soup_k * engine.manifest.state_bytes_per_passage if mode == "soup" else 0
    row = BenchRow(
        mode=mode, k=k, pool=pool if mode == "soup" else None, n_queries=n, em=mean(ems), f1=mean(f1s),
        recall_at_k=mean(hits), recall_all_at_k=mean(hits_all),
        latency_ms_p50=round(percentile(totals, 50), 3), latency_ms_p95=round(percentile(totals, 95), 3),
        stages_ms_p50=p50, peak_mem_mb=None if mem.peak_mb is None else round(mem.peak_mb, 1),
        peak_mem_growth_mb=None if mem.growth_mb is None else round(mem.growth_mb, 1), state_bytes_read=state_bytes,
        query_batch=step, weights=weights if mode == "soup" else None,
    )
    if mode == "soup":
        row.bandwidth_bound_ms = round(state_bytes / (bandwidth_gbps * 1e9) * 1000, 4) if bandwidth_gbps > 0 else None
        row.load_soup_ms_p50 = p50.get("load_soup")
    return row


def run_bench(cfg: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Index (or reuse) the bench corpus, then sweep k over powers of two for each mode; one row per (mode, k)."""
    from ragsoup.soup import DEFAULT_TEMPERATURE, WEIGHTED_POOLS, check_pool, check_weighting
    from ragsoup.tasks.files import FILE_TASKS

    if cfg.task not in BENCH_TASKS:
        raise RagsoupError(f"unknown bench task '{cfg.task}': use one of {', '.join(BENCH_TASKS)}")
    bad = [m for m in cfg.modes if m not in MODES]
    if bad or not cfg.modes:
        raise RagsoupError(f"unknown mode(s) {', '.join(bad) or '(none)'}: --modes takes soup, concat or soup,concat")
    check_pool(cfg.pool)
    temperature = DEFAULT_TEMPERATURE if cfg.temperature is None else cfg.temperature
    default = "uniform,retrieval" if cfg.pool in WEIGHTED_POOLS else "uniform"  # the paper's soup, and ask's
    weightings = [check_weighting(w.strip(), cfg.pool, temperature) for w in (cfg.weights or default).split(",")]
    for name, v in (("--k", cfg.k_max), ("--max-new-tokens", cfg.max_new_tokens), ("--queries", cfg.queries),
                    ("--query-batch", cfg.query_batch),
                    ("--passages", cfg.passages),
                    ("--concat-max-k", cfg.concat_max_k), ("--concat-queries", cfg.concat_queries)):
        _check_positive(name, v)
    if cfg.concat_order not in CONCAT_ORDERS:
        raise RagsoupError(f"unknown concat order '{cfg.concat_order}': use {' or '.join(CONCAT_ORDERS)}")
    from ragsoup.ask import check_hops

    check_hops(cfg.hops, cfg.k_max)
    import torch

    from ragsoup.device import pick_device

    device = pick_device(cfg.device)
    index_dir, questions, index_seconds = prepare_index(cfg, progress)

    from ragsoup.ask import Engine

    engine = Engine(index_dir, model=str(model_info(cfg.model)[0]), device=device, cache_mb=cfg.cache_mb,
                    background=cfg.background)
    if progress:
        progress("bandwidth", 0, 1)
    bandwidth = measure_bandwidth(cfg.bandwidth_bytes)
    if progress:
        progress("bandwidth", 1, 1)
    ks = [k for k in sweep_ks(cfg.k_max, len(engine.passages)) if k >= cfg.hops]  # two hops need two slots
    concat_max_k = cfg.concat_max_k if cfg.concat_max_k is not None else cfg.k_max
    concat_n = cfg.concat_queries if cfg.concat_queries is not None else min(cfg.queries, 20)
    from ragsoup.checkpoint import model_label

    result = BenchResult(task=cfg.task, model=model_label(engine.loaded.path), model_fingerprint=engine.loaded.fingerprint,
                         device=device, bandwidth_gbps=round(bandwidth, 3), threads=torch.get_num_threads(),
                         n_passages=len(engine.passages),
                         passage_chars=engine.manifest.chunk_chars if cfg.task in FILE_TASKS else
                         resolve_passage_chars(cfg.passage_chars, lambda: engine.loaded.meta),
                         index_dir=str(index_dir),
                         index_seconds=round(index_seconds, 2),
                         temperature=temperature,
                         background=engine.background_source if cfg.pool == "centered" else None,
                         hops=cfg.hops, concat_order=cfg.concat_order, extractive=cfg.extractive)
    runs = [(m, w) for m in cfg.modes for w in (weightings if m == "soup" else ["uniform"])]
    for mode, weights in runs:
        for k in ks:
            if mode == "concat" and k > concat_max_k:
                continue
            qs = questions if mode == "soup" else questions[:concat_n]
            result.rows.append(bench_row(engine, mode, k, qs, cfg.pool, cfg.warmup, cfg.max_new_tokens,
                                         bandwidth, progress, cfg.query_batch, weights=weights,
                                         temperature=temperature, hops=cfg.hops, concat_order=cfg.concat_order,
                                         extractive=cfg.extractive))
    return result


# --------------------------------------------------------------------------------------------------------------
# bench: files
# --------------------------------------------------------------------------------------------------------------

CSV_FIELDS = ("mode", "k", "pool", "weights", "n_queries", "em", "f1", "recall_at_k", "recall_all_at_k",
              "latency_ms_p50", "latency_ms_p95", "peak_mem_mb", "peak_mem_growth_mb", "state_bytes_read", "bandwidth_bound_ms",
              "load_soup_ms_p50")


def write_results(result: BenchResult, out: str | Path) -> list[Path]:
    """Write results.json, results.csv, em_vs_k.png and latency_vs_k.png into ``out``; returns the paths."""
    from ragsoup.checkpoint import atomic_write_bytes, atomic_write_json

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagsoupError(f"cannot create --out directory {out}: {exc}") from exc
    data = result.to_json()
    atomic_write_json(out / "results.json", data)
    stage_names = sorted({s for r in data["rows"] for s in r["stages_ms_p50"]} - {"load_soup"})  # already a column
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_FIELDS, *(f"{s}_ms_p50" for s in stage_names)])
    for r in data["rows"]:
        w.writerow([r[f] if r[f] is not None else "" for f in CSV_FIELDS]
                   + [r["stages_ms_p50"].get(s, "") for s in stage_names])
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode())
    return [out / "results.json", out / "results.csv", *plot_results(result, out)]


def plot_results(result: BenchResult, out: Path) -> list[Path]:
    """EM vs k and latency vs k (log-log), soup and concat on the same axes, as PNGs in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    by_mode: dict[str, list[BenchRow]] = {}
    for r in result.rows:
        by_mode.setdefault(r.mode if r.mode != "soup" else f"soup ({r.pool}, {r.weights} weights)", []).append(r)
    style = {"concat": dict(color="tab:red", marker="s"), "uniform": dict(color="tab:green", marker="o"),
             "retrieval": dict(color="tab:blue", marker="^")}
    paths = []
    for name, ylabel, get, logy in (
        ("em_vs_k.png", "exact match (%)", lambda r: r.em, False),
        ("latency_vs_k.png", "latency per query, p50 (band to p95), ms", lambda r: r.latency_ms_p50, True),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for mode, rows in by_mode.items():
            rows = sorted(rows, key=lambda r: r.k)
            look = style.get(rows[0].weights or rows[0].mode, {})
            ax.plot([r.k for r in rows], [get(r) for r in rows], label=mode, **look)
            if logy:  # shade p50..p95
                ax.fill_between([r.k for r in rows], [get(r) for r in rows], [r.latency_ms_p95 for r in rows],
                                alpha=0.15, color=look.get("color"))
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        if logy:
            ax.set_yscale("log")
        else:
            ax.set_ylim(-2, 102)
        ax.set_xlabel("k (passages retrieved)")
        ax.set_ylabel(ylabel)
        hops = ", 2 hops" if result.hops == 2 else ""
        ax.set_title(f"{result.task}, {result.n_passages} passages{hops}, {result.device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp)
        plt.close(fig)
        tmp.replace(out / name)
        paths.append(out / name)
    return paths
