"""Language-model pretraining: text sources, learning, determinism/resume, file corpora, CLI."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragsoup.checkpoint import load_model
from ragsoup.cli import app
from ragsoup.errors import RagsoupError
from ragsoup.pretrain import (PretrainConfig, TaskText, TokenShards, corpus_texts, lm_batch, lm_loss, load_shards,
                              pretrain, write_shards)
from ragsoup.tokenizer import ByteTokenizer
from ragsoup.train import new_model

MODEL = dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(out=str(tmp_path / "lm"), text="tasks:needle:1", tokenizer="bytes", seq_len=48, batch_size=2, steps=6,
                lr=3e-3, warmup_steps=1, eval_every=3, eval_batches=1, save_every=3, model=MODEL)
    return PretrainConfig(**{**base, **kw})


def test_task_text_rows_start_at_a_passage_and_have_the_asked_length():
    tok = ByteTokenizer()
    src = TaskText("needle:1", 80, tok)
    row = src.row(random.Random(0), 300)
    assert len(row) == 300
    assert tok.doc_id in row and row[0] != tok.doc_id
    # deterministic given the rng
    assert src.row(random.Random(0), 300) == row


def test_task_text_with_qa_appends_each_examples_question_and_answer():
    tok = ByteTokenizer()
    row = TaskText("needle:1", 80, tok, qa=True, k_max=3).row(random.Random(1), 2000)
    assert row.count(tok.q_id) >= 3 and row.count(tok.q_id) == row.count(tok.a_id)
    first_q, first_a = row.index(tok.q_id), row.index(tok.a_id)
    answer = bytes(row[first_a + 1 : row.index(tok.eos_id)]).decode()
    assert answer.isdigit() and answer in bytes(t for t in row[:first_q] if t < 256).decode()  # answerable in context


def test_token_shards_draw_rows_from_passage_starts_and_wrap():
    a = (np.arange(10, dtype=np.uint16), np.array([0, 4, 7]))
    b = (np.arange(100, 103, dtype=np.uint16), np.array([0]))
    data = TokenShards([a, b, (np.zeros(0, np.uint16), np.zeros(0, np.int64))])
    assert data.n_tokens == 13 and len(data.shards) == 2
    rows = {tuple(data.row(random.Random(s), 5)) for s in range(60)}
    assert rows == {(0, 1, 2, 3, 4), (4, 5, 6, 7, 8), (7, 8, 9, 0, 1), (100, 101, 102, 100, 101)}
    with pytest.raises(RagsoupError, match="no text"):
        TokenShards([(np.zeros(0, np.uint16), np.zeros(0, np.int64))])


def test_write_shards_splits_holds_out_and_loads_whatever_shards_are_present(tmp_path):
    tok = ByteTokenizer()
    texts = [f"passage {i:03d}" for i in range(250)]  # 12 tokens each with <doc>
    meta = write_shards(iter(texts), tok, tmp_path / "d", shard_tokens=600)
    held = np.load(tmp_path / "d" / "heldout.npy")
    assert meta["passages"] == 250 and len(np.load(tmp_path / "d" / "heldout.starts.npy")) == 2  # #99 and #199
    assert b"passage 099" in bytes(held[held < 256].astype(np.uint8).tolist())
    assert meta["train_tokens"] == 248 * 12 and len(meta["shards"]) == 5 and meta["dtype"] == "uint16"
    train, heldout = load_shards(tmp_path / "d")
    assert train.n_tokens == 248 * 12 and heldout.n_tokens == 24
    (tmp_path / "d" / "shard-00001.npy").unlink()  # a GPU run carries only some shards
    assert load_shards(tmp_path / "d")[0].n_tokens == 248 * 12 - meta["shards"][1]["tokens"]
    (tmp_path / "d" / "data.json").unlink()
    with pytest.raises(RagsoupError, match="prepare-only"):
        load_shards(tmp_path / "d")


def test_squad_pretraining_text_leaves_out_the_heldout_articles(tmp_path):
    from ragsoup.tasks.squad import SQUAD_SPLIT_SEED, SQUAD_VAL_FRACTION, load_squad, split_by_article

    arts = [{"title": f"Article {i}", "paragraphs": [{"context": f"Context of article {i}. It is short.",
                                                     "qas": [{"id": str(i), "question": "Q?",
                                                              "answers": [{"text": "short", "answer_start": 0}]}]}]}
            for i in range(60)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": arts}))
    _, val = split_by_article(load_squad(path), SQUAD_VAL_FRACTION, SQUAD_SPLIT_SEED)
    assert val  # the split holds out some of 60 articles
    texts = list(corpus_texts([str(path)], 200))
    assert len(texts) == 60 - len(val)
    assert not {r["context"] for r in val} & set(texts)


def test_lm_loss_falls_when_fitting_one_batch():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    model = new_model("mamba2", MODEL, tok)
    rows = lm_batch(TaskText("needle:1", 80, tok), random.Random(0), 2, 48, "cpu")
    assert rows.shape == (2, 49)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = lm_loss(model, rows)
    assert first.item() > 5.0  # near uniform over ~264 byte tokens
    for _ in range(15):
        loss = lm_loss(model, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert lm_loss(model, rows).item() < first.item() - 1.5


def test_pretrain_writes_a_loadable_checkpoint_and_a_log(tmp_path):
    final = pretrain(_cfg(tmp_path))
    loaded = load_model(final)
    assert loaded.model.cfg.d_model == 32
    log = [json.loads(line) for line in (tmp_path / "lm" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert "heldout_loss" in log[2]["eval"] and "heldout_loss" in log[5]["eval"]
    assert log[-1]["tokens"] == 6 * 2 * 48
    meta = json.loads((final / "config.json").read_text())
    assert meta["pretrain"]["step"] == 6


def test_resumed_pretraining_matches_an_uninterrupted_run(tmp_path):
    whole = pretrain(_cfg(tmp_path / "a"))
    pretrain(_cfg(tmp_path / "b", until=3))
    resumed = pretrain(_cfg(tmp_path / "b"), resume=True)
    a, b = load_model(whole).model.state_dict(), load_model(resumed).model.state_dict()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=0)
    log = (tmp_path / "b" / "lm" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == list(range(1, 7))


def test_pretrain_max_minutes_stops_after_the_step_that_ends_past_the_budget(tmp_path):
    pretrain(_cfg(tmp_path, max_minutes=1e-9, save_every=5))
    log = [json.loads(x) for x in (tmp_path / "lm" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1] and "heldout_loss" in log[0]["eval"]  # the last step is evaluated
    assert load_model(tmp_path / "lm" / "last").meta["pretrain"]["step"] == 1


def test_pretrain_on_text_files_tokenises_once_and_resumes_from_the_shards_alone(tmp_path):
    corpus = tmp_path / "books"
    corpus.mkdir()
    rng = random.Random(0)
    words = "river stone lamp garden window harbour letter morning".split()
    for i in range(3):
        text = ". ".join(" ".join(rng.choice(words) for _ in range(8)).capitalize() for _ in range(60)) + "."
        (corpus / f"b{i}.txt").write_text(text)
    cfg = _cfg(tmp_path, text=str(corpus), passage_chars=120, steps=4, until=2, save_every=2, eval_every=2)
    pretrain(cfg)
    data = tmp_path / "lm" / "data"
    meta = json.loads((data / "data.json").read_text())
    assert meta["passages"] > 10 and meta["sources"] == [str(corpus)]
    tokens, starts = np.load(data / "shard-00000.npy"), np.load(data / "shard-00000.starts.npy")
    assert starts[0] == 0 and tokens[starts[1] - 1] == ByteTokenizer().doc_id
    # a GPU machine gets OUT (shards + checkpoint) but not the text: resuming needs only the shards
    corpus.rename(tmp_path / "gone")
    pretrain(replace(cfg, until=0), resume=True)
    log = (tmp_path / "lm" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log] == [1, 2, 3, 4]


def test_pretrain_bad_input(tmp_path):
    with pytest.raises(RagsoupError, match="not found"):
        pretrain(_cfg(tmp_path, text=str(tmp_path / "nope")))
    with pytest.raises(RagsoupError, match="nothing to resume"):
        pretrain(_cfg(tmp_path), resume=True)


def test_pretrain_cli_tiny_preset(tmp_path):
    res = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "last" / "model.safetensors").exists()
    res = CliRunner().invoke(app, ["pretrain", "--preset", "nope"])
    assert res.exit_code == 1 and "unknown preset" in res.output and "Traceback" not in res.output


def test_prepare_only_cli_writes_shards_and_no_model(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("The lamp was lit. " * 200)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["pretrain", "--text", str(corpus), "--tokenizer", "bytes", "--out", str(out),
                                   "--prepare-only"])
    assert res.exit_code == 0, res.output
    assert "tokenised" in res.output and (out / "data" / "data.json").exists() and not (out / "last").exists()
    res = CliRunner().invoke(app, ["pretrain", "--text", "tasks:needle:1", "--prepare-only", "--out", str(out)])
    assert res.exit_code == 1 and "--prepare-only" in res.output


def test_real_text_pipeline_end_to_end_on_tiny_files(tmp_path):
    """The wiki-small recipe at toy size: tokenise prose + SQuAD, pretrain, soup-finetune on SQuAD, export, eval."""
    import gzip

    rng = random.Random(0)
    words = "the river ran past a quiet mill where old stones lay under green moss and grey sky".split()
    books = tmp_path / "books.jsonl.gz"
    with gzip.open(books, "wt") as f:
        for b in range(3):
            text = ". ".join(" ".join(rng.choice(words) for _ in range(9)).capitalize() for _ in range(80)) + "."
            f.write(json.dumps({"id": b, "text": text}) + "\n")
    arts = [{"title": f"Place {a}", "paragraphs": [
        {"context": f"Place {a} lies by the river. Its mill belongs to Ona{a}x{i}. The stones are old.",
         "qas": [{"id": f"{a}-{i}", "question": f"Who owns the mill of place {a} {i}?",
                  "answers": [{"text": f"Ona{a}x{i}", "answer_start": 0}]}]} for i in range(2)]} for a in range(60)]
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": arts}))
    run = CliRunner().invoke
    lm = tmp_path / "lm"
    common = ["--out", str(lm), "--tokenizer", "bpe:320", "--seq-len", "64", "--batch-size", "2"]
    res = run(app, ["pretrain", "--preset", "wiki-small", "--text", f"{books},{squad}", *common, "--prepare-only"])
    assert res.exit_code == 0, res.output
    res = run(app, ["pretrain", "--preset", "wiki-small", "--text", f"{books},{squad}", *common, "--steps", "2",
                    "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    # the preset's model is 10.7M parameters; the test trains the preset's recipe on it for 2 steps only
    res = run(app, ["train", "--preset", "wiki-small-squad", "--init", str(lm / "last"), "--squad", str(squad),
                    "--out", str(tmp_path / "ft"), "--steps", "2", "--batch-size", "2", "--k-max", "3",
                    "--eval-every", "0"])
    assert res.exit_code == 0, res.output
    res = run(app, ["export", str(tmp_path / "ft" / "last"), str(tmp_path / "ship"), "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    assert sum(f.stat().st_size for f in (tmp_path / "ship").glob("*.safetensors")) < 0.55 * sum(
        f.stat().st_size for f in (tmp_path / "ft" / "last").glob("*.safetensors"))
    res = run(app, ["eval", "--task", "squad", "--data", str(squad), "--split", "val", "--k", "2", "--limit", "2",
                    "--model", str(tmp_path / "ship"), "--max-new-tokens", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["n"] == 2


def test_gutenberg_jsonl_text_loses_its_licence_header_and_footer(tmp_path):
    body = "It was a bright cold day in April. The clocks were striking. " * 10
    book = ("The Project Gutenberg EBook of Nothing.\nLicence words here.\n*** START OF THIS PROJECT GUTENBERG EBOOK "
            "NOTHING ***\n" + body + "\n*** END OF THIS PROJECT GUTENBERG EBOOK NOTHING ***\nMore licence words.")
    path = tmp_path / "books.jsonl"
    path.write_text(json.dumps({"title": "Nothing", "text": book}) + "\n")
    texts = list(corpus_texts([str(path)], 200))
    joined = " ".join(texts)
    assert "bright cold day" in joined and "Licence" not in joined and "licence" not in joined
    assert "Gutenberg" not in joined and all(len(t) <= 200 for t in texts)


def test_pretrain_save_every_zero_saves_only_the_last_step(tmp_path):
    pretrain(_cfg(tmp_path, steps=3, save_every=0))
    assert load_model(tmp_path / "lm" / "last").meta["pretrain"]["step"] == 3


@pytest.mark.parametrize("field, value, option", [("seq_len", 1, "--seq-len"), ("steps", 0, "--steps"),
                                                  ("lr", -1e-3, "--lr")])
def test_pretrain_out_of_range_options_are_named(tmp_path, field, value, option):
    with pytest.raises(RagsoupError, match=f"^{option} must be"):
        pretrain(_cfg(tmp_path, **{field: value}))
