"""`ragsoup index` / `ragsoup ask` end to end through the CLI, on tiny random models and tiny corpora.

Covers the human and --json outputs, incremental re-indexing (only changed passages are encoded, kept
state rows are byte-identical), interrupted builds (the previous index stays loadable), and that every
bad input is one `error:` line with a non-zero exit code, no traceback and nothing half-written.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ragsoup.build as build_mod
from ragsoup.ask import Engine
from ragsoup.build import build_index
from ragsoup.checkpoint import fingerprint, save_checkpoint
from ragsoup.cli import app
from ragsoup.errors import RagsoupError
from ragsoup.indexdir import read_manifest, read_passages
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import ByteTokenizer

# one passage per file (each under the default 600-character chunk size), distinct topics
DOCS = {
    "glass.txt": "The island of Murano near Venice has made glass since 1291. Its furnaces were moved there "
                 "from the city to protect Venice from fires, and the glassmakers were forbidden to leave.",
    "tea.txt": "Darjeeling tea grows on the slopes of the Himalayas in West Bengal. The first flush is picked "
               "in spring and gives a light, floral cup that is often called the champagne of teas.",
    "bridge.txt": "The Akashi Kaikyo Bridge links Kobe to Awaji Island in Japan. Its central span of 1991 metres "
                  "was the longest of any suspension bridge in the world for a quarter of a century.",
    "notes/volcano.md": "# Volcanoes\n\nMauna Loa on the Big Island of Hawaii is the largest active volcano on "
                        "Earth by volume. It has erupted more than thirty times since 1843.",
    "chess.txt": "In chess the en passant rule lets a pawn capture an enemy pawn that has just moved two squares "
                 "forward, as if it had moved only one. The capture must be made at once or never.",
    "markup.txt": "Wiki dumps often keep footnote markers like [1], [bold]stray tags[/bold] and even a lone [/] "
                  "closing tag; the command line must print such passages literally, without crashing.",
}
N_DOCS = len(DOCS)
ASK = ("--device", "cpu", "--max-new-tokens", "4")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _make_model(path: Path, seed: int) -> Path:
    tok = ByteTokenizer()
    torch.manual_seed(seed)
    cfg = Mamba2Config.from_dict(dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8,
                                      vocab_size=-(-tok.vocab_size // 8) * 8))
    save_checkpoint(Mamba2LM(cfg), tok, path)
    return path


def _write_corpus(root: Path, docs: dict[str, str | bytes] = DOCS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in docs.items():
        f = root / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            f.write_bytes(text)
        else:
            f.write_text(text, encoding="utf-8")
    return root


def run(*args):
    """Invoke the CLI in-process; stdout and stderr are captured separately (click >= 8.2)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Whitespace-normalised text (rich wraps long lines at the console width)."""
    return " ".join(text.split())


def ok(r) -> None:
    assert r.exit_code == 0, f"exit {r.exit_code}\n{r.output}\n{r.exception!r}"
    assert r.exception is None


def one_json(r) -> dict:
    """The command succeeded and printed exactly one JSON object on stdout."""
    ok(r)
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, r.stdout
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def assert_error(r, *needles: str) -> str:
    """Non-zero exit, exactly one `error:` line (stderr), nothing on stdout, no traceback/uncaught exception."""
    assert r.exit_code != 0, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    errs = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errs) == 1 and errs[0].startswith("error:"), r.stderr
    assert r.stdout.strip() == ""
    for n in needles:
        assert n in errs[0], errs[0]
    return errs[0]


def data_dirs(out: Path) -> list[str]:
    return sorted(d.name for d in out.glob("data-*"))


def index_json(corpus: Path, out: Path, model: Path, *extra) -> dict:
    return one_json(run("index", corpus, "--out", out, "--model", model, "--device", "cpu", "--json", *extra))


def ask_json(index: Path, question: str, *extra) -> dict:
    return one_json(run("ask", question, "--index", index, *ASK, "--json", *extra))


def passages_by_source(out: Path) -> dict[str, dict]:
    m = read_manifest(out)
    return {p.source: {"id": p.id, "text": p.text} for p in read_passages(out / m.data_dir / "passages.jsonl")}


def rows_by_id(out: Path) -> dict[str, bytes]:
    """Each passage's state row (raw bytes), keyed by passage id."""
    m = read_manifest(out)
    ps = read_passages(out / m.data_dir / "passages.jsonl")
    states = np.load(out / m.data_dir / "states.npy")
    return {p.id: states[i].tobytes() for i, p in enumerate(ps)}


class EncodeSpy:
    """Stands in for ragsoup.build.encode_passages: records the texts encoded, optionally fails after some batches."""

    def __init__(self, fail_after: int | None = None, exc: BaseException | None = None) -> None:
        self.texts: list[str] = []
        self.fail_after, self.exc = fail_after, exc
        self.real = build_mod.encode_passages

    def __call__(self, model, tok, texts, *args, **kwargs):
        self.texts.extend(texts)
        for n, item in enumerate(self.real(model, tok, texts, *args, **kwargs)):
            if self.fail_after is not None and n >= self.fail_after:
                raise self.exc or RuntimeError("simulated crash while encoding")
            yield item


# ---------------------------------------------------------------------------------------------------------------
# fixtures: two tiny models and one index built through the CLI, once per module
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_a(tmp_path_factory) -> Path:
    return _make_model(tmp_path_factory.mktemp("models") / "a", seed=0)


@pytest.fixture(scope="module")
def model_b(tmp_path_factory) -> Path:
    return _make_model(tmp_path_factory.mktemp("models") / "b", seed=1)


@pytest.fixture(scope="module")
def built(model_a, tmp_path_factory) -> dict:
    """An index of DOCS built with `ragsoup index --json` (treat as read-only; copy it to change it)."""
    root = tmp_path_factory.mktemp("built")
    corpus = _write_corpus(root / "corpus")
    out = root / "index"
    report = index_json(corpus, out, model_a)
    return {"corpus": corpus, "out": out, "report": report, "model": model_a}


@pytest.fixture
def copy(built, tmp_path) -> dict:
    """A private copy of the built corpus and index (manifest paths are relative, so a copy is a valid index)."""
    corpus = shutil.copytree(built["corpus"], tmp_path / "corpus")
    out = shutil.copytree(built["out"], tmp_path / "index")
    return {"corpus": Path(corpus), "out": Path(out), "model": built["model"]}


