"""Retrieval: the bundled embedder offline, FAISS build/search, atomic save and careful load."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from ragsoup.errors import RagsoupError
from ragsoup.retrieve import (
    DEFAULT_EMBEDDER,
    Embedder,
    RetrieveError,
    build_index,
    get_embedder,
    load_index,
    save_index,
    search,
)

PASSAGES = [
    "Paris is the capital and largest city of France.",
    "Bananas are a yellow fruit rich in potassium.",
    "The Pacific Ocean is the largest ocean on Earth.",
    "Photosynthesis lets plants turn sunlight into chemical energy.",
    "The violin is a string instrument played with a bow.",
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder(None, "cpu")


@pytest.fixture(scope="module")
def passage_emb(embedder: Embedder) -> np.ndarray:
    return embedder.encode(PASSAGES)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------------------
# embedder
# ---------------------------------------------------------------------------------------------------------------


def test_default_embedder_loads_offline(embedder: Embedder) -> None:
    assert embedder.name == DEFAULT_EMBEDDER and embedder.dim == 384
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_get_embedder_is_cached(embedder: Embedder) -> None:
    assert get_embedder() is embedder
    assert get_embedder(DEFAULT_EMBEDDER, "cpu") is embedder


def test_encode_shape_dtype_and_norm(embedder: Embedder, passage_emb: np.ndarray) -> None:
    assert passage_emb.shape == (len(PASSAGES), 384) and passage_emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(passage_emb, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_relevant_passage_ranks_first(embedder: Embedder, passage_emb: np.ndarray) -> None:
    index = build_index(passage_emb)
    queries = ["What is the capital of France?", "Which fruit contains potassium?", "How do plants use sunlight?"]
    scores, rows = search(index, embedder.encode(queries), k=3)
    assert rows[:, 0].tolist() == [0, 1, 3]
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_encode_is_thread_safe(embedder: Embedder, passage_emb: np.ndarray) -> None:
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def job() -> None:
        try:
            for _ in range(3):
                results.append(embedder.encode(PASSAGES, batch_size=2))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_allclose(r, passage_emb, atol=1e-5)


def test_unknown_embedder_dir(tmp_path: Path) -> None:
    with pytest.raises(RetrieveError, match="not a local directory") as exc:
        Embedder(str(tmp_path / "no-such-model"))
    assert isinstance(exc.value, RagsoupError)


def test_bad_embedder_dir(tmp_path: Path) -> None:
    with pytest.raises(RetrieveError, match="cannot load the embedder"):
        Embedder(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------------------------------------------


def test_flat_is_exact_inner_product() -> None:
    x = _unit(200, 16)
    q = _unit(5, 16, seed=1)
    scores, rows = search(build_index(x), q, 10)
    brute = q @ x.T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(brute, rows, axis=1), atol=1e-5)


def test_search_clamps_k_and_accepts_one_vector() -> None:
    index = build_index(_unit(3, 8))
    scores, rows = search(index, _unit(1, 8)[0], 10)
    assert scores.shape == rows.shape == (1, 3)
    assert sorted(rows[0].tolist()) == [0, 1, 2]
    assert search(index, _unit(2, 8), 0)[1].shape == (2, 0)


def test_search_dimension_mismatch() -> None:
    with pytest.raises(RetrieveError, match="ragsoup index"):
        search(build_index(_unit(4, 8)), _unit(1, 16), 2)


def test_ivf_factory_with_enough_vectors() -> None:
    x = _unit(2000, 32)
    index = build_index(x, "IVF16,Flat")
    assert index.ntotal == 2000 and index.is_trained
    _, rows = search(index, x[:50], 1)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.95


def test_ivf_with_too_few_vectors_suggests_flat() -> None:
    with pytest.raises(RetrieveError, match="Flat"):
        build_index(_unit(10, 32), "IVF64,Flat")


def test_unknown_factory() -> None:
    with pytest.raises(RetrieveError, match="'Flat'"):
        build_index(_unit(10, 8), "NotAnIndex")


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat"])
def test_save_load_round_trip(tmp_path: Path, factory: str) -> None:
    x, q = _unit(400, 32), _unit(7, 32, seed=2)
    index = build_index(x, factory)
    path = tmp_path / "sub" / "faiss.index"
    save_index(index, path)
    assert [p.name for p in path.parent.iterdir()] == ["faiss.index"]  # no temp file left behind
    loaded = load_index(path)
    for a, b in zip(search(index, q, 5), search(loaded, q, 5)):
        np.testing.assert_array_equal(a, b)


def test_save_overwrites_atomically(tmp_path: Path, passage_emb: np.ndarray) -> None:
    path = tmp_path / "faiss.index"
    save_index(build_index(_unit(3, 384)), path)
    save_index(build_index(passage_emb), path)
    assert load_index(path).ntotal == len(PASSAGES)


def test_load_missing_index(tmp_path: Path) -> None:
    with pytest.raises(RetrieveError, match=r"faiss\.index' does not exist.*ragsoup index"):
        load_index(tmp_path / "faiss.index")


def test_load_corrupt_index(tmp_path: Path) -> None:
    path = tmp_path / "faiss.index"
    path.write_bytes(b"definitely not a faiss index")
    with pytest.raises(RetrieveError, match=r"corrupt.*ragsoup index"):
        load_index(path)
    save_index(build_index(_unit(50, 16)), path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(RetrieveError, match="corrupt"):
        load_index(path)
