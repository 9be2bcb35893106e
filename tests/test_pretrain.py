"""Language-model pretraining: text sources, learning, determinism/resume, file corpora, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragsoup.checkpoint import load_model
from ragsoup.cli import app
from ragsoup.errors import RagsoupError
from ragsoup.pretrain import (PretrainConfig, TaskText, TokenText, lm_batch, lm_loss, pretrain, tokenize_corpus)
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


def test_token_text_wraps_and_splits_off_the_last_passages():
    tokens = np.arange(10, dtype=np.int32)
    data = TokenText(tokens, np.array([0, 4, 7]))
    rows = {tuple(data.row(random.Random(s), 5)) for s in range(40)}
    assert rows == {(0, 1, 2, 3, 4), (4, 5, 6, 7, 8), (7, 8, 9, 0, 1)}
    train, held = data.split(0.34)
    assert train.tokens.tolist() == list(range(7)) and train.starts.tolist() == [0, 4]
    assert held.tokens.tolist() == [7, 8, 9] and held.starts.tolist() == [0]
    with pytest.raises(RagsoupError, match="no text"):
        TokenText(tokens, np.array([], dtype=np.int64))


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


def test_pretrain_on_text_files_tokenises_once_and_trains(tmp_path):
    corpus = tmp_path / "books"
    corpus.mkdir()
    rng = random.Random(0)
    words = "river stone lamp garden window harbour letter morning".split()
    for i in range(3):
        text = ". ".join(" ".join(rng.choice(words) for _ in range(8)).capitalize() for _ in range(60)) + "."
        (corpus / f"b{i}.txt").write_text(text)
    cfg = _cfg(tmp_path, text=str(corpus), passage_chars=120, steps=4, save_every=4, eval_every=4)
    pretrain(cfg)
    tokens = np.load(tmp_path / "lm" / "data" / "tokens.npy")
    starts = np.load(tmp_path / "lm" / "data" / "starts.npy")
    assert len(starts) > 10 and starts[0] == 0 and tokens[starts[1] - 1] == ByteTokenizer().doc_id
    assert tokenize_corpus(iter(["ab"]), ByteTokenizer(), tmp_path / "x").tokens.tolist() == [97, 98, 257]


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