# ---------------------------------------------------------------------------------------------------------------
# 1. index + ask end to end
# ---------------------------------------------------------------------------------------------------------------


def test_index_json_report(built):
    rep, out = built["report"], built["out"]
    assert set(rep) == {"out", "n_passages", "added", "kept", "removed", "n_files", "skipped_binary",
                        "skipped_empty", "n_duplicates", "rebuilt", "seconds"}
    assert rep["out"] == str(out)
    assert (rep["n_passages"], rep["added"], rep["kept"], rep["removed"]) == (N_DOCS, N_DOCS, 0, 0)
    assert (rep["n_files"], rep["skipped_binary"], rep["skipped_empty"], rep["n_duplicates"]) == (N_DOCS, 0, 0, 0)
    assert rep["rebuilt"] == ""
    assert {"embed", "encode", "total"} <= set(rep["seconds"]) and rep["seconds"]["total"] > 0
    m = read_manifest(out)
    assert m.n_passages == N_DOCS and m.model_fingerprint == fingerprint(built["model"])
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", m.data_dir])
    assert sorted(p.name for p in (out / m.data_dir).iterdir()) == [
        "background.safetensors", "embeddings.npy", "faiss.index", "passages.jsonl", "states.npy"]  # no temp files
    assert set(passages_by_source(out)) == set(DOCS)


def test_index_human_output(model_a, tmp_path):
    corpus = _write_corpus(tmp_path / "c")
    r = run("index", corpus, "--out", tmp_path / "idx", "--model", model_a, "--device", "cpu")
    ok(r)
    text = flat(r.stdout)
    assert f"indexed {N_DOCS} passages from {N_DOCS} files into" in text
    assert f"added {N_DOCS}, kept 0, removed 0" in text
    assert re.search(r"time: embedding [\d.]+s, state encoding [\d.]+s \(concurrently\), total [\d.]+s", text)
    assert "embedding" in r.stderr and "state encoding" in r.stderr  # progress bars go to stderr


def test_ask_human_output(built, monkeypatch):
    # a fixed answer with markup-like brackets: printed literally on the first line
    answer = "Murano [glass] [/] \\"
    monkeypatch.setattr("ragsoup.ask.generate", lambda model, tok, states, qs, n, **kw: [answer] * len(qs))
    question = DOCS["markup.txt"]  # its passage (with [/] in it) is retrieved and shown in the table
    r = run("ask", question, "--index", built["out"], "--k", "3", *ASK)
    ok(r)
    out_lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert out_lines[0] == answer
    text = flat(r.stdout)
    assert "top-3 passages, souped with mean" in text
    assert "score" in text and "passage" in text and "markup" in text and "Wiki dumps" in text
    assert re.search(r"retrieve [\d.]+ ms \| soup [\d.]+ ms \| decode [\d.]+ ms \| total [\d.]+ ms",
                     text), text
    assert r.stderr.strip() == ""


def test_ask_human_output_with_the_real_decoder(built):
    r = run("ask", "Where is glass made?", "--index", built["out"], "--k", "2", *ASK)
    ok(r)
    assert "top-2 passages, souped with mean, weighted by retrieval score (T=0.05)" in flat(r.stdout)
    assert re.search(r"total [\d.]+ ms", flat(r.stdout))


def test_ask_json(built):
    obj = ask_json(built["out"], "Which bridge links Kobe to Awaji Island?", "--k", "3")
    assert set(obj) == {"question", "answer", "k", "pool", "weights", "hops", "extractive", "passages", "timings_ms"}
    assert obj["extractive"] is False
    assert obj["question"] == "Which bridge links Kobe to Awaji Island?"
    assert isinstance(obj["answer"], str) and obj["k"] == 3 and obj["pool"] == "mean"
    assert obj["weights"] == "retrieval"  # the default with mean pooling
    assert len(obj["passages"]) == 3
    ids = {p["id"] for p in passages_by_source(built["out"]).values()}
    for p in obj["passages"]:
        assert set(p) == {"id", "score", "weight", "hop", "text"} and p["id"] in ids and isinstance(p["score"], float)
        assert p["hop"] == 1
    scores = [p["score"] for p in obj["passages"]]
    assert scores == sorted(scores, reverse=True)
    weights = [p["weight"] for p in obj["passages"]]  # softmax(score / 0.05): same order, sum 1
    assert weights == sorted(weights, reverse=True) and abs(sum(weights) - 1) < 2e-3 and weights[0] > weights[-1]
    assert len({p["id"] for p in obj["passages"]}) == 3
    assert set(obj["timings_ms"]) == {"retrieve", "soup", "decode", "total"}
    assert all(v >= 0 for v in obj["timings_ms"].values())
    assert obj["timings_ms"]["total"] >= obj["timings_ms"]["decode"]
    assert obj["passages"][0]["id"] == passages_by_source(built["out"])["bridge.txt"]["id"]


@pytest.mark.parametrize("pool", ["sum", "max", "norm-mean"])
def test_ask_json_other_pools(built, pool):
    obj = ask_json(built["out"], "tea", "--k", "2", "--pool", pool)
    assert obj["pool"] == pool and obj["k"] == 2
    assert obj["weights"] == "uniform"  # these poolings take no weights: the default falls back to equal weights
    assert [p["weight"] for p in obj["passages"]] == [0.5, 0.5]


def test_retrieval_weights_interpolate_between_the_top_passage_and_the_plain_soup(built):
    q = "Which bridge links Kobe to Awaji Island?"
    uniform = ask_json(built["out"], q, "--k", "3", "--weights", "uniform")
    assert uniform["weights"] == "uniform" and [p["weight"] for p in uniform["passages"]] == [0.3333] * 3
    sharp = ask_json(built["out"], q, "--k", "3", "--temperature", "0.0001")  # all weight on the top passage
    top1 = ask_json(built["out"], q, "--k", "1", "--weights", "uniform")
    flat_ = ask_json(built["out"], q, "--k", "3", "--temperature", "1000")  # equal weights, to 4 decimals
    assert sharp["passages"][0]["weight"] == 1.0
    engine = Engine(built["out"], device="cpu")  # the soups themselves, compared through the decoder's answers
    kw = dict(k=3, pool="mean", max_new_tokens=12)
    assert engine.ask(q, weights="retrieval", temperature=1e-4, **kw).answer == engine.ask(
        q, k=1, weights="uniform", max_new_tokens=12).answer
    assert engine.ask(q, weights="retrieval", temperature=1e4, **kw).answer == engine.ask(q, weights="uniform", **kw).answer
    assert sharp["answer"] == top1["answer"] and flat_["answer"] == uniform["answer"]


