"""The background state and the centered soup: its value, its file, and the CLI path that makes and uses it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from ragsoup.background import (background_passages, compute_background, load_background, model_background,
                                save_background)
from ragsoup.checkpoint import BACKGROUND_FILE, fingerprint, load_model
from ragsoup.cli import app
from ragsoup.encode import encode_token_batch
from ragsoup.errors import RagsoupError
from ragsoup.store import flatten_states
from ragsoup.tokenizer import passage_ids

TEXTS = ["The harbour was quiet before dawn and the boats lay still.",
         "Bees carry pollen between the flowers of the orchard all summer.",
         "A lamp in the window told the travellers that the inn was open.",
         "Snow covered the mountain pass for most of the long winter."]


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Whitespace-normalised text (rich wraps long lines at the console width)."""
    return "".join(text.split())


def one_error_line(r) -> str:
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_background_is_the_mean_state_of_the_passages_each_encoded_alone(tiny_model):
    loaded = load_model(tiny_model)
    model, tok = loaded.model, loaded.tokenizer
    got = compute_background(model, tok, TEXTS, batch_size=3)  # two batches, padded differently
    with torch.inference_mode():
        alone = [flatten_states(encode_token_batch(model, [passage_ids(tok, t, 1024)], tok.pad_id))[0] for t in TEXTS]
    assert got.shape == (model.cfg.state_numel(),) and got.dtype == torch.float32
    torch.testing.assert_close(got, torch.stack(alone).mean(0), rtol=1e-4, atol=1e-5)


def test_background_passages_are_deterministic_and_the_right_length():
    a, b = background_passages("template", 5, seed=3), background_passages("template", 5, seed=3)
    assert a == b and len(a) == 5 and all(150 <= len(p) <= 260 for p in a)
    assert background_passages("template", 5, seed=4) != a
    with pytest.raises(RagsoupError, match="at least 1"):
        background_passages("template", 0)


def test_background_file_round_trip_leaves_the_model_and_its_fingerprint_alone(tiny_model, tmp_path):
    model_dir = shutil.copytree(tiny_model, tmp_path / "m")
    before = fingerprint(model_dir)
    loaded = load_model(model_dir)
    assert load_background(model_dir) is None and model_background(loaded) is None
    row = torch.randn(loaded.model.cfg.state_numel())
    path = save_background(model_dir, row, {"text": "template"})
    assert path.name == BACKGROUND_FILE
    torch.testing.assert_close(load_background(model_dir, row.numel()), row)
    assert fingerprint(model_dir) == before  # indexes built before stay valid
    again = load_model(model_dir)  # the weights loader does not take it for a weight shard
    states = model_background(again)
    assert states is not None and len(states) == again.model.cfg.n_layer
    torch.testing.assert_close(flatten_states(states)[0], row)
    with pytest.raises(RagsoupError, match="another model"):
        load_background(model_dir, row.numel() + 1)
    (model_dir / BACKGROUND_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RagsoupError, match="recreate it"):
        load_background(model_dir)


