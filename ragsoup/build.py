"""Building an index: one passage stream feeds the FAISS embedder and the state encoder concurrently."""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ragsoup.background import save_background
from ragsoup.checkpoint import load_model
from ragsoup.corpus import load_corpus
from ragsoup.device import pick_device
from ragsoup.encode import encode_passages
from ragsoup.errors import RagsoupError
from ragsoup.indexdir import Manifest, clean_stale, read_manifest, read_passages, write_manifest, write_passages
from ragsoup.retrieve import build_index as build_faiss, get_embedder, save_index
from ragsoup.store import StateStore, StoreWriter

Progress = Callable[[str, int, int], None]  # (stage, done, total)

DEFAULT_CHUNK_CHARS = 600  # `ragsoup index`'s passage length: sentence-aware chunks of at most this many characters


@dataclass
class BuildReport:
    out: str
    n_passages: int
    added: int
    kept: int
    removed: int
    n_files: int
    skipped_binary: int
    skipped_empty: int
    n_duplicates: int
    rebuilt: str = ""  # why everything was re-encoded, if it was
    seconds: dict = field(default_factory=dict)  # embed, encode, total


def _model_ref(model: str | Path | None, loaded_path: Path) -> str:
    """How the manifest names a model: a shipped name as is, a directory as its absolute path."""
    name = str(model or "default")
    return str(Path(loaded_path).resolve()) if Path(name).is_dir() else name