def test_ask_in_two_hops(built):
    q = "Which bridge links Kobe to Awaji Island?"
    one = ask_json(built["out"], q, "--k", "4")
    two = ask_json(built["out"], q, "--k", "4", "--hops", "2")
    assert one["hops"] == 1 and two["hops"] == 2 and two["k"] == 4
    ids = [p["id"] for p in two["passages"]]
    assert len(set(ids)) == 4 and ids[:2] == [p["id"] for p in one["passages"][:2]]  # hop 1 keeps its top half
    assert [p["hop"] for p in two["passages"]][:2] == [1, 1] and {p["hop"] for p in two["passages"]} <= {1, 2}
    r = run("ask", q, "--index", built["out"], *ASK, "--k", "4", "--hops", "2")
    ok(r)
    assert "in 2 hops" in flat(r.stdout) and "hop" in r.stdout
    assert_error(run("ask", q, "--index", built["out"], *ASK, "--hops", "3"), "--hops must be 1 or 2")
    assert_error(run("ask", q, "--index", built["out"], *ASK, "--hops", "2", "--k", "1"), "--k 2 or more")


CHAIN = {
    "orla.txt": "The harvest fair drew crowds every autumn. Orla Venn was born in Tessary. The bakers sold apple pies.",
    "tessary.txt": "Old maps were drawn by monks in the hills. Tessary is the capital of Moldavia Nova.",
    "census.txt": "People from many countries were born in the valley towns, said the old census.",
    "passport.txt": "Which country a person is born in decides their first passport, the clerk explained.",
    "kelby.txt": "Kelby is the capital of Rostania. Its harbour is deep.",
    "brenna.txt": "Brenna Holt was born in Kelby and later moved away.",
}


def test_the_second_hop_weighs_the_fact_naming_the_bridge_as_much_as_the_first(model_a, tmp_path):
    out = tmp_path / "index"
    index_json(_write_corpus(tmp_path / "corpus", CHAIN), out, model_a)
    q = "In which country was Orla Venn born?"
    got = ask_json(out, q, "--k", "3", "--hops", "2")
    by_text = {p["text"].split(".")[1].strip(): p for p in got["passages"]}
    person, capital = by_text["Orla Venn was born in Tessary"], by_text["Tessary is the capital of Moldavia Nova"]
    assert person["hop"] == 1 and capital["hop"] == 2 and capital["score"] < person["score"]
    assert capital["weight"] == person["weight"] and person["weight"] + capital["weight"] > 0.95
    engine = Engine(out, device="cpu")
    scores, _, hop, w_scores = engine.retrieve([q], 3, hops=1)
    assert hop.tolist() == [[1, 1, 1]] and np.array_equal(w_scores, scores)  # one hop: the weights' scores are its own


def test_ask_extractive_answers_with_a_span_of_its_passages(built, questions_file):
    obj = ask_json(built["out"], "Which bridge links Kobe to Awaji Island?", "--k", "3", "--extractive",
                   "--max-new-tokens", "12")
    assert obj["extractive"] is True and obj["answer"]
    assert obj["answer"] in "\n".join(p["text"] for p in obj["passages"])
    r = run("ask", "--questions", str(questions_file), "--index", built["out"], *ASK, "--extractive", "--json")
    ok(r)
    assert json.loads(r.stdout)["extractive"] is True
    for args in (("Which bridge links Kobe to Awaji Island?",), ("--questions", str(questions_file))):
        human = run("ask", *args, "--index", built["out"], *ASK, "--extractive")
        ok(human)
        assert "answers decoded as spans of the passages" in flat(human.stdout)
    assert "spans of the passages" not in flat(run("ask", "tea", "--index", built["out"], *ASK).stdout)


def test_retrieval_weights_need_a_pooling_that_takes_them(built):
    assert_error(run("ask", "tea", "--index", built["out"], *ASK, "--pool", "max", "--weights", "retrieval"),
                 "--weights uniform")
    assert_error(run("ask", "tea", "--index", built["out"], *ASK, "--weights", "score"), "unknown weighting")
    assert_error(run("ask", "tea", "--index", built["out"], *ASK, "--temperature", "0"), "--temperature must be positive")


@pytest.mark.parametrize("source", sorted(DOCS))
def test_top_passage_for_its_own_text(built, source):
    p = passages_by_source(built["out"])[source]
    obj = ask_json(built["out"], p["text"], "--k", "3")
    assert obj["passages"][0]["id"] == p["id"]
    assert obj["passages"][0]["text"] == p["text"]
    assert obj["passages"][0]["score"] > 0.95


def test_ask_is_deterministic(built):
    a = ask_json(built["out"], "Mauna Loa", "--k", "3")
    b = ask_json(built["out"], "Mauna Loa", "--k", "3")
    assert a["answer"] == b["answer"] and a["passages"] == b["passages"]


@pytest.fixture
def questions_file(built, tmp_path) -> Path:
    ids = passages_by_source(built["out"])
    rows = [{"question": "Where is glass made near Venice?", "answer": "Murano", "gold_ids": [ids["glass.txt"]["id"]]},
            {"question": "Which volcano is the largest?", "answer": "Mauna Loa", "gold_ids": [ids["notes/volcano.md"]["id"]]}]
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in rows))
    return path


def test_ask_questions_file_human(built, questions_file):
    r = run("ask", "--questions", questions_file, "--index", built["out"], "--k", "2", *ASK)
    ok(r)
    text = flat(r.stdout)
    assert re.search(r"EM [\d.]+ F1 [\d.]+ recall@2 100.0 \(all gold passages: 100.0\) over 2 questions", text), text
    assert "Murano" in text and "Mauna Loa" in text


