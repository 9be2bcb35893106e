"""Checkpoints, tokenizers, generation and prediction on tiny models."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from ragsoup.checkpoint import fingerprint, load_model, resolve_model_path, save_checkpoint
from ragsoup.errors import RagsoupError
from ragsoup.evaluate import predict, score, soup_state
from ragsoup.generate import batch_states, concat_ids, concat_states, generate
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.soup import pool_states
from ragsoup.tasks import generate_example
from ragsoup.tokenizer import SPECIALS, ByteTokenizer, load_tokenizer, passage_ids, prompt_ids, train_bpe

TINY = dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)
TEXTS = [
    "The special magic number for blue fox is 123456.",
    "Näive café — ünïcode & emoji 🦊 survive.",
    "  leading spaces, tabs\tand\nnewlines  ",
    "",
]


def _model(tie: bool = True, vocab: int = 264, seed: int = 0) -> Mamba2LM:
    torch.manual_seed(seed)
    return Mamba2LM(Mamba2Config(vocab_size=vocab, tie_embeddings=tie, **TINY)).eval()


def _ids(n: int = 2, length: int = 19, vocab: int = 264) -> torch.Tensor:
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(3))


# --- checkpoints -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [True, False])
def test_save_load_round_trip_identical_logits(tmp_path, tie):
    m = _model(tie=tie)
    if not tie:
        with torch.no_grad():
            m.lm_head.weight.normal_(0, 0.02)  # a head distinct from the embedding
    fp = save_checkpoint(m, ByteTokenizer(), tmp_path / "ck", meta={"note": "hi"})
    loaded = load_model(tmp_path / "ck")
    assert loaded.fingerprint == fp == fingerprint(tmp_path / "ck")
    assert loaded.meta == {"note": "hi"}
    assert loaded.model.cfg == m.cfg
    assert not loaded.model.training
    assert isinstance(loaded.tokenizer, ByteTokenizer)
    ids = _ids()
    with torch.no_grad():
        a, sa = m(ids)
        b, sb = loaded.model(ids)
    assert torch.equal(a, b)
    for x, y in zip(sa, sb):
        assert torch.equal(x.ssm, y.ssm) and torch.equal(x.conv, y.conv)
    if tie:
        assert loaded.model.lm_head.weight is loaded.model.backbone.embedding.weight
    else:
        assert not torch.equal(loaded.model.lm_head.weight, loaded.model.backbone.embedding.weight)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_tied_embeddings_saved_once(tmp_path):
    save_checkpoint(_model(tie=True), ByteTokenizer(), tmp_path / "tied")
    save_checkpoint(_model(tie=False), ByteTokenizer(), tmp_path / "untied")
    tied = load_file(str(tmp_path / "tied" / "model.safetensors"))
    untied = load_file(str(tmp_path / "untied" / "model.safetensors"))
    assert "backbone.embedding.weight" in tied and "lm_head.weight" not in tied
    assert "backbone.embedding.weight" in untied and "lm_head.weight" in untied
    assert set(untied) - set(tied) == {"lm_head.weight"}
    emb = 264 * 32 * 4
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("untied") - size("tied") >= emb


def test_fingerprint_changes_when_a_weight_changes(tmp_path):
    m = _model()
    fp1 = save_checkpoint(m, ByteTokenizer(), tmp_path / "a")
    assert save_checkpoint(m, ByteTokenizer(), tmp_path / "b") == fp1  # same weights, same identity
    with torch.no_grad():
        m.backbone.layers[1].mixer.D[0] += 1e-3
    fp2 = save_checkpoint(m, ByteTokenizer(), tmp_path / "a")  # overwrite in place
    assert fp2 != fp1
    assert load_model(tmp_path / "a").fingerprint == fp2
    assert len(fp1) == 16 and int(fp1, 16) >= 0
    # and when the config changes
    conf = json.loads((tmp_path / "b" / "config.json").read_text())
    conf["model"]["norm_eps"] = 1e-6
    (tmp_path / "b" / "config.json").write_text(json.dumps(conf))
    assert fingerprint(tmp_path / "b") != fp1


def test_no_temp_files_left_behind(tmp_path):
    save_checkpoint(_model(), ByteTokenizer(), tmp_path / "ck")
    save_checkpoint(_model(seed=1), ByteTokenizer(), tmp_path / "ck")
    assert not [p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]


def test_big_checkpoints_are_sharded_and_load_back_identically(tmp_path):
    model = _model(seed=2)
    ids = _ids()
    save_checkpoint(model, ByteTokenizer(), tmp_path / "ck", max_shard_bytes=20_000)
    files = sorted(p.name for p in (tmp_path / "ck").glob("*.safetensors"))
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert all((tmp_path / "ck" / f).stat().st_size < 20_000 + 30_000 for f in files)  # one big tensor may exceed
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "ck").model(ids)[0], model(ids)[0], rtol=0, atol=0)
    # saving again unsharded replaces the directory: no stale shards survive
    save_checkpoint(model, ByteTokenizer(), tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.safetensors")) == ["model.safetensors"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bf16_checkpoint_halves_the_weights_and_loads_as_fp32(tmp_path):
    model = _model(seed=2)
    save_checkpoint(model, ByteTokenizer(), tmp_path / "a")
    save_checkpoint(model, ByteTokenizer(), tmp_path / "b", dtype=torch.bfloat16)
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("b") < 0.55 * size("a")
    loaded = load_model(tmp_path / "b").model
    assert loaded.backbone.embedding.weight.dtype == torch.float32
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=0.05, atol=0.05)


def test_missing_checkpoint_dir_raises_helpful_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(RagsoupError) as ei:
        load_model(missing)
    msg = str(ei.value)
    assert "no-such-model" in msg and "not found" in msg and "checkpoint directory" in msg
    with pytest.raises(RagsoupError, match="not found"):
        resolve_model_path(str(missing))


def test_incomplete_checkpoint_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagsoupError, match="cannot load model"):
        load_model(tmp_path / "empty")
    save_checkpoint(_model(), ByteTokenizer(), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(RagsoupError, match="cannot load model"):
        load_model(tmp_path / "ck")


def test_checkpoint_not_matching_config_raises(tmp_path):
    save_checkpoint(_model(), ByteTokenizer(), tmp_path / "ck")
    conf = json.loads((tmp_path / "ck" / "config.json").read_text())
    conf["model"]["n_layer"] = 3
    (tmp_path / "ck" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(RagsoupError, match="does not match"):
        load_model(tmp_path / "ck")


# --- tokenizers ----------------------------------------------------------------------------------------------------


def _check_specials(tok) -> None:
    ids = [tok.pad_id, tok.doc_id, tok.q_id, tok.a_id, tok.eos_id]
    assert len(set(ids)) == len(SPECIALS)
    assert all(0 <= i < tok.vocab_size for i in ids)
    for t in TEXTS:  # ordinary text never produces a special id, and specials decode to nothing
        assert not set(tok.encode(t)) & set(ids)
    assert tok.decode(ids) == ""


def test_byte_tokenizer_round_trip_and_specials(tmp_path):
    tok = ByteTokenizer()
    for t in TEXTS:
        ids = tok.encode(t)
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == t
        assert tok.decode([tok.q_id] + ids + [tok.eos_id]) == t
    _check_specials(tok)
    assert tok.vocab_size == 256 + len(SPECIALS)
    tok.save(tmp_path / "tokenizer.json")
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.json"), ByteTokenizer)


def test_bpe_tokenizer_round_trip_and_specials(tmp_path):
    rng = random.Random(0)
    corpus = [ex for _ in range(40) for ex in generate_example("needle", rng, 2, passage_chars=120).docs] + TEXTS
    tok = train_bpe(corpus, vocab_size=400)
    assert 256 + len(SPECIALS) < tok.vocab_size <= 400
    for t in TEXTS + corpus[:5] + ["unseen words: zyxwv qjkx 9081726354"]:
        assert tok.decode(tok.encode(t)) == t
    _check_specials(tok)
    assert tok.encode("7531") == [tok.encode(d)[0] for d in "7531"]  # digits one per token
    assert len(tok.encode(corpus[0])) < len(corpus[0].encode())  # it learned merges
    tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(tmp_path / "tokenizer.json")
    assert (back.pad_id, back.doc_id, back.q_id, back.a_id, back.eos_id, back.vocab_size) == (
        tok.pad_id, tok.doc_id, tok.q_id, tok.a_id, tok.eos_id, tok.vocab_size)
    assert back.encode(corpus[1]) == tok.encode(corpus[1])
    # a checkpoint carries its tokenizer
    m = _model(vocab=-(-tok.vocab_size // 8) * 8)
    save_checkpoint(m, tok, tmp_path / "ck")
    assert load_model(tmp_path / "ck").tokenizer.encode(corpus[2]) == tok.encode(corpus[2])


def test_unreadable_tokenizer_raises(tmp_path):
    with pytest.raises(RagsoupError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "missing.json")


def test_prompt_layout():
    tok = ByteTokenizer()
    assert passage_ids(tok, "abcdef", 4) == [97, 98, 99, tok.doc_id]
    assert prompt_ids(tok, "hi") == [tok.q_id, 104, 105, tok.a_id]
    assert concat_ids(tok, ["ab", "c"], 8) == [97, 98, tok.doc_id, 99, tok.doc_id]


# --- generation and prediction ---------------------------------------------------------------------------------------


def _examples(n: int = 3, k: int = 2):
    rng = random.Random(7)
    return [generate_example("needle", rng, k, passage_chars=60) for _ in range(n)]


def test_generate_returns_strings_and_is_deterministic():
    m, tok = _model(), ByteTokenizer()
    exs = _examples(2)
    states = batch_states([soup_state(m, tok, ex.docs) for ex in exs])
    qs = [ex.question for ex in exs]
    out1 = generate(m, tok, states, qs, max_new_tokens=6)
    out2 = generate(m, tok, states, qs, max_new_tokens=6)
    assert isinstance(out1, list) and len(out1) == 2 and all(isinstance(s, str) for s in out1)
    assert out1 == out2
    assert all(len(s) <= 6 for s in out1)  # at most max_new_tokens bytes, each at most one character
    # batched generation equals one-at-a-time generation (padding of the prompts is inert)
    single = [generate(m, tok, soup_state(m, tok, ex.docs), [ex.question], max_new_tokens=6)[0] for ex in exs]
    assert single == out1


def test_generate_greedy_matches_argmax_of_forward():
    m, tok = _model(), ByteTokenizer()
    ex = _examples(1)[0]
    st = soup_state(m, tok, ex.docs)
    out = generate(m, tok, st, [ex.question], max_new_tokens=4)[0]
    ids = prompt_ids(tok, ex.question)
    with torch.no_grad():
        for _ in range(4):
            logits, _ = m(torch.tensor([ids]), st)
            ids.append(int(logits[0, -1].argmax()))
    gen = ids[-4:]
    cut = gen.index(tok.eos_id) if tok.eos_id in gen else len(gen)
    assert out == tok.decode(gen[:cut]).strip()


class _PreferEos(torch.nn.Module):
    """An lm_head whose logits put <eos> far ahead of every other token (and keep the rest in their order)."""

    def __init__(self, head: torch.nn.Module, eos_id: int) -> None:
        super().__init__()
        self.head, self.eos_id = head, eos_id

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.head(h).clone()
        logits[..., self.eos_id] += 1e4
        return logits


def test_generate_never_returns_an_empty_answer_unless_asked():
    m, tok = _model(), ByteTokenizer()
    m.lm_head = _PreferEos(m.lm_head, tok.eos_id)  # a model that would always stop at once
    ex = _examples(1)[0]
    st = soup_state(m, tok, ex.docs)
    assert generate(m, tok, st, [ex.question], max_new_tokens=6, min_new_tokens=0) == [""]
    ids = prompt_ids(tok, ex.question)
    with torch.no_grad():
        for _ in range(3):  # the greedy path once <eos> is ruled out: the best token after it, three times
            logits, _ = m(torch.tensor([ids]), st)
            ids.append(int(logits[0, -1].topk(2).indices[1]))
    assert generate(m, tok, st, [ex.question], max_new_tokens=6) == [tok.decode(ids[-3:-2]).strip()]  # default 1
    assert generate(m, tok, st, [ex.question], max_new_tokens=6, min_new_tokens=3) == [tok.decode(ids[-3:]).strip()]
    with pytest.raises(RagsoupError, match="--max-new-tokens must be at least 1"):
        generate(m, tok, st, [ex.question], max_new_tokens=0)


def test_soup_state_is_the_mean_of_single_passage_states():
    m, tok = _model(), ByteTokenizer()
    docs = _examples(1, k=3)[0].docs
    souped = soup_state(m, tok, docs, "mean", batch_size=2)  # exercises batching across encode calls
    with torch.no_grad():
        singles = [m.encode(torch.tensor([passage_ids(tok, d, 1024)])) for d in docs]
    ref = pool_states(batch_states(singles), 3, "mean")
    for a, b in zip(souped, ref):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-4, atol=1e-6)
    cs = concat_states(m, tok, docs)
    assert cs[0].ssm.shape == souped[0].ssm.shape == (1, m.cfg.nheads, m.cfg.headdim, m.cfg.d_state)


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_concat_states_in_blocks_equal_one_pass(block):
    m, tok = _model(), ByteTokenizer()
    docs = _examples(1, k=4)[0].docs
    ids = torch.tensor([concat_ids(tok, docs)])
    assert ids.size(1) > 64  # several blocks for all but the last case
    with torch.no_grad():
        whole = m.encode(ids)
    for a, b in zip(concat_states(m, tok, docs, block=block), whole):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["soup", "concat"])
def test_predict_one_string_per_example(mode):
    m, tok = _model(), ByteTokenizer()
    exs = _examples(3)
    seen = []
    preds = predict(m, tok, exs, mode=mode, batch_size=2, max_new_tokens=4, on_batch=seen.append)
    assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
    assert seen == [2, 1]
    assert predict(m, tok, exs, mode=mode, batch_size=3, max_new_tokens=4) == preds
    res = score(preds, exs)
    assert res["n"] == 3 and 0 <= res["em"] <= 100 and 0 <= res["f1"] <= 100


def test_export_cli_writes_a_bf16_sharded_copy(tmp_path):
    from typer.testing import CliRunner

    from ragsoup.cli import app

    model = _model(seed=5)
    save_checkpoint(model, ByteTokenizer(), tmp_path / "src", meta={"train": {"passage_chars": 80}})
    res = CliRunner().invoke(app, ["export", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bfloat16",
                                   "--max-shard-mb", "0.02"])
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "dst").glob("*.safetensors"))
    assert len(files) > 1 and "exported" in res.output
    loaded = load_model(tmp_path / "dst")
    assert loaded.meta["train"] == {"passage_chars": 80} and loaded.meta["exported_from"]["dtype"] == "bfloat16"
    res = CliRunner().invoke(app, ["export", str(tmp_path / "src"), str(tmp_path / "x"), "--dtype", "int8"])
    assert res.exit_code == 1 and "unknown --dtype" in res.output


def test_model_label_names_shipped_models_and_keeps_machine_paths_out(tmp_path, monkeypatch):
    from ragsoup.checkpoint import SHIPPED_DIR, model_label

    assert model_label(SHIPPED_DIR / "default") == "default"
    (tmp_path / "runs" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert model_label(tmp_path / "runs" / "x") == "runs/x"
    assert model_label("runs/x") == "runs/x"
    elsewhere = tmp_path.parent / "outside-model"
    assert model_label(elsewhere) == str(elsewhere.resolve())
