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
    bridge_first,
    bridge_names,
    bridge_queries,
    build_index,
    get_embedder,
    hop_weight_scores,
    load_index,
    merge_hops,
    names_any,
    novel_words,
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


# ---------------------------------------------------------------------------------------------------------------
# two hops
# ---------------------------------------------------------------------------------------------------------------

TWO_HOP = [
    "The harvest fair drew crowds every autumn. Orla Venn was born in Tessary. The bakers sold apple pies.",
    "Tessary is the capital of Moldavia Nova. Its river freezes in winter.",
    "People from many countries were born in the valley towns, said the old census.",
    "Which country a person is born in decides their first passport, the clerk explained.",
    "Kelby is the capital of Rostania. Its harbour is deep.",
    "The museum holds maps of every country in the region.",
    "Brenna Holt was born in Kelby and later moved away.",
]


def test_merge_hops_keeps_the_first_half_then_the_second_hop_then_the_rest() -> None:
    first = (np.array([[0.9, 0.8, 0.7, 0.6]], np.float32), np.array([[10, 11, 12, 13]]))
    second = (np.array([[0.95, 0.5, 0.4, 0.3]], np.float32), np.array([[10, 20, 11, 21]]))
    scores, rows, hop = merge_hops(first, second, 4)
    assert rows.tolist() == [[10, 11, 20, 21]]  # the first hop's top 2, then the second's new ones
    assert hop.tolist() == [[1, 1, 2, 2]]
    np.testing.assert_allclose(scores, [[0.9, 0.8, 0.5, 0.3]])  # each keeps the score of the query that found it
    # a second hop with nothing new: the first hop's rest fills the slots
    _, rows, hop = merge_hops(first, (first[0], np.array([[13, 12, 11, 10]])), 4)
    assert rows.tolist() == [[10, 11, 13, 12]] and hop.tolist() == [[1, 1, 2, 2]]
    _, rows, _ = merge_hops(first, (first[0][:, :1], np.array([[10]])), 3)
    assert rows.tolist() == [[10, 11, 12]]


def test_bridge_query_is_what_the_closest_sentence_adds_to_the_question(embedder: Embedder) -> None:
    qs = ["In which country was Orla Venn born?", "Which harbour is deep?"]
    got = bridge_queries(embedder, qs, embedder.encode(qs), [TWO_HOP[0], TWO_HOP[4]])
    assert got == ["Tessary", "Its"]  # from "Orla Venn was born in Tessary." and "Its harbour is deep."
    assert bridge_queries(embedder, qs[:1], embedder.encode(qs[:1]), ["Orla Venn was born"]) == ["Orla Venn was born"]
    assert novel_words("Ada met Bo in Rome.", "Where did ada meet bo?") == "met in Rome"


def test_the_second_hop_finds_the_fact_the_question_does_not_name(embedder: Embedder) -> None:
    index = build_index(embedder.encode(TWO_HOP))
    q = embedder.encode(["In which country was Orla Venn born?"])
    first = search(index, q, 3)
    assert first[1][0, 0] == 0 and 1 not in first[1][0]  # one hop: the person, not the capital
    bridges = bridge_queries(embedder, ["In which country was Orla Venn born?"], q, [TWO_HOP[first[1][0, 0]]])
    second = search(index, embedder.encode(bridges), 3)
    _, rows, hop = merge_hops(first, second, 3)
    assert rows[0, 0] == 0 and 1 in rows[0] and hop[0, list(rows[0]).index(1)] == 2


def test_bridge_names_are_its_capitalised_or_numeric_words_and_match_whole_words() -> None:
    assert bridge_names("Tessary") == {"tessary"}
    assert bridge_names("works Kelby 1887 The") == {"kelby", "1887"}  # "works": not a name; "The": a function word
    assert bridge_names("Its") == frozenset()
    assert names_any("Kelby is the capital of Rostania.", frozenset({"kelby"}))
    assert names_any("KELBY is the capital.", frozenset({"kelby"}))
    assert not names_any("Kelbyton is the capital.", frozenset({"kelby"}))  # whole words only
    assert not names_any("Kelby is the capital.", frozenset())


def test_bridge_first_moves_the_passages_naming_the_bridge_ahead_in_order() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2]], np.float32)
    rows = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    named = np.array([[False, True, False, True], [False, False, False, False]])
    s, r = bridge_first((scores, rows), named)
    assert r.tolist() == [[2, 4, 1, 3], [5, 6, 7, 8]]
    np.testing.assert_allclose(s, [[0.8, 0.6, 0.9, 0.7], [0.5, 0.4, 0.3, 0.2]])  # scores travel with their rows


def test_a_second_hop_passage_naming_its_bridge_weighs_as_the_first_hops_best() -> None:
    from ragsoup.soup import relevance_weights

    scores = np.array([[0.70, 0.28, 0.49, 0.44], [0.70, 0.28, 0.49, 0.44]], np.float32)
    hop = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    named = np.array([[False, True, False, True], [False, False, False, False]])
    got = hop_weight_scores(scores, hop, named)
    np.testing.assert_allclose(got, [[0.70, 0.28, 0.49, 0.70], [0.70, 0.28, 0.49, 0.44]])  # hop 1 never lifted
    w_raw, w = relevance_weights(scores[:1]), relevance_weights(got[:1])
    assert float(w_raw[0, 3]) < 0.02  # as scored against the bridge, the second fact all but drops out of the soup
    assert abs(float(w[0, 3]) - float(w[0, 0])) < 1e-6 and float(w[0, 0] + w[0, 3]) > 0.95  # now the two share it


def test_the_second_hop_lifts_the_fact_that_names_the_bridge(embedder: Embedder) -> None:
    index = build_index(embedder.encode(TWO_HOP))
    q_text = ["In which country was Orla Venn born?"]
    q = embedder.encode(q_text)
    first = search(index, q, 3)
    bridges = bridge_queries(embedder, q_text, q, [TWO_HOP[first[1][0, 0]]])
    names = bridge_names(bridges[0])
    second = search(index, embedder.encode(bridges), len(TWO_HOP))
    named = np.array([[names_any(TWO_HOP[r], names) for r in second[1][0]]])
    s2, r2 = bridge_first(second, named)
    assert r2[0, 0] in (0, 1) and r2[0, 1] in (0, 1)  # the two passages naming Tessary lead the second hop
    scores, rows, hop = merge_hops(first, (s2, r2), 3)
    named_rows = np.array([[names_any(TWO_HOP[r], names) for r in rows[0]]])
    w = hop_weight_scores(scores, hop, named_rows)
    at = list(rows[0]).index(1)  # "Tessary is the capital of Moldavia Nova."
    assert hop[0, at] == 2 and w[0, at] == pytest.approx(scores[0, 0]) and scores[0, at] < scores[0, 0]


def test_packed_embedder_unpacks_to_the_same_bytes(tmp_path: Path) -> None:
    """benchmarks/pack_embedder.py (how a GPU run carries the embedder under 64 MiB) is lossless."""
    import importlib.util
    import json

    from safetensors.numpy import save_file

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pack_embedder.py"
    spec = importlib.util.spec_from_file_location("pack_embedder", path)
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)
    src = tmp_path / "emb"
    (src / "1_Pooling").mkdir(parents=True)
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (src / "tokenizer.json").write_text("{}")
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float16)
    save_file({"w": w, "b": w[:3, :5].copy()}, str(src / "model.safetensors"))
    pack.pack(src, tmp_path / "emb.pack")
    pack.unpack(tmp_path / "emb.pack", tmp_path / "out")
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "out" / f).read_bytes() == (src / f).read_bytes(), f