def test_ask_questions_file_json(built, questions_file):
    obj = one_json(run("ask", "--questions", questions_file, "--index", built["out"], "--k", "2", *ASK, "--json"))
    assert obj["n"] == 2 and obj["k"] == 2 and obj["pool"] == "mean"
    assert 0 <= obj["em"] <= 100 and 0 <= obj["f1"] <= 100
    assert obj["recall_at_k"] == obj["recall_all_at_k"] == 100.0  # each question's own passage is among its top 2
    assert len(obj["results"]) == 2
    for row, expected in zip(obj["results"], ("Murano", "Mauna Loa")):
        assert {"question", "expected", "answer", "em", "f1", "gold_retrieved", "total_ms"} <= set(row)
        assert row["expected"] == expected


def test_batched_questions_get_the_answers_and_passages_they_get_alone(built):
    engine = Engine(built["out"], device="cpu")
    qs = ["Where is glass blown?", "Which volcano is the largest?", "Who wrote the letters?"]
    together = engine.ask_batch(qs, k=3, pool="mean", max_new_tokens=6)
    for q, res in zip(qs, together):
        alone = engine.ask(q, k=3, pool="mean", max_new_tokens=6)
        assert res.question == q and res.answer == alone.answer
        assert [p["id"] for p in res.passages] == [p["id"] for p in alone.passages]
    assert {"retrieve", "soup", "decode", "total"} == set(together[0].timings_ms)
    with pytest.raises(RagsoupError, match="empty"):
        engine.ask_batch(["fine?", "  "])
    r = run("ask", "--questions", "/dev/null", "--index", built["out"], "--batch-size", "0")
    assert r.exit_code == 1 and "--batch-size" in r.output


