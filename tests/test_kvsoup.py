"""The averaged-KV-cache transformer baseline (ragsoup.kvsoup): cache semantics, souping, training, eval, checkpoints."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import ragsoup.kvsoup as K
from ragsoup.checkpoint import load_model, save_checkpoint
from ragsoup.errors import RagsoupError
from ragsoup.encode import pad_batch
from ragsoup.evaluate import predict, score, soup_state
from ragsoup.generate import _cast
from ragsoup.kvsoup import KVState, TransformerConfig, TransformerLM, batch_kv, encode_groups, pool_kv
from ragsoup.tokenizer import ByteTokenizer, prompt_ids
from ragsoup.train import TrainConfig, loss_on_batch, make_batch, train

MODEL = dict(d_model=32, n_layer=2, n_head=2, mlp_ratio=2.0)
VOCAB = -(-ByteTokenizer().vocab_size // 8) * 8


def _model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig.from_dict({**MODEL, "vocab_size": VOCAB})).eval()


def _cfg(**kw) -> TrainConfig:
    base = dict(out="unused", arch="transformer", tasks="needle:1", tokenizer="bytes", passage_chars=80, ckpt_group=2,
                k_min=2, k_max=2, steps=4, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=0, save_every=2,
                max_tokens=128, model=MODEL)
    return TrainConfig(**{**base, **kw})


def _ids(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


# --- cache semantics -------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_step_by_step_decoding_equals_full_forward():
    model = _model()
    ids = _ids(2, 12)
    full, _ = model(ids)
    states, logits = model.empty_states(2), []
    for t in range(ids.size(1)):
        lg, states = model.step(ids[:, t], states)
        logits.append(lg)
    torch.testing.assert_close(torch.stack(logits, 1), full, rtol=1e-4, atol=1e-5)
    assert states[0].k.shape == (2, 2, 12, 16) and bool(states[0].mask.all())


@torch.no_grad()
def test_hidden_from_a_kv_prefix_equals_one_forward():
    model = _model()
    ids = _ids(1, 15)
    h_full, st_full = model.hidden(ids)
    prefix = model.encode(ids[:, :9])
    h, st = model.hidden(ids[:, 9:], prefix)
    torch.testing.assert_close(h, h_full[:, 9:], rtol=1e-4, atol=1e-5)
    for a, b in zip(st, st_full):  # the extended cache is the one-pass cache
        torch.testing.assert_close(a.k, b.k, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.v, b.v, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_right_padding_is_inert_and_positions_continue_after_real_tokens():
    model = _model()
    ids = _ids(2, 10)
    st = model.encode(ids[:, :7], torch.tensor([7, 4]))  # row 1: 4 real tokens, 3 pads
    assert st[0].mask.tolist()[1] == [True] * 4 + [False] * 3
    assert float(st[0].k[1, :, 4:].abs().sum()) == 0.0 and float(st[0].v[1, :, 4:].abs().sum()) == 0.0
    h, _ = model.hidden(ids[1:, 4:], [KVState(*(t[1:] for t in s)) for s in st])
    h_ref, _ = model.hidden(ids[1:])
    torch.testing.assert_close(h, h_ref[:, 4:], rtol=1e-4, atol=1e-5)
    # generate's _cast keeps the KVState (mask included)
    h2, _ = model.hidden(ids[1:, 4:], _cast([KVState(*(t[1:] for t in s)) for s in st], torch.float32))
    torch.testing.assert_close(h2, h, rtol=0, atol=0)


# --- souping -----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_soup_of_one_passage_is_that_passage():
    model = _model()
    ids = _ids(1, 11)
    st = model.encode(ids)
    for op in ("mean", "sum", "max", "sum-norm", "norm-mean"):
        for a, b in zip(pool_kv(st, 1, op), st):
            torch.testing.assert_close(a.k, b.k, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(a.v, b.v, rtol=1e-6, atol=1e-7)
            assert torch.equal(a.mask, b.mask)
    # and a soup of k copies of one passage is that passage too
    for a, b in zip(pool_kv([KVState(*(t.repeat(3, *[1] * (t.dim() - 1)) for t in s)) for s in st], 3), st):
        torch.testing.assert_close(a.k, b.k, rtol=1e-6, atol=1e-7)


@torch.no_grad()
def test_kv_average_is_positionwise_over_all_passages_with_zero_padding():
    model = _model()
    tok = ByteTokenizer()
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]  # one example, k = 2, lengths 6 and 3
    st = encode_groups(model, seqs, tok.pad_id, 1, grad=False)  # groups of one, still padded to a common T = 6
    alone = [model.encode(torch.tensor([s])) for s in seqs]
    soup = pool_kv(st, 2)
    for layer, (s, a0, a1) in enumerate(zip(soup, *alone)):
        assert s.k.shape == (1, 2, 6, 16) and s.mask.tolist() == [[True] * 6]
        expect_k = a0.k.clone()
        expect_k[:, :, :3] += a1.k
        torch.testing.assert_close(s.k, expect_k / 2, rtol=1e-5, atol=1e-6)  # positions 3-5: (k0 + 0) / 2
        expect_v = a0.v.clone()
        expect_v[:, :, :3] += a1.v
        torch.testing.assert_close(s.v, expect_v / 2, rtol=1e-5, atol=1e-6)
    present = pool_kv(st, 2, over="present")  # alternative: divide by the passages that have the position
    torch.testing.assert_close(present[0].k[:, :, 3:], alone[0][0].k[:, :, 3:], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_batch_kv_pads_examples_to_a_common_length():
    model = _model()
    a = model.encode(_ids(1, 5))
    b = model.encode(_ids(2, 8))
    out = batch_kv([a, b])
    assert out[0].k.shape == (3, 2, 8, 16)
    assert out[0].mask.sum(-1).tolist() == [5, 8, 8]
    assert float(out[0].k[0, :, 5:].abs().sum()) == 0.0


# --- training -----------------------------------------------------------------------------------------------------------


def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(fit_fixed_batch):
    cfg = _cfg()
    model, tok = _model().train(), ByteTokenizer()
    k, batch = make_batch(cfg, 0)
    assert k == 2
    losses, final = fit_fixed_batch(model, tok, cfg, k, batch)
    assert losses[0] > math.log(200)
    assert final < losses[0] - 1.0, losses + [final]


def _grads(model, cfg, k, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = loss_on_batch(model, ByteTokenizer(), cfg, k, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_reaches_every_passage_encode_and_checkpointing_matches(monkeypatch):
    cfg = _cfg(ckpt_group=0)
    model = _model().train()
    k, batch = make_batch(cfg, 1)
    seen = {}
    real = K.encode_groups

    def spy(model, seqs, pad_id, group, grad):
        out = real(model, seqs, pad_id, group, grad)
        for s in out:
            s.k.retain_grad()
        seen["states"] = out
        return out

    monkeypatch.setattr(K, "encode_groups", spy)
    loss0, g0 = _grads(model, cfg, k, batch)
    kg = seen["states"][0].k.grad  # [B*k, H, T, hd]: every passage's cache gets gradient
    assert kg is not None and all(float(kg[i].norm()) > 0 for i in range(kg.shape[0]))
    monkeypatch.setattr(K, "encode_groups", real)
    loss1, g1 = _grads(model, replace(cfg, ckpt_group=1), k, batch)  # 4 passages -> 4 checkpointed groups
    assert loss0 == pytest.approx(loss1, rel=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-7)
    _, gf = _grads(model, replace(cfg, freeze_encoder=True), k, batch)
    assert any(not torch.allclose(gf[n], g0[n]) for n in g0)  # the encoder pass contributes gradient


def test_train_end_to_end_saves_a_transformer_checkpoint(tmp_path):
    cfg = _cfg(out=str(tmp_path / "run"), steps=2, save_every=2, eval_every=2, eval_ks="2", eval_n=2)
    final = train(cfg)
    conf = json.loads((final / "config.json").read_text())
    assert conf["format"] == "ragsoup-transformer" and conf["model"]["n_head"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and "em@2" in log[-1]["eval"]
    assert isinstance(load_model(final).model, TransformerLM)


def test_transformer_rejects_the_filler_bank_and_the_state_store(tmp_path):
    with pytest.raises(RagsoupError, match="bank"):
        train(_cfg(out=str(tmp_path / "x"), bank_size=8))
    with pytest.raises(RagsoupError, match="fixed-size state"):
        _model().cfg.state_numel()
    with pytest.raises(RagsoupError, match="arch"):
        train(_cfg(out=str(tmp_path / "y"), arch="rnn"))


# --- evaluation and checkpoints -------------------------------------------------------------------------------------


def test_predict_in_soup_and_concat_mode():
    cfg = _cfg(batch_size=3, k_min=3, k_max=3)
    _, exs = make_batch(cfg, 0)
    model, tok = _model(), ByteTokenizer()
    for mode in ("soup", "concat"):
        preds = predict(model, tok, exs, mode=mode, batch_size=2, max_new_tokens=4, max_tokens=128)
        assert len(preds) == 3 and all(isinstance(p, str) for p in preds)
        assert score(preds, exs)["n"] == 3


@torch.no_grad()
def test_batched_soups_decode_as_each_alone():
    """generate's first step (cast, prompt from the souped caches) gives each example the logits it gets alone."""
    cfg = _cfg(batch_size=3, k_min=3, k_max=3, passage_chars=120)
    _, exs = make_batch(cfg, 0)
    model, tok = _model(), ByteTokenizer()
    soups = [soup_state(model, tok, ex.docs, "mean", 128) for ex in exs]
    assert len({s[0].k.shape[2] for s in soups}) > 1  # different cache lengths get padded by batch_kv

    def first_logits(states, questions):
        ids, lengths = pad_batch([prompt_ids(tok, q) for q in questions], tok.pad_id)
        h, _ = model.hidden(ids, _cast(states, torch.float32), lengths)
        return model.lm_head(h[torch.arange(len(questions)), lengths - 1])

    together = first_logits(batch_kv(soups), [ex.question for ex in exs])
    for i, ex in enumerate(exs):
        torch.testing.assert_close(together[i : i + 1], first_logits(soups[i], [ex.question]), rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    model, tok = _model(3), ByteTokenizer()
    fp = save_checkpoint(model, tok, tmp_path / "ck", meta={"train": {"passage_chars": 80}})
    loaded = load_model(tmp_path / "ck")
    assert isinstance(loaded.model, TransformerLM) and loaded.fingerprint == fp
    assert loaded.model.cfg == model.cfg and loaded.meta["train"]["passage_chars"] == 80
    assert loaded.model.lm_head.weight is loaded.model.backbone.embedding.weight
    ids = _ids(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], model(ids)[0], rtol=0, atol=0)