def build_index(
    corpus: str | Path,
    out: str | Path,
    model: str | Path | None = None,
    embedder: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    factory: str = "Flat",
    chunk_chars: int = DEFAULT_CHUNK_CHARS,
    max_tokens: int = 1024,
    state_dtype: str = "float16",
    progress: Progress | None = None,
) -> BuildReport:
    """Index a corpus into ``out``: FAISS over embeddings + the state store; unchanged passages are reused."""
    t0 = time.perf_counter()
    dev = pick_device(device)
    load = load_corpus(corpus, max_chars=chunk_chars)
    passages = load.passages
    loaded = load_model(model, device=dev)
    emb = get_embedder(embedder, dev)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagsoupError(f"cannot create index directory '{out}' ({exc.strerror or exc}): pass --out a writable directory") from exc
    cfg = loaded.model.cfg
    D = cfg.state_numel()

    # what can be reused from the index already there
    old_rows: dict[str, int] = {}
    old_store, old_emb, rebuilt = None, None, ""
    if (out / "manifest.json").exists():
        try:
            old = read_manifest(out)
            same = (old.model_fingerprint, old.embedder, old.state_dtype, old.chunk_chars, old.max_tokens) == (
                loaded.fingerprint, emb.name, state_dtype, chunk_chars, max_tokens)
            if same:
                old_dir = out / old.data_dir
                old_passages = read_passages(old_dir / "passages.jsonl")
                old_store = StateStore(old_dir / "states.npy", D, state_dtype)
                try:
                    old_emb = np.load(old_dir / "embeddings.npy", mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise RagsoupError(f"{old_dir / 'embeddings.npy'} is missing or corrupt ({exc})") from exc
                if not (len(old_passages) == len(old_store) == len(old_emb) == old.n_passages) or old_emb.shape[1:] != (emb.dim,):
                    raise RagsoupError(f"{old_dir} is inconsistent (row counts or shapes differ)")
                old_rows = {p.id: i for i, p in enumerate(old_passages)}
            else:
                rebuilt = "model, embedder or settings changed"
        except RagsoupError as exc:
            old_rows, old_store, old_emb = {}, None, None
            rebuilt = f"previous index unreadable ({exc})"
    new_ids = {p.id for p in passages}
    kept_idx = [i for i, p in enumerate(passages) if p.id in old_rows]
    todo_idx = [i for i, p in enumerate(passages) if p.id not in old_rows]
    removed = sum(1 for pid in old_rows if pid not in new_ids)

    data_name = f"data-{uuid.uuid4().hex[:12]}"
    data = out / data_name
    data.mkdir()
    N = len(passages)
    try:
        embeddings = np.zeros((N, emb.dim), dtype=np.float32)
        writer = StoreWriter(data / "states.npy", N, D, state_dtype)
        if kept_idx:  # copy reused rows
            src = [old_rows[passages[i].id] for i in kept_idx]
            embeddings[kept_idx] = old_emb[src]
            for j in range(0, len(kept_idx), 4096):
                dst, s = kept_idx[j : j + 4096], src[j : j + 4096]
                writer.write(dst, old_store.read(s))
        texts = [passages[i].text for i in todo_idx]
        seconds = _run_concurrently(loaded, emb, texts, todo_idx, embeddings, writer, batch_size, max_tokens, state_dtype, progress)
        write_passages(data / "passages.jsonl", passages)
        np.save(data / "embeddings.npy", embeddings)
        if N:
            save_index(build_faiss(embeddings, factory), data / "faiss.index")
        writer.commit()
        if N:  # the corpus background, for --pool centered (ragsoup.background): the writer summed the rows
            tb = time.perf_counter()
            save_background(data, writer.mean(), {"text": "corpus", "passages": N, "corpus": str(corpus)})
            seconds["background"] = time.perf_counter() - tb
    except BaseException:
        # everything written so far (the store's temp file included) lives in the uncommitted folder
        shutil.rmtree(data, ignore_errors=True)
        raise
    manifest = Manifest(
        data_dir=data_name, n_passages=N, model=_model_ref(model, loaded.path), model_fingerprint=loaded.fingerprint,
        model_config=cfg.to_dict(), embedder=emb.name, embed_dim=emb.dim, state_dtype=state_dtype,
        state_numel=D, state_bytes_per_passage=D * np.dtype(state_dtype).itemsize, faiss_factory=factory,
        chunk_chars=chunk_chars, max_tokens=max_tokens, corpus=str(Path(corpus)),
        stats={"n_files": load.n_files, "skipped_binary": load.skipped_binary, "skipped_empty": load.skipped_empty,
               "n_duplicates": load.n_duplicates},
    )
    write_manifest(out, manifest)  # the commit point
    clean_stale(out, keep=data_name)
    seconds["total"] = time.perf_counter() - t0
    return BuildReport(
        out=str(out), n_passages=N, added=len(todo_idx), kept=len(kept_idx), removed=removed, n_files=load.n_files,
        skipped_binary=load.skipped_binary, skipped_empty=load.skipped_empty, n_duplicates=load.n_duplicates,
        rebuilt=rebuilt, seconds=seconds,
    )


def _run_concurrently(loaded, emb, texts, todo_idx, embeddings, writer, batch_size, max_tokens, state_dtype, progress):
    """Embed and encode ``texts`` in two threads; returns each stage's seconds. Re-raises a thread's error."""
    n = len(texts)
    errors: list[BaseException] = []
    seconds: dict[str, float] = {}
    idx = np.asarray(todo_idx, dtype=np.int64)

    def embed_job() -> None:
        t = time.perf_counter()
        step = 256
        for s in range(0, n, step):
            embeddings[idx[s : s + step]] = emb.encode(texts[s : s + step])
            if progress:
                progress("embed", min(s + step, n), n)
        seconds["embed"] = time.perf_counter() - t

    def encode_job() -> None:
        t = time.perf_counter()
        done = 0
        dtype = torch.float16 if state_dtype == "float16" else torch.float32
        for positions, rows in encode_passages(loaded.model, loaded.tokenizer, texts, batch_size, max_tokens, dtype):
            writer.write(idx[positions], rows)
            done += len(rows)
            if progress:
                progress("encode", done, n)
        seconds["encode"] = time.perf_counter() - t

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - surfaced in the main thread
                errors.append(exc)
        return run

    if progress:
        progress("embed", 0, n)
        progress("encode", 0, n)
    threads = [threading.Thread(target=guard(f), daemon=True) for f in (embed_job, encode_job)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return seconds