def test_ask_uses_the_default_index_dir(built, tmp_path, monkeypatch):
    shutil.copytree(built["out"], tmp_path / "indexes" / "demo")
    monkeypatch.chdir(tmp_path)
    obj = one_json(run("ask", "tea", *ASK, "--json", "--k", "1"))
    assert obj["k"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 2. incremental re-indexing
# ---------------------------------------------------------------------------------------------------------------


def test_reindex_unchanged_corpus_keeps_every_row(copy):
    out = copy["out"]
    before_dir = read_manifest(out).data_dir
    before = {name: (out / before_dir / name).read_bytes() for name in ("states.npy", "embeddings.npy", "passages.jsonl")}
    rep = index_json(copy["corpus"], out, copy["model"])
    assert (rep["n_passages"], rep["added"], rep["kept"], rep["removed"], rep["rebuilt"]) == (N_DOCS, 0, N_DOCS, 0, "")
    after_dir = read_manifest(out).data_dir
    assert after_dir != before_dir and data_dirs(out) == [after_dir]  # a fresh folder; the old one is gone
    for name, data in before.items():
        assert (out / after_dir / name).read_bytes() == data, name


def test_reindex_unchanged_corpus_encodes_nothing(copy, monkeypatch):
    spy = EncodeSpy()
    monkeypatch.setattr(build_mod, "encode_passages", spy)
    rep = build_index(copy["corpus"], copy["out"], model=copy["model"], device="cpu")
    assert (rep.added, rep.kept, rep.removed) == (0, N_DOCS, 0)
    assert spy.texts == []


NEW_DOC = ("The Atacama Desert in Chile is one of the driest places on Earth. Some weather stations there have "
           "never recorded a single drop of rain.")
EDITED_TEA = DOCS["tea.txt"].replace("spring", "early spring")


def _edit(corpus: Path, change: str) -> tuple[set[str], int, int, int]:
    """Apply a change to the corpus: (texts that must be encoded, added, kept, removed)."""
    if change == "modify":
        (corpus / "tea.txt").write_text(EDITED_TEA)
        return {EDITED_TEA}, 1, N_DOCS - 1, 1
    if change == "add":
        (corpus / "desert.txt").write_text(NEW_DOC)
        return {NEW_DOC}, 1, N_DOCS, 0
    if change == "delete":
        (corpus / "chess.txt").unlink()
        return set(), 0, N_DOCS - 1, 1
    assert change == "all"
    (corpus / "tea.txt").write_text(EDITED_TEA)
    (corpus / "desert.txt").write_text(NEW_DOC)
    (corpus / "chess.txt").unlink()
    return {EDITED_TEA, NEW_DOC}, 2, N_DOCS - 2, 2


@pytest.mark.parametrize("change", ["modify", "add", "delete", "all"])
def test_reindex_encodes_only_changed_passages(copy, monkeypatch, change):
    out = copy["out"]
    old_rows = rows_by_id(out)
    texts, added, kept, removed = _edit(copy["corpus"], change)
    spy = EncodeSpy()
    monkeypatch.setattr(build_mod, "encode_passages", spy)
    rep = build_index(copy["corpus"], out, model=copy["model"], device="cpu")
    assert (rep.added, rep.kept, rep.removed, rep.rebuilt) == (added, kept, removed, "")
    assert rep.n_passages == added + kept
    assert set(spy.texts) == texts and len(spy.texts) == len(texts)
    new_rows = rows_by_id(out)
    assert len(new_rows) == added + kept
    assert sum(pid in old_rows for pid in new_rows) == kept
    for pid, row in new_rows.items():
        if pid in old_rows:
            assert row == old_rows[pid]  # reused rows are copied byte for byte
    assert len(data_dirs(out)) == 1
    # the updated index answers; a new passage is found by its own text, a deleted one is gone
    engine = Engine(out, device="cpu")
    srcs = {p.source for p in engine.passages}
    assert ("chess.txt" in srcs) == (change in ("modify", "add"))
    if change in ("add", "all"):
        res = engine.ask(NEW_DOC, k=2, max_new_tokens=2)
        assert res.passages[0]["text"] == NEW_DOC


def test_reindex_through_the_cli_reports_counts(copy):
    _edit(copy["corpus"], "all")
    rep = index_json(copy["corpus"], copy["out"], copy["model"])
    assert (rep["added"], rep["kept"], rep["removed"], rep["n_passages"]) == (2, N_DOCS - 2, 2, N_DOCS)
    r = run("index", copy["corpus"], "--out", copy["out"], "--model", copy["model"], "--device", "cpu")
    ok(r)
    assert f"added 0, kept {N_DOCS}, removed 0" in flat(r.stdout)
    assert "re-encoded everything" not in r.stdout


def test_reindex_with_another_model_reencodes_everything(copy, model_b, monkeypatch):
    spy = EncodeSpy()
    monkeypatch.setattr(build_mod, "encode_passages", spy)
    rep = index_json(copy["corpus"], copy["out"], model_b)
    assert (rep["added"], rep["kept"], rep["removed"]) == (N_DOCS, 0, 0)
    assert rep["rebuilt"] and "model" in rep["rebuilt"]
    assert len(spy.texts) == N_DOCS
    assert read_manifest(copy["out"]).model_fingerprint == fingerprint(model_b)
    # the index now names model b: ask uses it without --model
    assert ask_json(copy["out"], "tea", "--k", "1")["k"] == 1
    # and the human report says so
    r = run("index", copy["corpus"], "--out", copy["out"], "--model", copy["model"], "--device", "cpu")
    ok(r)
    assert "re-encoded everything: model, embedder or settings changed" in flat(r.stdout)


def test_reindex_with_another_chunk_size_reencodes_everything(copy):
    rep = index_json(copy["corpus"], copy["out"], copy["model"], "--chunk-chars", "400")
    assert rep["kept"] == 0 and rep["added"] == rep["n_passages"] and rep["rebuilt"]


# ---------------------------------------------------------------------------------------------------------------
# 3. interrupted builds
# ---------------------------------------------------------------------------------------------------------------


def test_interrupted_rebuild_keeps_the_previous_index(copy, monkeypatch):
    out = copy["out"]
    manifest = (out / "manifest.json").read_bytes()
    committed = read_manifest(out).data_dir
    before = ask_json(out, "Which bridge links Kobe to Awaji Island?", "--k", "2")
    (copy["corpus"] / "desert.txt").write_text(NEW_DOC)
    (copy["corpus"] / "extra.txt").write_text("A second new file, so that encoding has more than one batch to do.")
    monkeypatch.setattr(build_mod, "encode_passages", EncodeSpy(fail_after=1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_index(copy["corpus"], out, model=copy["model"], device="cpu", batch_size=1)
    assert (out / "manifest.json").read_bytes() == manifest
    assert data_dirs(out) == [committed]
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", committed])  # no temp files
    engine = Engine(out, device="cpu")
    assert len(engine.passages) == N_DOCS
    res = engine.ask("Which bridge links Kobe to Awaji Island?", k=2, max_new_tokens=4)
    assert [p["id"] for p in res.passages] == [p["id"] for p in before["passages"]]
    monkeypatch.undo()
    # the next build picks up where the committed index is
    rep = build_index(copy["corpus"], out, model=copy["model"], device="cpu")
    assert (rep.added, rep.kept, rep.removed) == (2, N_DOCS, 0)


def test_interrupted_first_build_leaves_no_index(model_a, tmp_path, monkeypatch):
    corpus = _write_corpus(tmp_path / "c")
    out = tmp_path / "idx"
    monkeypatch.setattr(build_mod, "encode_passages", EncodeSpy(fail_after=0))
    with pytest.raises(RuntimeError):
        build_index(corpus, out, model=model_a, device="cpu")
    assert not (out / "manifest.json").exists()
    assert list(out.iterdir()) == []
    assert_error(run("ask", "tea", "--index", out, *ASK), "no index at", "ragsoup index")


def test_ctrl_c_during_index(copy, monkeypatch):
    out = copy["out"]
    manifest = (out / "manifest.json").read_bytes()
    (copy["corpus"] / "desert.txt").write_text(NEW_DOC)
    monkeypatch.setattr(build_mod, "encode_passages", EncodeSpy(fail_after=0, exc=KeyboardInterrupt()))
    r = run("index", copy["corpus"], "--out", out, "--model", copy["model"], "--device", "cpu", "--json")
    assert r.exit_code == 130 and "interrupted" in r.stderr and "Traceback" not in r.output
    assert (out / "manifest.json").read_bytes() == manifest and len(data_dirs(out)) == 1
    monkeypatch.undo()
    assert ask_json(out, "tea", "--k", "1")["k"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 4. bad inputs: one error line, exit != 0, no traceback, nothing half-written
# ---------------------------------------------------------------------------------------------------------------


def _index_fails(corpus: Path, out: Path, model: Path, *needles: str, extra=()) -> str:
    line = assert_error(run("index", corpus, "--out", out, "--model", model, "--device", "cpu", *extra), *needles)
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not data_dirs(out)
    return line


def test_index_missing_corpus(model_a, tmp_path):
    _index_fails(tmp_path / "nope", tmp_path / "idx", model_a, "does not exist")
    assert not (tmp_path / "idx").exists()


def test_index_empty_corpus_dir(model_a, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "data.csv").write_text("a,b\n1,2\n")  # not a .txt/.md file
    _index_fails(tmp_path / "c", tmp_path / "idx", model_a, "no .txt or .md files")


def test_index_only_binary_files(model_a, tmp_path):
    corpus = _write_corpus(tmp_path / "c", {"a.txt": b"\x00\x01\x02binary\x00", "b.txt": "caf\u00e9 cr\u00e8me".encode("latin-1")})
    _index_fails(corpus, tmp_path / "idx", model_a, "no passages", "2 skipped as binary/non-UTF-8")


def test_index_only_empty_files(model_a, tmp_path):
    corpus = _write_corpus(tmp_path / "c", {"a.txt": "", "b.md": "  \n\n\t \n"})
    _index_fails(corpus, tmp_path / "idx", model_a, "no passages", "2 empty")


def test_index_skips_binary_and_empty_files_with_counts(model_a, tmp_path):
    docs = {"a.txt": DOCS["tea.txt"], "b.txt": DOCS["chess.txt"], "bin.txt": b"\x89PNG\r\n\x1a\n\x00\x00",
            "latin.txt": "na\u00efve r\u00e9sum\u00e9 text".encode("latin-1"), "empty.txt": "", "blank.md": "\n \n"}
    corpus = _write_corpus(tmp_path / "c", docs)
    rep = index_json(corpus, tmp_path / "idx", model_a)
    assert (rep["n_passages"], rep["n_files"], rep["skipped_binary"], rep["skipped_empty"]) == (2, 6, 2, 2)
    r = run("index", corpus, "--out", tmp_path / "idx", "--model", model_a, "--device", "cpu")
    ok(r)
    assert "skipped 2 binary/non-UTF-8 and 2 empty files" in flat(r.stdout)


def test_index_drops_duplicate_passages(model_a, tmp_path):
    docs = {"a.txt": DOCS["tea.txt"], "copy-of-a.txt": DOCS["tea.txt"], "b.txt": DOCS["bridge.txt"]}
    corpus = _write_corpus(tmp_path / "c", docs)
    rep = index_json(corpus, tmp_path / "idx", model_a)
    assert (rep["n_passages"], rep["n_duplicates"], rep["n_files"]) == (2, 1, 3)
    r = run("index", corpus, "--out", tmp_path / "idx", "--model", model_a, "--device", "cpu")
    assert "dropped 1 duplicate passages" in flat(r.stdout)


def test_index_one_huge_file(model_a, tmp_path):
    sentence = "Sentence number {} of the huge file talks about river {} and mountain {}. "
    text = "".join(sentence.format(i, i % 97, i % 89) for i in range(40_000))
    assert len(text) > 3_000_000
    corpus = _write_corpus(tmp_path / "c", {"huge.txt": text})
    rep = index_json(corpus, tmp_path / "idx", model_a, "--chunk-chars", "50000", "--batch-size", "32")
    assert rep["n_files"] == 1 and rep["n_passages"] >= len(text) // 50_000
    ps = read_passages(tmp_path / "idx" / read_manifest(tmp_path / "idx").data_dir / "passages.jsonl")
    assert all(len(p.text) <= 50_000 for p in ps)
    assert sum(len(p.text) for p in ps) >= len(text.strip()) - len(ps)  # nothing lost (joining spaces aside)


def test_index_out_is_a_file(model_a, built, tmp_path):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert_error(run("index", built["corpus"], "--out", target, "--model", model_a, "--device", "cpu"),
                 "cannot create index directory")
    assert target.read_text() == "not a directory"


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--batch-size", "-3"], "--batch-size must be at least 1"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--state-dtype", "int8"], "--state-dtype must be float16 or float32"),
    (["--chunk-chars", "0"], "chunk size"),
    (["--model", "no-such-model"], "model 'no-such-model' not found"),
])
def test_index_bad_options(built, model_a, tmp_path, args, needle):
    r = run("index", built["corpus"], "--out", tmp_path / "idx", "--model", model_a, *args)
    assert_error(r, needle)
    assert not (tmp_path / "idx" / "manifest.json").exists()


