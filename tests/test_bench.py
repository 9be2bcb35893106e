"""`ragsoup bench`: the retrieval sweep end to end on a tiny random model and a tiny generated corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragsoup.bench import BenchConfig, PeakMemory, measure_bandwidth, percentile, sweep_ks, trained_passage_chars
from ragsoup.cli import app

ROW_KEYS = {"mode", "k", "pool", "n_queries", "em", "f1", "recall_at_k", "latency_ms_p50", "latency_ms_p95",
            "stages_ms_p50", "peak_mem_mb", "state_bytes_read"}


def _bench(model: Path, cache: Path, *extra: str):
    args = ["bench", "--quick", "--json", "--passages", "64", "--queries", "4", "--k", "4", "--model", str(model),
            "--cache-dir", str(cache), "--device", "cpu", "--max-new-tokens", "4", *extra]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def quick_run(tiny_model, tmp_path_factory) -> tuple[dict, Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    out = root / "out"
    return _bench(tiny_model, root / "cache", "--out", str(out)), out, root / "cache"


def test_bench_quick_json_has_one_row_per_mode_and_k(quick_run):
    obj, _, _ = quick_run
    assert {"task", "model", "device", "bandwidth_gbps", "rows"} <= set(obj)
    assert obj["task"] == "needle" and obj["device"] == "cpu" and obj["bandwidth_gbps"] > 0
    # the default: the plain soup and the retrieval-weighted one, then concat
    assert [(r["mode"], r["weights"], r["k"]) for r in obj["rows"]] == [
        (m, w, k) for m, w in (("soup", "uniform"), ("soup", "retrieval"), ("concat", None)) for k in (1, 2, 4)]
    for r in obj["rows"]:
        assert ROW_KEYS <= set(r)
        assert r["n_queries"] == 4
        for key in ("em", "f1", "recall_at_k"):
            assert 0.0 <= r[key] <= 100.0
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]
        assert r["stages_ms_p50"]["total"] > 0 and r["stages_ms_p50"]["decode"] > 0
        assert r["peak_mem_mb"] is None or r["peak_mem_mb"] > 0
        if r["mode"] == "soup":
            assert r["pool"] == "mean" and r["state_bytes_read"] > 0
            assert {"retrieve", "load_soup", "decode"} <= set(r["stages_ms_p50"])
            assert r["bandwidth_bound_ms"] > 0
        else:
            assert r["state_bytes_read"] == 0 and "encode" in r["stages_ms_p50"]
    soup = {r["k"]: r for r in obj["rows"] if r["mode"] == "soup" and r["weights"] == "uniform"}
    assert soup[4]["state_bytes_read"] == 4 * soup[1]["state_bytes_read"]
    recall = [soup[k]["recall_at_k"] for k in (1, 2, 4)]
    assert recall == sorted(recall)  # top-k sets are nested
    concat = {r["k"]: r for r in obj["rows"] if r["mode"] == "concat"}
    assert [concat[k]["recall_at_k"] for k in (1, 2, 4)] == recall  # same retrieval


def test_bench_out_writes_json_csv_and_plots(quick_run):
    obj, out, _ = quick_run
    assert json.loads((out / "results.json").read_text())["rows"] == obj["rows"]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(obj["rows"]) and {"mode", "k", "em", "latency_ms_p50"} <= set(rows[0])
    for name in ("em_vs_k.png", "latency_vs_k.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reuses_its_cached_index(quick_run, tiny_model):
    first, _, cache = quick_run
    assert first["index_seconds"] > 0
    again = _bench(tiny_model, cache, "--modes", "soup", "--k", "2")
    assert again["index_seconds"] == 0
    assert [(r["mode"], r["k"]) for r in again["rows"]] == [("soup", 1), ("soup", 2)] * 2
    # same corpus, questions and retrieval: deterministic quality numbers
    before = {(r["mode"], r["weights"], r["k"]): r for r in first["rows"]}
    for r in again["rows"]:
        b = before[(r["mode"], r["weights"], r["k"])]
        assert (r["em"], r["f1"], r["recall_at_k"]) == (b["em"], b["f1"], b["recall_at_k"])


def test_bench_batched_soup_queries_answer_the_same(quick_run, tiny_model):
    first, _, cache = quick_run
    batched = _bench(tiny_model, cache, "--modes", "soup", "--query-batch", "3")
    before = {(r["mode"], r["weights"], r["k"]): r for r in first["rows"]}
    for r in batched["rows"]:
        b = before[(r["mode"], r["weights"], r["k"])]
        assert r["query_batch"] == 3 and b["query_batch"] == 1
        assert (r["em"], r["f1"], r["recall_at_k"], r["n_queries"]) == (b["em"], b["f1"], b["recall_at_k"], 4)


def test_bench_runs_each_soup_weighting_given(quick_run, tiny_model):
    first, _, cache = quick_run
    both = _bench(tiny_model, cache, "--modes", "soup,concat", "--weights", "uniform,retrieval", "--k", "2",
                  "--concat-queries", "1", "--concat-max-k", "1")
    assert [(r["mode"], r["weights"], r["k"]) for r in both["rows"]] == [
        ("soup", "uniform", 1), ("soup", "uniform", 2), ("soup", "retrieval", 1), ("soup", "retrieval", 2),
        ("concat", None, 1)]
    assert both["temperature"] == 0.05
    rows = {(r["weights"], r["k"]): r for r in both["rows"] if r["mode"] == "soup"}
    assert rows[("uniform", 1)]["em"] == rows[("retrieval", 1)]["em"]  # one passage: weights change nothing
    assert rows[("uniform", 2)]["recall_at_k"] == rows[("retrieval", 2)]["recall_at_k"]  # same retrieval


def test_bench_concat_caps(tiny_model, quick_run):
    _, _, cache = quick_run
    obj = _bench(tiny_model, cache, "--concat-max-k", "2", "--concat-queries", "2")
    concat = [r for r in obj["rows"] if r["mode"] == "concat"]
    assert [r["k"] for r in concat] == [1, 2] and all(r["n_queries"] == 2 for r in concat)


def test_bench_in_two_hops_gives_soup_and_concat_the_same_passages(tiny_model, tmp_path):
    from ragsoup.tasks.files import read_questions

    obj = _bench(tiny_model, tmp_path / "th", "--task", "two-hop", "--hops", "2", "--weights", "uniform")
    assert obj["hops"] == 2 and obj["task"] == "two-hop"
    assert [(r["mode"], r["k"]) for r in obj["rows"]] == [("soup", 2), ("soup", 4), ("concat", 2), ("concat", 4)]
    one = _bench(tiny_model, tmp_path / "th", "--task", "two-hop", "--weights", "uniform")
    assert one["hops"] == 1 and [r["k"] for r in one["rows"] if r["mode"] == "soup"] == [1, 2, 4]
    for hops in (one, obj):
        soup = {r["k"]: r for r in hops["rows"] if r["mode"] == "soup"}
        concat = {r["k"]: r for r in hops["rows"] if r["mode"] == "concat"}
        assert all(concat[k]["recall_all_at_k"] == soup[k]["recall_all_at_k"] for k in concat)  # same retrieval
    # a second search finds second facts that one search misses (both gold passages of a two-hop question)
    assert all(len(q["gold_ids"]) == 2 for q in read_questions(tmp_path / "th" / "corpus" / "questions.jsonl"))
    two_hop = {r["k"]: r["recall_all_at_k"] for r in obj["rows"] if r["mode"] == "soup"}
    one_hop = {r["k"]: r["recall_all_at_k"] for r in one["rows"] if r["mode"] == "soup"}
    assert two_hop[4] > one_hop[4]


def test_bench_concat_reads_the_best_passage_last_unless_told(tiny_model, quick_run, monkeypatch):
    import ragsoup.generate
    from ragsoup.ask import Engine
    from ragsoup.bench import _ask_concat

    _, _, cache = quick_run
    engine = Engine(cache / "index", model=str(tiny_model), device="cpu")
    read: list[list[str]] = []
    real = ragsoup.generate.concat_states
    monkeypatch.setattr(ragsoup.generate, "concat_states", lambda m, t, texts, *a, **kw: (read.append(list(texts)),
                                                                                          real(m, t, texts, *a, **kw))[1])
    q = "What is the special magic number for the harbour?"
    _, ids, _ = _ask_concat(engine, q, 3, 2)
    _, ids_first, _ = _ask_concat(engine, q, 3, 2, order="best-first")
    _, rows, _, _ = engine.retrieve([q], 3)
    ranked = [engine.passages[r].text for r in rows[0]]
    assert read == [ranked[::-1], ranked] and ids == ids_first[::-1]
    assert _bench(tiny_model, cache, "--modes", "concat", "--k", "1")["concat_order"] == "best-last"


def test_bench_extractive_decodes_spans_of_the_retrieved_passages_in_both_modes(tiny_model, quick_run, monkeypatch):
    import ragsoup.ask
    import ragsoup.generate

    _, _, cache = quick_run
    calls: list[list[str] | None] = []
    for mod in (ragsoup.ask, ragsoup.generate):  # soup decodes through ask's import, concat through generate's
        real = mod.generate
        monkeypatch.setattr(mod, "generate", lambda *a, spans_of=None, _real=real, **kw: (
            calls.append(spans_of), _real(*a, spans_of=spans_of, **kw))[1])
    obj = _bench(tiny_model, cache, "--k", "2", "--extractive", "--concat-queries", "1")
    assert obj["extractive"] is True and {r["mode"] for r in obj["rows"]} == {"soup", "concat"}
    assert calls and all(c and all(c) for c in calls)  # every decode, soup and concat, got its passages' text
    calls.clear()
    assert _bench(tiny_model, cache, "--k", "1")["extractive"] is False and calls and not any(calls)


def test_bench_passage_chars_builds_its_own_corpus(tiny_model, tmp_path):
    from ragsoup.tasks.files import read_corpus

    obj = _bench(tiny_model, tmp_path / "long", "--modes", "soup", "--k", "1", "--passage-chars", "240")
    assert obj["passage_chars"] == 240 and obj["index_seconds"] > 0
    lengths = [len(r["text"]) for r in read_corpus(tmp_path / "long" / "corpus")]
    assert 200 <= sum(lengths) / len(lengths) <= 280  # the tiny model was trained on 60


@pytest.mark.parametrize("args, message", [
    (["--passage-chars", "0"], "--passage-chars must be at least 1"),
    (["--task", "trivia"], "unknown bench task"),
    (["--task", "squad"], "pass --data FILE"),
    (["--task", "needle", "--data", "x.json"], "--data is for the squad and hotpotqa tasks"),
    (["--task", "hotpotqa", "--data", "no/such.json"], "not found"),
    (["--modes", "soup,stack"], "unknown mode"),
    (["--pool", "median"], "unknown pooling"),
    (["--pool", "max", "--weights", "retrieval"], "--weights uniform"),
    (["--k", "0"], "--k must be at least 1"),
    (["--hops", "3"], "--hops must be 1 or 2"),
    (["--concat-order", "random"], "unknown concat order"),
    (["--hops", "2", "--k", "1"], "--k 2 or more"),
    (["--queries", "40", "--passages", "30"], "raise --passages"),
])
def test_bench_errors_are_one_line_and_exit_1(tiny_model, tmp_path, args, message):
    r = CliRunner().invoke(app, ["bench", "--quick", "--json", "--model", str(tiny_model), "--cache-dir",
                                 str(tmp_path / "c"), "--device", "cpu", *args])
    assert r.exit_code == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.output and r.stdout.strip() == ""


def test_sweep_ks():
    assert sweep_ks(1) == [1]
    assert sweep_ks(16) == [1, 2, 4, 8, 16]
    assert sweep_ks(10) == [1, 2, 4, 8, 10]
    assert sweep_ks(256, n_passages=100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_quick_preset_and_overrides():
    q = BenchConfig.quick()
    assert (q.passages, q.queries, q.k_max) == (256, 16, 16)
    assert BenchConfig.quick(k_max=4, passages=None).k_max == 4
    d = BenchConfig()
    assert d.passages >= 4096 and d.k_max == 256


def test_helpers():
    assert measure_bandwidth(8 << 20, repeats=2) > 0
    with PeakMemory() as mem:
        x = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        del x
    assert mem.peak_mb is not None and mem.growth_mb is not None and mem.growth_mb >= 32
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert trained_passage_chars({"train": {"passage_chars": 80}}) == 80
    assert trained_passage_chars({}) == 200


def _squad(path: Path) -> Path:
    """Two tiny SQuAD articles, one question per paragraph."""
    def article(title: str, n: int) -> dict:
        paras = []
        for i in range(n):
            ctx = f"In {title} town {i} the baker is called Bram{title}{i} and sells rye bread."
            paras.append({"context": ctx, "qas": [{"id": f"{title}{i}", "question": f"Who bakes in {title} town {i}?",
                                                   "answers": [{"text": f"Bram{title}{i}", "answer_start": ctx.index("Bram")}]}]})
        return {"title": title, "paragraphs": paras}

    path.write_text(json.dumps({"version": "1.1", "data": [article("Alpha", 4), article("Beta", 4)]}))
    return path


def _hotpot(path: Path) -> Path:
    """Three tiny HotpotQA questions over shared paragraphs (two supporting paragraphs each)."""
    def rec(i: int, a: str, b: str, answer: str) -> dict:
        return {"_id": f"q{i}", "question": f"Where was the founder of {a} born?", "answer": answer,
                "supporting_facts": [[a, 0], [b, 0]],
                "context": [[a, [f"{a} was founded by {b}."]], [b, [f"{b} was born in {answer}."]],
                            ["Filler", ["Nothing happens here."]]]}

    path.write_text(json.dumps([rec(0, "Acme", "Ann Lee", "Oslo"), rec(1, "Bolt", "Bo Kim", "Lima"),
                                rec(2, "Cask", "Cy Ray", "Kyiv")]))
    return path


@pytest.mark.parametrize("task, make, n_passages", [("squad", _squad, 8), ("hotpotqa", _hotpot, 7)])
def test_bench_reads_a_dataset_file(tiny_model, tmp_path, task, make, n_passages):
    from ragsoup.tasks.files import read_corpus, read_questions

    data = make(tmp_path / f"{task}.json")
    obj = _bench(tiny_model, tmp_path / "c", "--task", task, "--data", str(data), "--split", "all", "--queries", "3",
                 "--passages", "100", "--k", "2", "--concat-max-k", "1")
    assert obj["task"] == task and obj["n_passages"] == n_passages and obj["passage_chars"] == 600
    assert [(r["mode"], r["weights"], r["k"]) for r in obj["rows"]] == [
        ("soup", "uniform", 1), ("soup", "uniform", 2), ("soup", "retrieval", 1), ("soup", "retrieval", 2),
        ("concat", None, 1)]
    assert all(r["n_queries"] == 3 for r in obj["rows"] if r["mode"] == "soup")
    corpus, questions = read_corpus(tmp_path / "c" / "corpus"), read_questions(tmp_path / "c" / "corpus")
    by_id = {r["id"]: r["text"] for r in corpus}
    for q in questions:  # each question's gold paragraphs are in the corpus and hold the answer
        assert q["answer"] in " ".join(by_id[g] for g in q["gold_ids"])
    if task == "hotpotqa":
        assert len(corpus) == len({r["title"] for r in corpus})  # one passage per paragraph title
        assert all(len(q["gold_ids"]) == 2 for q in questions)
    soup = {(r["weights"], r["k"]): r for r in obj["rows"] if r["mode"] == "soup"}
    assert soup[("uniform", 1)]["recall_at_k"] <= soup[("uniform", 2)]["recall_at_k"]
    assert soup[("uniform", 2)]["recall_at_k"] > 0  # the embedder finds named towns / companies
    again = _bench(tiny_model, tmp_path / "c", "--task", task, "--data", str(data), "--split", "all", "--queries",
                   "3", "--passages", "100", "--k", "2", "--modes", "soup")
    assert again["index_seconds"] == 0  # the dataset corpus is cached like a generated one


def test_make_corpus_hotpotqa_keeps_whole_questions_within_the_passage_budget(tmp_path):
    from ragsoup.tasks.files import read_corpus, read_questions

    data = _hotpot(tmp_path / "h.json")
    r = CliRunner().invoke(app, ["make-corpus", "hotpotqa", "--data", str(data), "--passages", "5", "--queries", "9",
                                 "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    # question 0 brings Acme, Ann Lee, Filler; question 1 would add 2 more (Bolt, Bo Kim) = 5; question 2 does not fit
    assert [c["title"] for c in read_corpus(tmp_path / "h")] == ["Acme", "Ann Lee", "Filler", "Bolt", "Bo Kim"]
    assert sorted(q["answer"] for q in read_questions(tmp_path / "h")) == ["Lima", "Oslo"]