def _index(tmp_path, model_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, t in enumerate(TEXTS):
        (corpus / f"{i}.txt").write_text(t)
    idx = tmp_path / "idx"
    r = run("index", corpus, "--out", idx, "--model", model_dir, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    return idx


def test_centered_pool_through_the_cli_needs_then_uses_the_model_background(tiny_model, tmp_path):
    model_dir = shutil.copytree(tiny_model, tmp_path / "m")
    idx = _index(tmp_path, model_dir)
    ask = ("ask", "Where were the boats?", "--index", idx, "--k", "3", "--device", "cpu", "--max-new-tokens", "3",
           "--pool", "centered", "--json")
    line = flat(one_error_line(run(*ask)))
    assert flat(f"ragsoup background {model_dir}") in line and "--backgroundcorpus" in line  # names both fixes
    ev = ("eval", "--task", "needle", "--k", "3", "--limit", "2", "--pool", "centered", "--model", model_dir,
          "--max-new-tokens", "3", "--json")
    assert "ragsoup background" in one_error_line(run(*ev))
    r = run(*ev, "--background-text", "template")  # a background computed on the spot instead of the model's file
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 2 and not (model_dir / BACKGROUND_FILE).exists()
    mean = [("mean" if a == "centered" else a) for a in ev]
    assert "--pool centered" in one_error_line(run(*mean, "--background-text", "template"))

    r = run("background", model_dir, "--passages", "6", "--passage-chars", "60", "--json")
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert made["passages"] == 6 and (model_dir / BACKGROUND_FILE).is_file()

    r = run(*ask)
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout)
    assert obj["pool"] == "centered" and obj["k"] == 3 and len(obj["passages"]) == 3 and obj["background"] == "model"
    r = run(*ev)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["n"] == 2


def test_an_index_stores_its_corpus_background_and_centered_asks_read_it(tiny_model, tmp_path):
    from ragsoup.ask import Engine
    from ragsoup.indexdir import read_manifest
    from ragsoup.store import StateStore

    model_dir = shutil.copytree(tiny_model, tmp_path / "m")
    idx = _index(tmp_path, model_dir)
    m = read_manifest(idx)
    rows = StateStore(idx / m.data_dir / "states.npy", m.state_numel, m.state_dtype).view()
    corpus_row = load_background(idx / m.data_dir, m.state_numel)
    assert rows.shape[0] == len(TEXTS)
    torch.testing.assert_close(corpus_row, rows.float().mean(0))  # the mean of the stored (fp16) rows

    assert Engine(idx, device="cpu").background_source == "none"  # the default, the model's: it has none yet
    save_background(model_dir, torch.zeros(m.state_numel), {"text": "template"})
    corpus, model = Engine(idx, device="cpu", background="corpus"), Engine(idx, device="cpu")
    assert corpus.background_source == "corpus" and model.background_source == "model"
    torch.testing.assert_close(corpus.background, corpus_row)
    assert model.background.abs().sum() == 0
    # the soup of every passage around the corpus background is that background, whatever k
    from ragsoup.soup import soup_rows
    from ragsoup.store import segments

    all_rows = list(range(len(TEXTS)))
    souped = soup_rows(rows, "centered", segments(corpus.loaded.model.cfg), index=all_rows,
                       background=corpus.background)
    torch.testing.assert_close(souped, corpus_row, rtol=1e-4, atol=1e-4)
    r = run("ask", "Where were the boats?", "--index", idx, "--k", "2", "--device", "cpu", "--max-new-tokens", "3",
            "--pool", "centered", "--background", "corpus", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["background"] == "corpus"

    # an incremental re-index (one passage more, one fewer; the rest copied) averages the rows it now holds
    corpus = tmp_path / "corpus"
    (corpus / "0.txt").unlink()
    (corpus / "9.txt").write_text("The miller counted his sacks of flour twice before the market opened.")
    r = run("index", corpus, "--out", idx, "--model", model_dir, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert (json.loads(r.stdout)["kept"], json.loads(r.stdout)["added"]) == (len(TEXTS) - 1, 1)
    m = read_manifest(idx)
    rows = StateStore(idx / m.data_dir / "states.npy", m.state_numel, m.state_dtype).view()
    torch.testing.assert_close(load_background(idx / m.data_dir, m.state_numel), rows.float().mean(0))

    (idx / m.data_dir / BACKGROUND_FILE).unlink()  # an index built before corpus backgrounds
    with pytest.raises(RagsoupError, match="rebuild the index"):
        Engine(idx, device="cpu", background="corpus")
    with pytest.raises(RagsoupError, match="model or corpus"):
        Engine(idx, device="cpu", background="index")


def test_background_cli_errors_are_one_line(tmp_path):
    assert "not found" in one_error_line(run("background", tmp_path / "missing", "--passages", "2"))
    assert "at least 1" in one_error_line(run("background", "default", "--passages", "0"))


def test_the_kv_cache_baseline_has_no_background():
    from ragsoup.kvsoup import TransformerConfig, TransformerLM
    from ragsoup.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    cfg = TransformerConfig.from_dict({"d_model": 32, "n_layer": 1, "n_head": 2, "vocab_size": -(-tok.vocab_size // 8) * 8})
    with pytest.raises(RagsoupError, match="Mamba2"):
        compute_background(TransformerLM(cfg).eval(), tok, TEXTS[:1])


def test_export_carries_the_background_with_the_weights(tiny_model, tmp_path):
    src = shutil.copytree(tiny_model, tmp_path / "src")
    assert run("export", src, tmp_path / "plain").exit_code == 0
    assert not (tmp_path / "plain" / BACKGROUND_FILE).exists()  # none to carry
    row = torch.randn(load_model(src).model.cfg.state_numel())
    save_background(src, row, {"text": "template"})
    r = run("export", src, tmp_path / "dst", "--dtype", "bfloat16")
    assert r.exit_code == 0, r.output
    torch.testing.assert_close(load_background(tmp_path / "dst", row.numel()), row)  # fp32, whatever the weights
    assert model_background(load_model(tmp_path / "dst")) is not None