@pytest.mark.parametrize("question", ["", "   ", " \t\n "])
def test_ask_empty_question(built, question):
    assert_error(run("ask", question, "--index", built["out"], *ASK), "the question is empty")


def test_ask_no_question_at_all(built):
    assert_error(run("ask", "--index", built["out"], *ASK), "the question is empty")


@pytest.mark.parametrize("k", ["0", "-1"])
def test_ask_bad_k(built, k):
    assert_error(run("ask", "tea", "--index", built["out"], "--k", k, *ASK), f"--k must be at least 1 (got {k})")


def test_ask_k_larger_than_the_index_is_clamped(built):
    r = run("ask", "tea", "--index", built["out"], "--k", "50", *ASK, "--json")
    obj = one_json(r)
    assert obj["k"] == N_DOCS and len(obj["passages"]) == N_DOCS
    notices = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(notices) == 1 and notices[0].startswith("notice:") and f"using k={N_DOCS}" in notices[0]
    r = run("ask", "tea", "--index", built["out"], "--k", "50", *ASK)
    ok(r)
    assert f"top-{N_DOCS} passages" in flat(r.stdout) and "notice:" in r.stderr


def test_ask_unknown_pool(built):
    assert_error(run("ask", "tea", "--index", built["out"], "--pool", "median", *ASK), "unknown pooling 'median'")


def test_ask_unknown_device(built):
    assert_error(run("ask", "tea", "--index", built["out"], "--device", "tpu"), "unknown device 'tpu'")


def test_ask_with_a_different_model(built, model_b):
    line = assert_error(run("ask", "tea", "--index", built["out"], "--model", model_b, *ASK))
    assert fingerprint(built["model"]) in line and fingerprint(model_b) in line


def test_ask_missing_index(tmp_path):
    assert_error(run("ask", "tea", "--index", tmp_path / "nowhere", *ASK), "no index at", "ragsoup index")


def test_ask_missing_default_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_error(run("ask", "tea", *ASK), "no index at", "ragsoup index", "--index")


def test_ask_missing_questions_file(built, tmp_path):
    assert_error(run("ask", "--questions", tmp_path / "q.jsonl", "--index", built["out"], *ASK), "not found")


@pytest.mark.parametrize("content", ['{"data_dir": "data-', "[1, 2, 3]", "{}", '"text"', "\xff\xfe garbage"])
def test_ask_corrupt_manifest(copy, content):
    (copy["out"] / "manifest.json").write_text(content, encoding="latin-1")
    assert_error(run("ask", "tea", "--index", copy["out"], *ASK), "manifest.json", "rebuild")


def test_ask_missing_data_folder(copy):
    shutil.rmtree(copy["out"] / read_manifest(copy["out"]).data_dir)
    assert_error(run("ask", "tea", "--index", copy["out"], *ASK), "missing", "rebuild")


@pytest.mark.parametrize("name, damage", [
    ("states.npy", "delete"), ("states.npy", "garbage"), ("states.npy", "truncate"),
    ("faiss.index", "delete"), ("faiss.index", "garbage"), ("faiss.index", "truncate"),
    ("passages.jsonl", "delete"), ("passages.jsonl", "garbage"),
])
def test_ask_damaged_index_file_then_rebuild(copy, name, damage):
    out = copy["out"]
    path = out / read_manifest(out).data_dir / name
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage {not: json}\n" * 3)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_error(run("ask", "tea", "--index", out, *ASK), "rebuild")
    # `ragsoup index` repairs it: everything is re-encoded, and the index answers again
    rep = index_json(copy["corpus"], out, copy["model"])
    if name != "faiss.index":  # the FAISS index is rebuilt from embeddings every time
        assert rep["rebuilt"].startswith("previous index unreadable") and rep["added"] == N_DOCS
    assert len(data_dirs(out)) == 1
    assert ask_json(out, "tea", "--k", "2")["k"] == 2


