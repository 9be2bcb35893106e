"""`ragsoup eval`: answer quality with given gold + distractor passages (tiny random model, no retrieval)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ragsoup.bench import EVAL_TASKS, eval_examples, run_eval
from ragsoup.cli import app
from ragsoup.errors import RagsoupError
from ragsoup.tasks.files import make_corpus

KEYS = {"task", "mode", "k", "n", "em", "f1", "weights", "extractive"}


@pytest.fixture()
def squad_file(tmp_path) -> Path:
    def article(title: str, n: int) -> dict:
        paras = []
        for i in range(n):
            ctx = f"{title} paragraph {i}: the river {title.lower()}{i} flows past the mill of Bram{i}."
            paras.append({"context": ctx, "qas": [
                {"id": f"{title}-{i}", "question": f"Whose mill does the river {title.lower()}{i} flow past?",
                 "answers": [{"text": f"Bram{i}", "answer_start": ctx.index("Bram")}]}]})
        return {"title": title, "paragraphs": paras}

    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [article("Alpha", 3), article("Beta", 3)]}))
    return path


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_eval_json_on_a_tiny_squad_file(tiny_model, squad_file):
    obj = _json(_run(["eval", "--task", "squad", "--data", str(squad_file), "--k", "3", "--model", str(tiny_model),
                      "--device", "cpu", "--json"]))
    assert set(obj) == KEYS
    assert obj["task"] == "squad" and obj["mode"] == "soup" and obj["k"] == 3 and obj["n"] == 6
    assert 0.0 <= obj["em"] <= 100.0 and 0.0 <= obj["f1"] <= 100.0


def test_eval_json_on_a_generated_needle_task_is_deterministic(tiny_model):
    args = ["eval", "--task", "needle", "--k", "3", "--limit", "5", "--model", str(tiny_model), "--device", "cpu",
            "--max-new-tokens", "6", "--json"]
    first = _json(_run(args))
    assert set(first) == KEYS and first["n"] == 5 and first["k"] == 3 and first["task"] == "needle"
    assert _json(_run(args)) == first
    concat = _json(_run([*args, "--mode", "concat"]))
    assert concat["mode"] == "concat" and concat["n"] == 5


@pytest.mark.parametrize("mode", ["soup", "concat"])
def test_eval_extractive_decodes_spans_of_each_examples_own_passages(tiny_model, monkeypatch, mode):
    import ragsoup.evaluate
    from ragsoup.bench import eval_examples

    seen: list[str] = []
    real = ragsoup.evaluate.generate
    monkeypatch.setattr(ragsoup.evaluate, "generate", lambda *a, spans_of=None, **kw: (
        seen.extend(spans_of or []), real(*a, spans_of=spans_of, **kw))[1])
    obj = _json(_run(["eval", "--task", "needle", "--k", "3", "--limit", "4", "--model", str(tiny_model), "--device",
                      "cpu", "--max-new-tokens", "4", "--mode", mode, "--extractive", "--json"]))
    assert obj["extractive"] is True and obj["n"] == 4
    assert seen == [ex.docs for ex in eval_examples("needle", None, 3, 4, 0, 60)]


def test_eval_reads_a_make_corpus_directory(tiny_model, tmp_path):
    d = make_corpus("two-hop", 12, 3, 0, tmp_path / "c", passage_chars=60)
    examples = eval_examples("two-hop", d, 4, None, 0)
    assert len(examples) == 3
    for ex in examples:
        assert len(ex.docs) == 4 and len(ex.gold) == 2
        assert ex.answer in " ".join(ex.docs[g] for g in ex.gold)
    with pytest.raises(RagsoupError, match="smaller than"):
        eval_examples("two-hop", d, 1, None, 0)
    res = run_eval("two-hop", d / "questions.jsonl", k=4, model=tiny_model, device="cpu", max_new_tokens=4)
    assert res.n == 3


def test_eval_predictions_file_holds_every_question_with_its_prediction_and_the_other_needles(tiny_model, tmp_path):
    from ragsoup.checkpoint import load_model
    from ragsoup.evaluate import predict

    out = tmp_path / "pred.jsonl"
    obj = _json(_run(["eval", "--task", "needle-distractor", "--k", "3", "--limit", "4", "--model", str(tiny_model),
                      "--device", "cpu", "--max-new-tokens", "4", "--predictions", str(out), "--json"]))
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    examples = eval_examples("needle-distractor", None, 3, 4, 0, 60)
    loaded = load_model(tiny_model)
    preds = predict(loaded.model, loaded.tokenizer, examples, max_new_tokens=4)
    assert [r["question"] for r in recs] == [ex.question for ex in examples]
    assert [r["prediction"] for r in recs] == preds
    for r, ex in zip(recs, examples):
        assert r["answers"] == [ex.answer] and r["gold"] == ex.gold
        assert len(r["others"]) == 2 and ex.answer not in r["others"]
        assert all(any(v in d for d in ex.docs) for v in r["others"])
        assert r["em"] == float(r["prediction"].strip() == ex.answer)
    assert 100 * sum(r["em"] for r in recs) / 4 == obj["em"]


def test_eval_human_output_is_a_table(tiny_model):
    r = _run(["eval", "--task", "needle-distractor", "--k", "2", "--limit", "2", "--model", str(tiny_model),
              "--device", "cpu", "--max-new-tokens", "4"])
    assert r.exit_code == 0, r.output
    assert "EM" in r.stdout and "needle-distractor" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--task", "trivia"], "unknown task"),
    (["--task", "squad", "--data", "no/such/file.json"], "not found"),
    (["--task", "hotpotqa"], "needs --data"),
    (["--task", "needle", "--data", "no/such/dir"], "not found"),
    (["--task", "needle", "--mode", "stack"], "unknown mode"),
    (["--task", "needle", "--k", "0"], "--k must be at least 1"),
    (["--task", "needle", "--predictions", "no/such/dir/p.jsonl"], "does not exist"),
    (["--task", "needle", "--mode", "concat", "--weights", "retrieval"], "use it with --mode soup"),
    (["--task", "needle", "--pool", "sum", "--weights", "retrieval"], "--weights uniform"),
])
def test_eval_errors_are_one_line_and_exit_1(tiny_model, args, message):
    r = _run(["eval", *args, "--model", str(tiny_model), "--device", "cpu", "--json"])
    assert r.exit_code == 1
    assert r.stdout.strip() == ""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_eval_with_retrieval_weights_weighs_the_needle_highest(tiny_model):
    from dataclasses import replace

    from ragsoup.bench import example_weights
    from ragsoup.checkpoint import load_model
    from ragsoup.evaluate import predict

    examples = eval_examples("needle", None, 4, 3, 0, passage_chars=60)
    weights = example_weights(examples, 0.05)
    for ex, w in zip(examples, weights):
        assert w.shape == (4,) and abs(float(w.sum()) - 1) < 1e-5
        assert int(w.argmax()) == ex.gold[0]  # the embedder finds the passage that names the key
    loaded = load_model(tiny_model, device="cpu")
    one_hot = [torch.nn.functional.one_hot(torch.tensor(ex.gold[0]), 4).float() for ex in examples]
    alone = [replace(ex, docs=[ex.docs[ex.gold[0]]], gold=[0]) for ex in examples]
    args = dict(max_new_tokens=8)
    assert predict(loaded.model, loaded.tokenizer, examples, weights=one_hot, **args) == predict(
        loaded.model, loaded.tokenizer, alone, **args)  # a one-hot weighted soup is that passage's state
    obj = _json(_run(["eval", "--task", "needle", "--k", "4", "--limit", "3", "--model", str(tiny_model), "--device",
                      "cpu", "--weights", "retrieval", "--json"]))
    assert obj["weights"] == "retrieval" and obj["n"] == 3


def test_eval_tasks_cover_the_brief():
    assert {"hotpotqa", "squad", "needle", "two-hop", "needle-multikey", "needle-distractor"} <= set(EVAL_TASKS)


def test_eval_with_a_prose_haystack_puts_the_needle_in_that_prose(tiny_model, tmp_path):
    from ragsoup.bench import eval_examples

    prose = tmp_path / "book.txt"
    prose.write_text("The whale rose slowly out of the grey water. Ishmael watched from the deck in silence. "
                     "The captain said nothing for a long while. Then the wind changed and the sails filled. " * 5)
    exs = eval_examples("needle", None, 3, 4, 0, passage_chars=120, filler=prose)
    for ex in exs:
        text = " ".join(ex.docs)
        assert "whale" in text or "captain" in text or "Ishmael" in text or "sails" in text
        assert ex.answer in ex.docs[ex.gold[0]]
    out = _json(_run(["eval", "--task", "needle", "--k", "3", "--limit", "2", "--model", str(tiny_model),
                      "--filler", str(prose), "--json"]))
    assert out["n"] == 2


def test_eval_with_a_separate_encoder(tiny_model, tmp_path):
    """--encoder: passages are encoded by another checkpoint (decoder-only runs); a mismatched one is refused."""
    from ragsoup.checkpoint import save_checkpoint
    from ragsoup.model import Mamba2Config, Mamba2LM
    from ragsoup.tokenizer import ByteTokenizer

    args = ["eval", "--task", "needle", "--k", "3", "--limit", "4", "--model", str(tiny_model), "--json"]
    same = _json(_run(args + ["--encoder", str(tiny_model)]))
    assert same == _json(_run(args))
    torch.manual_seed(1)
    big = Mamba2Config.from_dict(dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=8, vocab_size=264))
    save_checkpoint(Mamba2LM(big), ByteTokenizer(), tmp_path / "other")
    res = _run(args + ["--encoder", str(tmp_path / "other")])
    assert res.exit_code == 1 and "same state size" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("task", ["longdoc", "longdoc-multifact"])
def test_eval_long_document_tasks(tiny_model, task):
    obj = _json(_run(["eval", "--task", task, "--k", "6", "--limit", "3", "--model", str(tiny_model), "--json"]))
    assert obj["task"] == task and obj["k"] == 6 and obj["n"] == 3


def test_make_corpus_squad_writes_whole_articles_and_their_questions(squad_file, tmp_path):
    from ragsoup.tasks.files import read_corpus, read_questions

    out = tmp_path / "sq"
    res = _run(["make-corpus", "squad", "--data", str(squad_file), "--split", "all", "--passages", "4",
                "--queries", "2", "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    corpus, questions = read_corpus(out), read_questions(out)
    assert [r["title"] for r in corpus] == ["Alpha"] * 3  # whole articles only: Beta's 3 would pass 4 passages
    by_id = {r["id"]: r for r in corpus}
    assert len(questions) == 2
    for q in questions:
        (gold,) = q["gold_ids"]
        assert q["answer"] in by_id[gold]["text"] and q["answers"] == [q["answer"]]
    again = tmp_path / "sq2"
    _run(["make-corpus", "squad", "--data", str(squad_file), "--split", "all", "--passages", "4", "--queries", "2",
          "--seed", "1", "--out", str(again)])
    assert read_questions(again) == questions  # deterministic per seed
    bad = _run(["make-corpus", "squad", "--passages", "4", "--queries", "2", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "--data" in bad.output


def test_gold_retrieved_matches_ids_and_their_chunks():
    from ragsoup.metrics import gold_retrieved

    assert gold_retrieved(["a", "squad-00012"], ["squad-00012"])
    assert gold_retrieved(["squad-00012-1"], ["squad-00012"])  # a chunk cut from the gold paragraph at indexing
    assert not gold_retrieved(["squad-00013", "squad-00012x-1"], ["squad-00012"])
    assert not gold_retrieved([], ["g"])
    assert gold_retrieved(["a-0", "x"], ["a", "b"]) and not gold_retrieved(["a-0", "x"], ["a", "b"], require_all=True)
    assert gold_retrieved(["a-0", "b"], ["a", "b"], require_all=True)


def test_eval_passage_chars_sets_generated_passage_length(tiny_model, monkeypatch):
    import ragsoup.bench as bench

    seen = []
    real = bench.eval_examples

    def spy(task, data, k, limit, seed, passage_chars=bench.DEFAULT_PASSAGE_CHARS, *rest):
        seen.append(passage_chars)
        return real(task, data, k, limit, seed, passage_chars, *rest)

    monkeypatch.setattr(bench, "eval_examples", spy)
    base = ["eval", "--task", "needle", "--k", "2", "--limit", "2", "--model", str(tiny_model), "--json"]
    assert _json(_run(base))["n"] == 2
    assert _json(_run([*base, "--passage-chars", "300"]))["n"] == 2
    assert seen == [60, 300]  # the tiny model's trained length, then the option
    r = CliRunner().invoke(app, [*base, "--passage-chars", "0"])
    assert r.exit_code == 1 and "--passage-chars must be at least 1" in r.stderr


def test_eval_two_hop_bridge_scores_the_country(tiny_model, monkeypatch):
    import ragsoup.evaluate as evaluate

    def answer_with(pick):
        def fake_predict(model, tok, examples, **kw):
            return [pick(ex.answer) for ex in examples]
        return fake_predict

    cases = [(lambda a: a, 100.0),                       # "CITY, COUNTRY"
             (lambda a: a.split(", ")[1], 100.0),        # the country alone
             (lambda a: "Elsewhere, " + a.split(", ")[1], 100.0),  # wrong bridge, right country
             (lambda a: a.split(", ")[0], 0.0)]          # the city alone
    for pick, em in cases:
        monkeypatch.setattr(evaluate, "predict", answer_with(pick))
        res = run_eval("two-hop-bridge", k=3, limit=4, model=str(tiny_model), device="cpu")
        assert (res.n, res.em) == (4, em)