def test_ask_doc_soups_every_segment(model_a, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text(" ".join(f"Sentence number {w} of the long document is here." for w in ["one", "two", "three", "four", "five", "six"]))
    out = one_json(run("ask", "What is in the document?", "--doc", str(doc), "--model", str(model_a), "--chunk-chars", "60", "--json"))
    assert out["k"] == len(out["passages"]) >= 4  # every segment is souped
    assert " ".join(p["text"] for p in out["passages"]).count("Sentence number") == 6
    assert set(out["timings_ms"]) == {"retrieve", "soup", "decode", "total"}
    assert out["weights"] == "retrieval" and abs(sum(p["weight"] for p in out["passages"]) - 1) < 1e-3
    w = {p["text"]: p["weight"] for p in out["passages"]}
    asked = one_json(run("ask", "Sentence number four of the long document", "--doc", str(doc), "--model",
                         str(model_a), "--chunk-chars", "60", "--json"))
    best = max(asked["passages"], key=lambda p: p["score"])
    assert "four" in best["text"] and best["weight"] == max(p["weight"] for p in asked["passages"])
    even = one_json(run("ask", "What is in the document?", "--doc", str(doc), "--model", str(model_a),
                        "--chunk-chars", "60", "--weights", "uniform", "--json"))
    assert len({p["weight"] for p in even["passages"]}) == 1 and len(set(w.values())) > 1
    spans = one_json(run("ask", "What is in the document?", "--doc", str(doc), "--model", str(model_a),
                         "--chunk-chars", "60", "--extractive", "--max-new-tokens", "8", "--json"))
    assert spans["extractive"] is True and spans["answer"] and spans["answer"] in doc.read_text()


def test_ask_doc_missing_file_is_one_error_line(model_a, tmp_path):
    assert_error(run("ask", "q?", "--doc", str(tmp_path / "nope.txt"), "--model", str(model_a)), "does not exist")


def test_default_index_dir_is_named_after_the_corpus(tmp_path):
    from ragsoup.indexdir import default_index_dir

    (tmp_path / "demo").mkdir()
    assert default_index_dir(tmp_path / "demo") == Path("indexes/demo")
    assert default_index_dir(tmp_path / "faq.jsonl") == Path("indexes/faq")
    assert default_index_dir(tmp_path / "squad.json.gz") == Path("indexes/squad")


def _cli_command(name: str):
    """The click command behind `ragsoup NAME`: its make_context parses a command line without running it."""
    import typer

    return typer.main.get_command(app).commands[name]


def _benchmark_script(name: str):
    """Import benchmarks/NAME.py (a script, not a package module)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_arms_print_train_commands_the_cli_accepts():
    """benchmarks/ablations.py prints each arm's `ragsoup train` line; every flag in it must be a real option."""
    import shlex

    abl = _benchmark_script("ablations")
    train_cmd = _cli_command("train")
    known = {opt for p in train_cmd.params for opt in p.opts}
    for arm, cfg in abl.ARMS.items():
        words = shlex.split(abl.command(arm, {**abl.BUDGET, **cfg}))
        assert words[:2] == ["ragsoup", "train"]
        flags = [w for w in words[2:] if w.startswith("--")]
        assert "--warmup-steps" in flags  # the budget's warmup must reach a rerun of the printed line
        assert set(flags) <= known, (arm, set(flags) - known)
        ctx = train_cmd.make_context("train", words[2:])  # parses: every value has the option's type
        assert ctx.params["out"] == f"runs/ablation-{arm}"


def test_index_and_bench_take_a_local_embedder_directory(tmp_path):
    """--embedder reaches the build: a directory that is not there is named in one error line, exit code 1."""
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("A short passage about glass made near Venice.")
    missing = tmp_path / "no-such-embedder"
    for args in (("index", corpus, "--out", tmp_path / "idx"),
                 ("bench", "--quick", "--modes", "soup", "--cache-dir", tmp_path / "b")):
        r = run(*args, "--embedder", missing)
        assert r.exit_code == 1, r.output
        assert "no-such-embedder" in flat(r.output) and "Traceback" not in r.output


@pytest.mark.parametrize("script", ["train_default.sh", "train_quick.sh", "train_hour.sh"])
def test_training_recipes_parse_and_each_stage_starts_from_the_last(script):
    """Every `ragsoup train` line of a CPU recipe parses, names a preset, and (after the first) inits from the stage before."""
    import shlex

    from ragsoup.train import PRESETS

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / script).read_text().replace("\\\n", " ")
    text = re.sub(r"\$\{?threads\}?", "2", re.sub(r"\$\{?out\}?", "runs/recipe", text))
    stage_seeds = [int(i) for i in re.findall(r"\$\(seed (\d+)", text)]  # train_hour.sh's SEED=N: N + i per stage
    assert len(set(stage_seeds)) == len(stage_seeds), script
    text = re.sub(r"\$\(seed \d+ ?([^)]*)\)", r"\1", text)  # without SEED: the stage's own seed options
    lines = [ln.split("#")[0] for ln in text.splitlines() if ln.strip().startswith("ragsoup train")]
    assert len(lines) >= 3, script
    train_cmd = _cli_command("train")
    prev_out = None
    for line in lines:
        ctx = train_cmd.make_context("train", shlex.split(line)[2:])  # unknown options or bad values raise
        preset = PRESETS[ctx.params["preset"]]
        out = ctx.params["out"] or preset["out"]
        init = ctx.params["init"] or preset.get("init")
        assert init == (None if prev_out is None else f"{prev_out}/last"), (script, line)
        prev_out = out


def test_eval_hour_cells_parse_and_have_unique_names():
    """Every `cell NAME OPTIONS` line of benchmarks/eval_hour.sh is a valid `ragsoup eval` command line."""
    import shlex

    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "eval_hour.sh").read_text()
    text = re.sub(r'"?\$\{?(M|threads|prose)\}?"?', "x", text)
    cells = [shlex.split(ln) for ln in text.splitlines() if ln.startswith("cell ")]
    assert len(cells) >= 10
    names = [c[1] for c in cells]
    assert len(set(names)) == len(names)
    eval_cmd = _cli_command("eval")
    for words in cells:
        ctx = eval_cmd.make_context("eval", ["--model", "x", "--json", *words[2:]])  # unknown options raise
        assert ctx.params["task"] and ctx.params["limit"] > 0, words


def test_stage_guard_stops_a_recipe_whose_first_stage_reads_nothing(tmp_path, capsys):
    """benchmarks/stage_ok.py fails on a run whose last held-out EM at k = 1 is 0, and each CPU recipe calls it."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    guard = _benchmark_script("stage_ok")

    def run_with(evals: list[dict]) -> int:
        run = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        recs = [{"step": 500 * (i + 1), "loss": 2.2, **({"eval": e} if e else {})} for i, e in enumerate(evals)]
        (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        return guard.main([str(run)])

    assert run_with([{"em@1": 0.0, "em@4": 0.0}, {}, {"em@1": 0.0, "em@4": 0.0}]) == 1
    assert "never left the loss plateau" in capsys.readouterr().err
    assert run_with([{"em@1": 0.0}, {"em@1": 25.0}]) == 0  # the last evaluation counts
    assert run_with([{"em@1": 60.0}, {"em@1": 0.0}]) == 1
    assert run_with([{"em@5": 40.0}]) == 1 and "no held-out EM at k = 1" in capsys.readouterr().err
    for script in ("train_default.sh", "train_quick.sh", "train_hour.sh"):
        lines = (root / script).read_text().replace("\\\n", " ").splitlines()
        first = next(i for i, ln in enumerate(lines) if ln.startswith("ragsoup train"))
        assert "stage_ok.py" in lines[first + 1], script


def test_stage_guard_reports_key_matching_on_packed_needles(tmp_path, capsys, monkeypatch):
    """stage_ok.py --keys scores the run's last checkpoint on packed needles at k = 1; --min-keys stops below it."""
    import ragsoup.bench

    guard = _benchmark_script("stage_ok")
    calls: list[dict] = []
    em = {"value": 31.2}

    def fake_eval(**kw):
        calls.append(kw)
        return SimpleNamespace(em=em["value"])

    monkeypatch.setattr(ragsoup.bench, "run_eval", fake_eval)
    run = tmp_path / "s1"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 2000, "loss": 1.0, "eval": {"em@1": 80.0}}) + "\n")
    assert guard.main([str(run), "--keys"]) == 0
    assert calls[-1]["task"] == "needle-packed" and calls[-1]["k"] == 1 and calls[-1]["model"] == run / "last"
    assert "copies whole values" in capsys.readouterr().out
    em["value"] = 5.5
    assert guard.main([str(run), "--keys"]) == 0  # reported, not fatal
    assert "blends values by position" in capsys.readouterr().out
    assert guard.main([str(run), "--min-keys", "15"]) == 1 and "another seed" in capsys.readouterr().err
    n = len(calls)
    assert guard.main([str(run)]) == 0 and len(calls) == n  # without --keys no evaluation runs


def test_blends_script_tells_a_wrong_key_from_a_positional_blend(tmp_path, capsys):
    """benchmarks/blends.py sorts distractor-needle predictions into right / other / blend / else."""
    blends = _benchmark_script("blends")
    others = ["319630", "555555"]
    assert blends.classify(" 933820", "933820", others) == "right"
    assert blends.classify("555555", "933820", others) == "other"
    assert blends.classify("319820", "933820", others) == "blend"  # 3 1 9 from one value, 8 2 0 from the answer
    assert blends.classify("935525", "933820", others) == "blend"  # position by position, any of the three
    assert blends.classify("93382", "933820", others) == "else"  # too short
    assert blends.classify("111111", "933820", others) == "else"
    path = tmp_path / "p.jsonl"
    recs = [("933820", "933820"), ("319820", "933820"), ("555555", "933820"), ("000000", "933820")]
    path.write_text("".join(json.dumps({"prediction": p, "answers": [a], "others": others}) + "\n" for p, a in recs))
    assert blends.main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 4, "right": 25.0, "other": 25.0, "blend": 25.0, "else": 25.0}


def test_key_margin_scores_each_value_as_the_decoder_would_generate_it(tiny_model):
    """benchmarks/key_margin.py: a value's teacher-forced log-likelihood equals the sum of the step-by-step
    log-probabilities of its tokens (prompt prefilled from the passage's state), and the report counts questions."""
    import random

    import torch

    from ragsoup.checkpoint import load_model
    from ragsoup.encode import encode_token_batch
    from ragsoup.tasks import generate_example
    from ragsoup.tokenizer import answer_ids, passage_ids, prompt_ids

    km = _benchmark_script("key_margin")
    loaded = load_model(tiny_model)
    model, tok = loaded.model, loaded.tokenizer
    ex = generate_example("needle-packed", random.Random(3), 1)
    values = [ex.answer] + [a for _, a in ex.extra]
    assert len(values) >= 2
    got, tops = km.value_scores(model, tok, ex.docs[0], ex.question, values)
    with torch.inference_mode():
        for v, ll, top in zip(values, got, tops):
            state = encode_token_batch(model, [passage_ids(tok, ex.docs[0], 1024)], tok.pad_id)
            logits, state = model(torch.tensor([prompt_ids(tok, ex.question)]), state)
            logits, want, want_top = logits[0, -1], 0.0, []
            for t in answer_ids(tok, v):
                want += float(torch.log_softmax(logits.float(), -1)[t])
                want_top.append(int(logits.argmax()))
                logits, state = model.step(torch.tensor([t]), state)
                logits = logits[0]
            assert abs(ll - want) < 1e-3 * max(1.0, abs(want))
            assert top == want_top  # the step-by-step decoder's choice after each forced prefix
    r = km.key_margin(str(tiny_model), n=3, seed=5)
    assert r["n"] == 3 and 25.0 <= r["chance"] <= 50.0 and 0.0 <= r["key_acc"] <= 100.0
    assert 0.0 <= r["own"] <= 100.0 - r["follow"]  # a forced digit is never both values' (only differing ones count)
