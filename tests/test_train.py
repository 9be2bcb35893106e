"""Soup finetuning: learning, gradient paths, activation checkpointing, resume, concat mode, schedules."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch

import ragsoup.train as T
from ragsoup.checkpoint import load_model
from ragsoup.errors import RagsoupError
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import ByteTokenizer
from ragsoup.train import TrainConfig, k_for_step, loss_on_batch, lr_at, make_batch, train

MODEL = dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        out="unused", tasks="needle:1", tokenizer="bytes", passage_chars=80, ckpt_group=2, k_min=2, k_max=3,
        steps=4, batch_size=2, lr=3e-3, warmup_steps=2, eval_every=0, save_every=2, max_tokens=128, model=MODEL,
    )
    return TrainConfig(**{**base, **kw})


def _model(seed: int = 0) -> tuple[Mamba2LM, ByteTokenizer]:
    tok = ByteTokenizer()
    torch.manual_seed(seed)
    cfg = Mamba2Config.from_dict({**MODEL, "vocab_size": -(-tok.vocab_size // 8) * 8})
    # default init on purpose: its small dt keeps the souped state alive through the ~50-token question,
    # whereas a large dt would decay it to exactly zero and cut the decoder off from the encoder
    return Mamba2LM(cfg).train(), tok


def _grads(model: Mamba2LM, cfg: TrainConfig, k: int, batch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, _ = loss_on_batch(model, ByteTokenizer(), cfg, k, batch)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# --- (a) learning -----------------------------------------------------------------------------------------------


def test_optimizer_steps_lower_the_loss_on_a_fixed_batch(fit_fixed_batch):
    cfg = _cfg()
    model, tok = _model()
    k, batch = make_batch(cfg, 0)
    losses, final = fit_fixed_batch(model, tok, cfg, k, batch)
    assert losses[0] > math.log(200)  # starts near uniform over the byte vocabulary
    assert final < losses[0] - 1.0, losses + [final]


# --- (b) gradients through the encoder -----------------------------------------------------------------------------


def test_gradients_flow_through_the_encoder_unless_frozen(monkeypatch):
    cfg = _cfg(k_min=2, k_max=2, ckpt_group=0)
    k, batch = make_batch(cfg, 1)
    model, _ = _model()

    loss_full, g_full = _grads(model, cfg, k, batch)
    loss_frozen, g_frozen = _grads(model, replace(cfg, freeze_encoder=True), k, batch)

    # reference: the same unfrozen computation with the encoder's output detached before pooling
    real_pool = T.pool_states
    seen = {}

    def detached_pool(states, k, op="mean", background=None):
        seen["requires_grad"] = any(t.requires_grad for s in states for t in s)
        return real_pool([type(s)(*(t.detach() for t in s)) for s in states], k, op, background)

    monkeypatch.setattr(T, "pool_states", detached_pool)
    loss_det, g_det = _grads(model, cfg, k, batch)
    assert seen["requires_grad"]  # unfrozen: the encoder's states are part of the graph
    monkeypatch.setattr(T, "pool_states", real_pool)

    # the forward value does not depend on freezing
    assert loss_full == pytest.approx(loss_frozen, rel=1e-6)
    assert loss_full == pytest.approx(loss_det, rel=1e-6)
    # frozen == detached: no gradient comes from the passage-encoding graph
    assert g_frozen.keys() == g_det.keys()
    for n in g_det:
        torch.testing.assert_close(g_frozen[n], g_det[n], rtol=1e-6, atol=1e-9)
    # unfrozen: the encoder pass adds gradient, to the mixer weights in particular
    # (frozen and detached agree bit for bit, so any difference here is the encoder's contribution; at init it
    # is small for the big matrices and large for the SSM dynamics, which set what the cached state holds)
    diff = {n: (g_full[n] - g_frozen[n]).norm().item() / (g_full[n].norm().item() + 1e-12) for n in g_full}
    for i in range(2):
        assert diff[f"backbone.layers.{i}.mixer.A_log"] > 1e-2, diff
        assert diff[f"backbone.layers.{i}.mixer.dt_bias"] > 1e-3, diff
        assert diff[f"backbone.layers.{i}.mixer.in_proj.weight"] > 2e-5, diff
        assert diff[f"backbone.layers.{i}.mixer.conv1d.weight"] > 2e-5, diff
    # weights that act only after the last layer's state is formed cannot get gradient from the encoder
    for n in ("backbone.norm_f.weight", "backbone.layers.1.mixer.out_proj.weight", "backbone.layers.1.mixer.D"):
        assert diff[n] == 0.0, (n, diff[n])


def test_decoder_loss_depends_on_the_pooled_state(monkeypatch):
    cfg = _cfg(k_min=2, k_max=2, ckpt_group=0)
    k, batch = make_batch(cfg, 1)
    model, tok = _model()
    real_pool, cap = T.pool_states, {}

    def spy(states, k, op="mean", background=None):
        out = real_pool(states, k, op, background)
        for s in out:
            for t in s:
                t.retain_grad()
        cap["pooled"] = out
        return out

    monkeypatch.setattr(T, "pool_states", spy)
    loss, _ = loss_on_batch(model, tok, cfg, k, batch)
    loss.backward()
    for s in cap["pooled"]:
        assert s.ssm.grad is not None and s.ssm.grad.norm() > 0
        assert s.conv.grad is not None and s.conv.grad.norm() > 0


def test_frozen_encoder_states_do_not_require_grad(monkeypatch):
    cfg = _cfg(k_min=2, k_max=2, freeze_encoder=True)
    k, batch = make_batch(cfg, 0)
    model, tok = _model()
    real_pool, seen = T.pool_states, {}

    def spy(states, k, op="mean", background=None):
        seen["requires_grad"] = any(t.requires_grad for s in states for t in s)
        return real_pool(states, k, op, background)

    monkeypatch.setattr(T, "pool_states", spy)
    loss, _ = loss_on_batch(model, tok, cfg, k, batch)
    assert seen["requires_grad"] is False
    assert loss.requires_grad  # the decoder still trains


def test_decoder_only_run_keeps_a_frozen_copy_of_the_starting_model_as_encoder(tmp_path):
    from ragsoup.checkpoint import save_checkpoint
    from ragsoup.evaluate import predict

    model, tok = _model(seed=3)
    save_checkpoint(model, tok, tmp_path / "init")
    cfg = _cfg(out=str(tmp_path / "run"), init=str(tmp_path / "init"), freeze_encoder=True, steps=2, save_every=1)
    train(cfg)
    enc = load_model(tmp_path / "run" / "encoder").model.state_dict()
    dec = load_model(tmp_path / "run" / "last").model.state_dict()
    init = load_model(tmp_path / "init").model.state_dict()
    for n in init:
        torch.testing.assert_close(enc[n], init[n], rtol=0, atol=0)  # the encoder never moves
    assert any(not torch.equal(dec[n], init[n]) for n in init)  # the decoder trains
    # resuming reloads the frozen encoder; evaluation encodes with it
    train(replace(cfg, steps=3), resume=True)
    enc_m, dec_m = load_model(tmp_path / "run" / "encoder").model, load_model(tmp_path / "run" / "last").model
    _, batch = make_batch(cfg, 0)
    seen = []
    real = enc_m.encode
    enc_m.encode = lambda *a, **kw: seen.append(1) or real(*a, **kw)
    predict(dec_m, tok, batch, max_new_tokens=4, encoder=enc_m)
    assert len(seen) == len(batch)  # every example's passages went through the frozen encoder
    with pytest.raises(RagsoupError, match="needs --init"):
        train(_cfg(out=str(tmp_path / "bad"), freeze_encoder=True))
    assert not (tmp_path / "bad").exists()


# --- (c) activation checkpointing --------------------------------------------------------------------------------


def test_activation_checkpointing_matches_plain_backward():
    cfg = _cfg(k_min=3, k_max=3)
    k, batch = make_batch(cfg, 2)
    assert k == 3 and len(batch) == 2  # 6 passages -> 3 checkpointed groups of 2
    model, _ = _model()
    loss0, g0 = _grads(model, replace(cfg, ckpt_group=0), k, batch)
    loss2, g2 = _grads(model, replace(cfg, ckpt_group=2), k, batch)
    loss4, g4 = _grads(model, replace(cfg, ckpt_group=4), k, batch)  # uneven last group
    assert loss2 == pytest.approx(loss0, rel=1e-5, abs=1e-6)
    assert loss4 == pytest.approx(loss0, rel=1e-5, abs=1e-6)
    assert g0.keys() == g2.keys() == g4.keys()
    for n in g0:
        torch.testing.assert_close(g2[n], g0[n], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g4[n], g0[n], rtol=1e-4, atol=1e-6)


# --- (d) checkpoint and resume -------------------------------------------------------------------------------------


def _log(path) -> list[dict]:
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_resume_matches_uninterrupted_run(tmp_path):
    N = 4
    # warmup_steps = N/2, so the first N/2 steps' learning rates do not depend on cfg.steps
    full = _cfg(out=str(tmp_path / "full"), steps=N, save_every=N // 2, warmup_steps=N // 2)
    last = train(full)
    assert last == tmp_path / "full" / "last"
    assert (tmp_path / "full" / "trainer.pt").exists()
    log_full = _log(tmp_path / "full")
    assert [r["step"] for r in log_full] == list(range(1, N + 1))

    part = replace(full, out=str(tmp_path / "part"), steps=N // 2)
    train(part)
    st = torch.load(tmp_path / "part" / "trainer.pt", weights_only=False)
    assert st["step"] == N // 2
    assert load_model(tmp_path / "part" / "last").meta["train"]["step"] == N // 2
    train(replace(part, steps=N), resume=True)
    log_res = _log(tmp_path / "part")
    assert [r["step"] for r in log_res] == list(range(1, N + 1))

    for a, b in zip(log_full, log_res):
        assert b["k"] == a["k"]
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-3), (a, b)
    assert log_res[-1]["loss"] == pytest.approx(log_full[-1]["loss"], abs=1e-4)
    m_full = load_model(tmp_path / "full" / "last").model.state_dict()
    m_res = load_model(tmp_path / "part" / "last").model.state_dict()
    for n in m_full:
        torch.testing.assert_close(m_res[n], m_full[n], rtol=1e-5, atol=1e-6)


def test_max_minutes_stops_with_a_checkpoint_and_resume_finishes_the_schedule(tmp_path):
    # a budget that every step overruns: the run stops after its first step, saved though save_every is 2
    cfg = _cfg(out=str(tmp_path / "t"), steps=3, save_every=2, max_minutes=1e-9)
    train(cfg)
    assert [r["step"] for r in _log(tmp_path / "t")] == [1]
    assert torch.load(tmp_path / "t" / "trainer.pt", weights_only=False)["step"] == 1
    train(replace(cfg, max_minutes=0.0), resume=True)
    assert [r["step"] for r in _log(tmp_path / "t")] == [1, 2, 3]


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(RagsoupError, match="nothing to resume"):
        train(_cfg(out=str(tmp_path / "empty")), resume=True)


@pytest.mark.parametrize(
    "kw,msg", [({"pool": "avg"}, "pooling"), ({"pool": "centered"}, "bank-size"), ({"mode": "rnn"}, "mode"),
               ({"k_min": 4, "k_max": 2}, "k-min"), ({"k_hold_loss": -1.0}, "k-hold-loss")]
)
def test_bad_config_raises(tmp_path, kw, msg):
    with pytest.raises(RagsoupError, match=msg):
        train(_cfg(out=str(tmp_path / "bad"), **kw))
    assert not (tmp_path / "bad").exists()


# --- (e) concat mode ---------------------------------------------------------------------------------------------


def test_concat_mode_loss_is_finite_and_trains():
    cfg = _cfg(mode="concat", k_min=2, k_max=2)
    k, batch = make_batch(cfg, 0)
    model, tok = _model()
    loss, n_tok = loss_on_batch(model, tok, cfg, k, batch)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    # the concatenated context is part of the decoder input
    assert n_tok > sum(len(d) for d in batch[0].docs)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.backbone.layers[0].mixer.in_proj.weight.grad.norm() > 0


def test_concat_extra_questions_read_the_encoded_concatenation_like_one_pass():
    # with extra questions, concat encodes each concatenation once and answers from its final state: for the
    # main question that is the same function (loss and gradients) as reading context + question in one pass
    model, tok = _model()
    cfg = _cfg(mode="concat", k_min=3, k_max=3, tasks="needle-distractor:1", ckpt_group=0)
    k, batch = make_batch(cfg, 0)
    bare = [replace(ex, extra=[]) for ex in batch]
    one_pass, g1 = _grads(model, cfg, k, bare)
    via_state, g2 = _grads(model, replace(cfg, extra_questions=3), k, bare)
    assert math.isclose(one_pass, via_state, rel_tol=1e-4)
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-3, atol=1e-5), name
    # and the other needles' questions add rows that change the loss
    with torch.no_grad():
        l0, _ = loss_on_batch(model, tok, cfg, k, batch)
        l3, _ = loss_on_batch(model, tok, replace(cfg, extra_questions=3), k, batch)
    assert any(ex.extra for ex in batch) and not torch.isclose(l0, l3)


# --- (f) curriculum, batches, learning-rate schedule -------------------------------------------------------------------


def test_k_for_step_bounds_and_curriculum():
    cfg = _cfg(k_min=2, k_max=16, k_ramp_steps=100)
    rng = random.Random(0)
    assert {k_for_step(cfg, rng, 0) for _ in range(50)} == {2}  # curriculum starts at k_min
    mid = [k_for_step(cfg, rng, 50) for _ in range(300)]  # bound 2 * 8 ** 0.5 ~ 5.7
    assert min(mid) >= 2 and max(mid) <= 6 and max(mid) >= 5
    end = [k_for_step(cfg, rng, 100) for _ in range(500)]
    assert min(end) == 2 and max(end) == 16
    assert all(2 <= k <= 16 for k in end)
    later = [k_for_step(cfg, rng, 10_000) for _ in range(300)]  # the ramp saturates
    assert max(later) <= 16 and max(later) >= 14
    flat = replace(cfg, k_ramp_steps=0)  # no curriculum: full range from step 0
    ks = [k_for_step(flat, rng, 0) for _ in range(500)]
    assert min(ks) == 2 and max(ks) == 16
    fixed = replace(cfg, k_min=3, k_max=3)
    assert {k_for_step(fixed, rng, s) for s in range(0, 200, 7)} == {3}


def test_k_for_step_holds_k_min_until_the_ramp_starts():
    cfg = _cfg(k_min=1, k_max=16, k_ramp_steps=100)
    assert {k_for_step(cfg, random.Random(s), 10_000, None) for s in range(200)} == {1}  # held: no ramp yet
    assert {k_for_step(cfg, random.Random(s), 700, 700) for s in range(200)} == {1}  # the ramp's first step
    # a ramp started at step 700 is the ramp from step 0, 700 steps later
    assert [k_for_step(cfg, random.Random(s), 750, 700) for s in range(200)] == \
        [k_for_step(cfg, random.Random(s), 50) for s in range(200)]
    assert max(k_for_step(cfg, random.Random(s), 800, 700) for s in range(200)) == 16
    flat = replace(cfg, k_ramp_steps=0)  # no curriculum: the full range as soon as the hold ends
    assert {k_for_step(flat, random.Random(s), 5, None) for s in range(50)} == {1}
    assert max(k_for_step(flat, random.Random(s), 5, 5) for s in range(200)) == 16


def test_hold_tasks_are_the_mix_while_k_is_held_and_tasks_after(tmp_path):
    cfg = _cfg(k_min=1, k_max=4, k_hold_loss=2.0, tasks="needle-packed:1", hold_tasks="needle:1")
    for step in range(3):
        _, held = make_batch(cfg, step, None)  # held: single needles only (one needle sentence per example)
        assert all(sum(d.count("special magic number") for d in ex.docs) == 1 and not ex.extra for ex in held)
        _, free = make_batch(cfg, step, 0)  # released: packed needles, 2-4 in one passage
        assert all(sum(d.count("special magic number") for d in ex.docs) >= 2 and ex.extra for ex in free)
    # without --hold-tasks the held steps draw from --tasks; without --k-hold-loss it is refused
    assert all(ex.extra for ex in make_batch(replace(cfg, hold_tasks=""), 1, None)[1])
    with pytest.raises(RagsoupError, match="--k-hold-loss"):
        train(replace(cfg, out=str(tmp_path / "a"), k_hold_loss=0.0))
    with pytest.raises(RagsoupError, match="--hold-tasks"):
        train(replace(cfg, out=str(tmp_path / "b"), hold_tasks="needle:1,nope:1"))


def test_ramp_hold_starts_at_the_first_window_whose_mean_loss_is_below_the_threshold():
    losses = [2.0] * 60 + [0.0] * 40  # the 50-step mean falls below 1.0 once 26 of its losses are 0 (step 86)
    hold = T.RampHold(1.0)
    started = [step for step, loss in enumerate(losses, 1) if hold.observe(step, loss)]
    assert started == [86] and hold.start == 86
    assert T.RampHold(1.0, [{"step": s, "loss": x} for s, x in enumerate(losses[:85], 1)]).start is None
    assert T.RampHold(1.0, [{"step": s, "loss": x} for s, x in enumerate(losses, 1)]).start == 86  # replayed log
    assert T.RampHold(0.0).start == 0  # off: the ramp runs from step 0
    never = T.RampHold(0.5)
    assert not any(never.observe(step, loss) for step, loss in enumerate(losses[:60], 1)) and never.start is None


def test_k_hold_loss_keeps_k_at_k_min_until_the_loss_falls_and_survives_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "HOLD_WINDOW", 3)
    base = _cfg(k_min=1, k_max=4, k_ramp_steps=0, steps=6, save_every=2)
    train(replace(base, out=str(tmp_path / "free")))
    assert max(r["k"] for r in _log(tmp_path / "free")) > 1  # without the hold k varies from the first step
    train(replace(base, out=str(tmp_path / "never"), k_hold_loss=1e-6))  # a loss never reached: k stays 1
    assert [r["k"] for r in _log(tmp_path / "never")] == [1] * 6
    assert not any("ramp_start" in r for r in _log(tmp_path / "never"))
    held = replace(base, out=str(tmp_path / "held"), k_hold_loss=100.0)  # reached by the first full window
    train(held)
    log = _log(tmp_path / "held")
    assert [r["step"] for r in log if "ramp_start" in r] == [3] and log[2]["ramp_start"] == 3
    assert [r["k"] for r in log[:3]] == [1, 1, 1] and max(r["k"] for r in log[3:]) > 1
    part = replace(held, out=str(tmp_path / "part"), until=4)  # resume rebuilds the ramp's start from the log
    train(part)
    train(replace(part, until=0), resume=True)
    assert [(r["k"], r.get("ramp_start")) for r in _log(tmp_path / "part")] == \
        [(r["k"], r.get("ramp_start")) for r in log]


def test_k_hold_extend_pauses_the_schedule_while_k_is_held_and_survives_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "HOLD_WINDOW", 3)
    base = _cfg(k_min=1, k_max=4, k_ramp_steps=0, steps=6, warmup_steps=1, save_every=2, k_hold_extend=True)
    train(replace(base, out=str(tmp_path / "never"), k_hold_loss=1e-6))  # never leaves the hold: stops at step 6
    assert [r["k"] for r in _log(tmp_path / "never")] == [1] * 6
    held = replace(base, out=str(tmp_path / "held"), k_hold_loss=100.0)  # the ramp starts at step 3
    train(held)
    log = _log(tmp_path / "held")
    # steps 2 and 3 were held past the 1-step warmup: the run is 2 steps longer and its lr stood still meanwhile
    assert len(log) == 8 and log[2]["ramp_start"] == 3
    assert [r["lr"] for r in log] == [T.lr_at(held, c) for c in (0, 1, 1, 1, 2, 3, 4, 5)]
    assert [r["sched_step"] for r in log] == [1, 1, 1, 2, 3, 4, 5, 6]  # the schedule's clock, logged
    assert log[-1]["lr"] < log[0]["lr"]
    part = replace(held, out=str(tmp_path / "part"), until=4)  # 4 schedule steps = 6 steps; resume rebuilds the rest
    train(part)
    assert len(_log(tmp_path / "part")) == 6
    train(replace(part, until=0), resume=True)
    assert [(r["k"], r["lr"]) for r in _log(tmp_path / "part")] == [(r["k"], r["lr"]) for r in log]
    with pytest.raises(RagsoupError, match="--k-hold-loss"):
        train(replace(base, out=str(tmp_path / "no-threshold")))


@pytest.fixture
def refreshes(monkeypatch) -> list[int]:
    """The steps at which the filler bank is re-encoded, in order."""
    calls: list[int] = []
    real = T.FillerBank.refresh
    monkeypatch.setattr(T.FillerBank, "refresh", lambda self, model, tok, step: (calls.append(step),
                                                                               real(self, model, tok, step)))
    return calls


def test_the_filler_bank_is_not_re_encoded_while_k_is_held(tmp_path, refreshes):
    calls = refreshes
    base = _cfg(k_min=1, k_max=6, k_ramp_steps=0, steps=3, bank_size=6, fresh_max=2, bank_refresh=1, ckpt_group=0)
    train(replace(base, out=str(tmp_path / "held"), k_hold_loss=1e-6))  # held for good: the bank is never needed
    assert calls == []
    train(replace(base, out=str(tmp_path / "free")))  # refreshed every step that reads it (bank_refresh 1)
    assert calls == [s for s in range(3) if T.k_of_step(base, s) > 2] != []
    calls.clear()
    train(replace(base, out=str(tmp_path / "centered"), k_hold_loss=1e-6, pool="centered"))  # reads the bank's mean
    assert calls == [0, 1, 2]


def test_the_filler_bank_is_re_encoded_only_for_steps_that_read_it(tmp_path, monkeypatch, refreshes):
    calls = refreshes
    cfg = _cfg(k_min=1, k_max=8, k_ramp_steps=12, steps=12, bank_size=6, fresh_max=2, bank_refresh=3, ckpt_group=0)
    reading = [s for s in range(12) if T.k_of_step(cfg, s) > 2]  # steps whose k takes rows from the bank
    assert [T.k_of_step(cfg, s) for s in range(12)] == [T.make_batch(cfg, s)[0] for s in range(12)]
    windows = sorted({s // 3 * 3 for s in reading})
    assert reading and len(windows) < 4  # the ramp leaves at least one refresh window unread
    train(replace(cfg, out=str(tmp_path / "lazy")))
    assert calls == windows
    calls.clear()
    monkeypatch.setattr(T, "bank_needed", lambda cfg, step, ramp_start: True)  # refresh whenever one is due
    train(replace(cfg, out=str(tmp_path / "eager")))
    assert calls == [0, 3, 6, 9]
    assert [r["loss"] for r in _log(tmp_path / "lazy")] == [r["loss"] for r in _log(tmp_path / "eager")]


def test_loss_on_question_adds_the_question_tokens_and_the_hold_still_watches_the_answer(tmp_path, monkeypatch):
    model, tok = _model()
    cfg = _cfg(tasks="needle:1", k_min=2, k_max=2)
    k, batch = make_batch(cfg, 0)
    plain, n_plain, answer_plain = T.batch_losses(model, tok, cfg, k, batch)
    both, n_both, answer_both = T.batch_losses(model, tok, replace(cfg, loss_on_question=True), k, batch)
    assert answer_plain == pytest.approx(plain.item(), abs=1e-6) and answer_both == pytest.approx(answer_plain, abs=1e-6)
    assert n_both == n_plain and abs(both.item() - plain.item()) > 1e-3  # the question's tokens count too
    seen: list[float] = []
    real = T.RampHold.observe
    monkeypatch.setattr(T.RampHold, "observe", lambda self, step, loss: (seen.append(loss), real(self, step, loss))[1])
    train(replace(cfg, out=str(tmp_path / "q"), loss_on_question=True, k_hold_loss=100.0, steps=3, k_min=1))
    log = _log(tmp_path / "q")
    assert seen == [r["answer_loss"] for r in log] and all(r["answer_loss"] != r["loss"] for r in log)


def test_init_seed_fixes_the_initial_weights_and_tokenizer_while_seed_draws_the_data(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr(T, "update", lambda *a, **kw: 0.0)  # no optimizer step: the saved weights are the initial ones
    base = _cfg(tokenizer="bpe:300", steps=2, save_every=0, ckpt_group=0)
    runs = {"a": dict(seed=1, init_seed=5), "b": dict(seed=2, init_seed=5), "c": dict(seed=5), "d": dict(seed=1)}
    for name, kw in runs.items():
        train(replace(base, out=str(tmp_path / name), **kw))

    def weights(name: str) -> dict:
        return load_file(str(tmp_path / name / "last" / "model.safetensors"))

    def same(x: str, y: str) -> bool:
        wx, wy = weights(x), weights(y)
        vocab = [(tmp_path / n / "last" / "tokenizer.json").read_text() for n in (x, y)]
        return vocab[0] == vocab[1] and wx.keys() == wy.keys() and all(torch.equal(wx[k], wy[k]) for k in wx)

    assert same("a", "b") and same("a", "c") and not same("a", "d")
    assert [r["loss"] for r in _log(tmp_path / "a")] != [r["loss"] for r in _log(tmp_path / "b")]  # other data
    with pytest.raises(RagsoupError, match="--init-seed"):
        train(replace(base, out=str(tmp_path / "e"), init=str(tmp_path / "a" / "last"), init_seed=3))


def test_train_command_says_when_the_hold_ends_and_rejects_a_negative_threshold(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ragsoup.cli import app

    monkeypatch.setattr(T, "HOLD_WINDOW", 2)
    common = ["train", "--preset", "tiny", "--out", str(tmp_path / "t"), "--steps", "3", "--eval-every", "0"]
    res = CliRunner().invoke(app, [*common, "--k-hold-loss", "100"])
    assert res.exit_code == 0, res.output
    assert "step 2: mean loss below --k-hold-loss 100.0: k grows from here" in res.output
    res = CliRunner().invoke(app, [*common, "--k-hold-loss", "-1"])
    assert res.exit_code == 1 and "--k-hold-loss must be at least 0" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, [*common, "--k-hold-extend"])
    assert res.exit_code == 1 and "give --k-hold-loss" in res.output and "Traceback" not in res.output


def test_make_batch_is_a_pure_function_of_seed_and_step():
    cfg = _cfg(k_min=1, k_max=4, batch_size=3)

    def key(b):
        return b[0], [(ex.docs, ex.question, ex.answer, ex.gold) for ex in b[1]]

    a = make_batch(cfg, 5)
    assert key(make_batch(cfg, 5)) == key(a)
    make_batch(cfg, 6)  # no hidden state carried between calls
    assert key(make_batch(cfg, 5)) == key(a)
    k, batch = a
    assert 1 <= k <= 4 and len(batch) == 3 and all(len(ex.docs) == k for ex in batch)
    assert key(make_batch(cfg, 6)) != key(a)
    assert key(make_batch(replace(cfg, seed=1), 5)) != key(a)


def test_lr_schedule_end_points():
    cfg = _cfg(lr=1e-3, warmup_steps=10, steps=110, min_lr_frac=0.1)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 4) == pytest.approx(5e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)  # end of warmup: peak
    assert lr_at(cfg, 10) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(cfg, 60) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway
    assert lr_at(cfg, 110) == pytest.approx(1e-4)  # ends at min_lr_frac * lr
    assert lr_at(cfg, 500) == pytest.approx(1e-4)  # and stays there
    warm = [lr_at(cfg, s) for s in range(10)]
    decay = [lr_at(cfg, s) for s in range(10, 111)]
    assert all(x < y for x, y in zip(warm, warm[1:]))
    assert all(x >= y for x, y in zip(decay, decay[1:]))
    nowarm = replace(cfg, warmup_steps=0)
    assert lr_at(nowarm, 0) == pytest.approx(1e-3) and lr_at(nowarm, 110) == pytest.approx(1e-4)


def test_extra_questions_add_decoder_rows_and_change_the_loss():
    import random as _random

    from ragsoup.model import Mamba2Config, Mamba2LM
    from ragsoup.tasks import generate_example
    from ragsoup.tokenizer import ByteTokenizer
    from ragsoup.train import TrainConfig, loss_on_batch

    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=264, d_state=8, headdim=16, chunk_size=8))
    rng = _random.Random(3)
    batch = [generate_example("needle-distractor", rng, 4, passage_chars=80) for _ in range(2)]
    base = TrainConfig(tasks="needle-distractor:1", ckpt_group=0)
    with torch.no_grad():
        l0, n0 = loss_on_batch(model, ByteTokenizer(), base, 4, batch)
        l3, n3 = loss_on_batch(model, ByteTokenizer(), TrainConfig(tasks="needle-distractor:1", ckpt_group=0, extra_questions=3), 4, batch)
    assert n3 > n0  # 2 soups x (1 + 3) questions instead of 2 x 1
    assert not torch.isclose(l0, l3)
    # --extra-min-k: the extra questions only on soups of at least that many passages
    for min_k, expect in ((4, (l3, n3)), (5, (l0, n0))):
        with torch.no_grad():
            got = loss_on_batch(model, ByteTokenizer(), replace(base, extra_questions=3, extra_min_k=min_k), 4, batch)
        assert got[1] == expect[1] and torch.isclose(got[0], expect[0])


def test_filler_bank_training_step_runs_and_matches_plain_soup_when_k_fits():
    from ragsoup.model import Mamba2Config, Mamba2LM
    from ragsoup.tokenizer import ByteTokenizer
    from ragsoup.train import FillerBank, TrainConfig, loss_on_batch, make_batch

    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=264, d_state=8, headdim=16, chunk_size=8))
    tok = ByteTokenizer()
    cfg = TrainConfig(tasks="needle:1", k_min=16, k_max=16, batch_size=2, passage_chars=80, ckpt_group=0,
                      bank_size=6, fresh_max=3)
    k, batch = make_batch(cfg, 0)
    assert k == 16 and all(len(ex.docs) == 3 for ex in batch)
    bank = FillerBank(cfg)
    bank.refresh(model, tok, 0)
    assert bank.rows.shape == (6, model.cfg.state_numel())
    sums = bank.sums(13, 2, step=0)
    assert sums.shape == (2, model.cfg.state_numel())
    loss, _ = loss_on_batch(model, tok, cfg, k, batch, bank, 0)
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    # when every passage is fresh (k <= fresh_max) the bank is not used: same loss as without it
    with torch.no_grad():
        a, _ = loss_on_batch(model, tok, cfg, 3, batch, bank, 0)
        b, _ = loss_on_batch(model, tok, cfg, 3, batch, None, 0)
    assert torch.allclose(a, b)


def test_centered_training_reads_the_bank_mean_as_background():
    from dataclasses import replace as dc_replace

    from ragsoup.model import Mamba2Config, Mamba2LM
    from ragsoup.tokenizer import ByteTokenizer
    from ragsoup.train import FillerBank, TrainConfig, loss_on_batch, make_batch

    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=264, d_state=8, headdim=16, chunk_size=8))
    tok = ByteTokenizer()
    cfg = TrainConfig(tasks="needle:1", pool="centered", k_min=16, k_max=16, batch_size=2, passage_chars=80,
                      ckpt_group=0, bank_size=6, fresh_max=3)
    bank = FillerBank(cfg)
    bank.refresh(model, tok, 0)
    torch.testing.assert_close(bank.background, bank.rows.mean(0))
    k, batch = make_batch(cfg, 0)
    loss, _ = loss_on_batch(model, tok, cfg, k, batch, bank, 0)  # 3 fresh passages + 13 from the bank
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    # one passage: the centered soup is that passage's state, so the loss is the mean pool's, whatever the background
    one = dc_replace(cfg, k_min=1, k_max=1)
    _, single = make_batch(one, 0)
    with torch.no_grad():
        a, _ = loss_on_batch(model, tok, one, 1, single, bank, 0)
        b, _ = loss_on_batch(model, tok, dc_replace(one, pool="mean"), 1, single, None, 0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_prose_bank_holds_both_kinds_and_each_example_reads_one(tmp_path):
    from ragsoup.model import Mamba2Config, Mamba2LM
    from ragsoup.tokenizer import ByteTokenizer
    from ragsoup.train import FillerBank, TrainConfig

    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"The river ran past the {w} house in the evening light." for w in
                             ["old", "red", "quiet", "tall", "narrow", "white"]) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    model = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=264, d_state=8, headdim=16, chunk_size=8))
    cfg = TrainConfig(tasks="needle:1", k_min=16, k_max=16, batch_size=2, passage_chars=80, ckpt_group=0,
                      bank_size=8, fresh_max=3, bank_prose=str(book), bank_prose_frac=0.25)
    bank = FillerBank(cfg)
    bank.refresh(model, ByteTokenizer(), 0)
    assert bank.n_prose() == 2 and bank.rows.shape == (8, model.cfg.state_numel())
    plain = FillerBank(replace(cfg, bank_prose=None))
    plain.refresh(model, ByteTokenizer(), 0)
    torch.testing.assert_close(bank.rows[:6], plain.rows[:6])  # the template part is the plain bank's first rows
    assert not torch.allclose(bank.rows[6:], plain.rows[6:])
    bank.rows = torch.eye(8)  # sums() now returns each example's draw counts per bank row
    counts = torch.cat([bank.sums(5, 64, step) for step in range(4)])  # [256, 8]
    from_prose = counts[:, 6:].sum(1)
    assert set(from_prose.tolist()) == {0.0, 5.0}  # every example reads one kind only
    assert 0.1 < (from_prose > 0).float().mean() < 0.4  # about a quarter read prose
    torch.testing.assert_close(counts.sum(1), torch.full((256,), 5.0))


def test_prose_passages_write_that_share_of_examples_into_the_prose(tmp_path):
    from ragsoup.train import TrainConfig, make_batch

    book = tmp_path / "book.txt"
    book.write_text(" ".join(f"The river ran past the {w} house in the evening light." for w in
                             ["old", "red", "quiet", "tall", "narrow", "white"]) + "\n", encoding="utf-8")
    cfg = TrainConfig(tasks="needle:1,needle-distractor:1,two-hop:1", k_min=4, k_max=4, batch_size=64,
                      passage_chars=120, bank_size=8, bank_prose=str(book), prose_passages=0.5)
    _, batch = make_batch(cfg, step=3)
    in_prose = [all("river ran past" in d for d in ex.docs) for ex in batch]
    assert 16 < sum(in_prose) < 48  # about half, and then every passage of the example
    assert all(not any("river ran past" in d for d in ex.docs) for ex, p in zip(batch, in_prose) if not p)
    for ex in batch:  # the facts are still there
        assert ex.answer in " ".join(ex.docs[g] for g in ex.gold)
    assert [ex.question for ex in make_batch(cfg, step=3)[1]] == [ex.question for ex in batch]  # deterministic
    plain = make_batch(replace(cfg, prose_passages=0.0), step=3)[1]
    assert not any("river ran past" in d for ex in plain for d in ex.docs)


def test_prose_passages_need_the_prose_file(tmp_path):
    with pytest.raises(RagsoupError, match="--bank-prose FILE"):
        train(TrainConfig(out=str(tmp_path / "a"), bank_size=8, prose_passages=0.5))
    with pytest.raises(RagsoupError, match="between 0 and 1"):
        train(TrainConfig(out=str(tmp_path / "b"), prose_passages=1.5))


def test_a_prose_bank_needs_a_bank_and_a_readable_file(tmp_path):
    with pytest.raises(RagsoupError, match="--bank-size"):
        train(TrainConfig(out=str(tmp_path / "a"), bank_prose=str(tmp_path / "x.txt")))
    with pytest.raises(RagsoupError, match="no such file"):
        train(TrainConfig(out=str(tmp_path / "b"), bank_size=8, bank_prose=str(tmp_path / "x.txt")))


def test_filler_bank_rejects_nonlinear_pools():
    from ragsoup.errors import RagsoupError
    from ragsoup.train import FillerBank, TrainConfig

    with pytest.raises(RagsoupError):
        FillerBank(TrainConfig(pool="max", bank_size=4))


# --- SQuAD as a training task ------------------------------------------------------------------------------------


def _squad(tmp_path, n_articles: int = 60):
    arts = []
    for a in range(n_articles):
        paras = []
        for i in range(2):
            ctx = (f"Article {a} paragraph {i} tells of the mill of Bram{a}x{i}. The river runs past it. "
                   f"Many people came to see the old stones there.")
            paras.append({"context": ctx, "qas": [{"id": f"{a}-{i}", "question": f"Whose mill is in article {a} {i}?",
                                                   "answers": [{"text": f"Bram{a}x{i}", "answer_start": 0}]}]})
        arts.append({"title": f"Article {a}", "paragraphs": paras})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": arts}))
    return path


def test_squad_training_examples_come_from_training_articles_and_evals_from_heldout_ones(tmp_path):
    from ragsoup.tasks.squad import SQUAD_SPLIT_SEED, SQUAD_VAL_FRACTION, load_squad, split_by_article

    path = _squad(tmp_path)
    _, val = split_by_article(load_squad(path), SQUAD_VAL_FRACTION, SQUAD_SPLIT_SEED)
    val_ctx = {r["context"] for r in val}
    assert val_ctx
    cfg = _cfg(tasks="squad:1,squad-segments:1", squad=str(path), k_min=3, k_max=3, batch_size=6, passage_chars=60)
    for step in range(5):
        k, batch = make_batch(cfg, step)
        for ex in batch:
            assert not set(ex.docs) & val_ctx  # never a held-out paragraph, not even as a distractor
            gold_text = " ".join(ex.docs[g] for g in ex.gold)
            assert ex.answer in gold_text
            if len(ex.gold) > 1:  # squad-segments: the gold paragraph cut into segments of <= 60 characters
                assert all(len(ex.docs[g]) <= 60 for g in ex.gold)
    held = T.eval_sets(replace(cfg, eval_ks="2", eval_n=4))[2]
    assert all(any(d in c for d in ex.docs for c in val_ctx) for ex in held)  # gold paragraph (or its segments)
    loss, _ = loss_on_batch(_model()[0], ByteTokenizer(), cfg, k, batch)
    assert math.isfinite(loss.item())


def test_squad_task_needs_its_file_and_unknown_tasks_are_refused(tmp_path):
    with pytest.raises(RagsoupError, match="--squad"):
        train(_cfg(out=str(tmp_path / "a"), tasks="squad:1"))
    with pytest.raises(RagsoupError, match="unknown task"):
        train(_cfg(out=str(tmp_path / "b"), tasks="needle:1,squid:1"))


def test_presets_are_valid_and_the_shipped_chain_links_stage_to_stage():
    for name, preset in T.PRESETS.items():
        TrainConfig.from_dict(dict(preset))  # every preset parses
    chain = ["default", "default-k512", "default-keys", "default-needle", "default-twohop", "default-final"]
    for prev, nxt in zip(chain, chain[1:]):
        assert T.PRESETS[nxt]["init"] == T.PRESETS[prev]["out"] + "/last", (prev, nxt)
    outs = [T.PRESETS[n]["out"] for n in chain]
    assert len(set(outs)) == len(outs)


def test_save_every_zero_saves_only_the_last_step(tmp_path, monkeypatch):
    saved, save = [], T._save
    monkeypatch.setattr(T, "_save", lambda model, tok, opt, cfg, step, out: (saved.append(step),
                                                                             save(model, tok, opt, cfg, step, out)))
    out = tmp_path / "z"
    train(_cfg(out=str(out), steps=3, save_every=0))
    assert saved == [3]
    assert torch.load(out / "trainer.pt", weights_only=False)["step"] == 3 and (out / "last").is_dir()


def test_bank_refresh_below_one_is_a_clear_error(tmp_path):
    with pytest.raises(RagsoupError, match="--bank-refresh must be at least 1 "):
        train(_cfg(out=str(tmp_path / "r"), bank_size=4, bank_refresh=0))


@pytest.mark.parametrize("field, value, option", [
    ("batch_size", 0, "--batch-size"), ("steps", 0, "--steps"), ("lr", 0.0, "--lr"),
    ("warmup_steps", -1, "--warmup-steps"), ("extra_questions", -1, "--extra-questions"),
    ("eval_every", -5, "--eval-every"),
])
def test_out_of_range_options_are_named_before_any_work(tmp_path, field, value, option):
    with pytest.raises(RagsoupError, match=f"^{option} must be"):
        train(_cfg(out=str(tmp_path / "o"), **{field: value}))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("ckpt_group", [0, 2])
def test_group_by_length_gives_the_same_loss_and_gradients(ckpt_group):
    cfg = _cfg(ckpt_group=ckpt_group, k_min=4, k_max=4, passage_chars=60, tasks="needle:1,two-hop:1")
    k, batch = make_batch(cfg, 0)
    assert len({len(d) for ex in batch for d in ex.docs}) > 1  # passages of several lengths
    plain = _grads(_model()[0], cfg, k, batch)
    grouped = _grads(_model()[0], replace(cfg, group_by_length=True), k, batch)
    assert grouped[0] == pytest.approx(plain[0], rel=1e-5)
    for name, g in plain[1].items():
        torch.testing.assert_close(grouped[1][name], g, rtol=1e-4, atol=1e-6)


def test_train_command_group_by_length_is_recorded_and_off_by_default(tmp_path):
    from typer.testing import CliRunner

    from ragsoup.cli import app

    for name, flags, expected in (("plain", [], False), ("grouped", ["--group-by-length"], True)):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["train", "--preset", "tiny", "--out", str(out), "--steps", "2",
                                       "--eval-every", "0", *flags])
        assert res.exit_code == 0, res.output
        assert json.loads((out / "train_config.json").read_text())["group_by_length"] is expected


def test_timescales_spread_redraws_only_dt_and_a_of_a_fresh_run(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setattr(T, "update", lambda *a, **kw: 0.0)  # no optimizer step: the saved weights are the initial ones
    base = _cfg(tokenizer="bpe:300", steps=1, save_every=0, ckpt_group=0)
    for name, kind in (("r", "random"), ("s", "spread"), ("s2", "spread")):
        train(replace(base, out=str(tmp_path / name), timescales=kind))
    w = {n: load_file(str(tmp_path / n / "last" / "model.safetensors")) for n in ("r", "s", "s2")}
    moved = {k for k in w["r"] if not torch.equal(w["r"][k], w["s"][k])}
    assert moved and all(k.endswith(("dt_bias", "A_log")) for k in moved)
    assert all(torch.equal(w["s"][k], w["s2"][k]) for k in w["s"])  # deterministic
    for k in (k for k in w["s"] if k.endswith("A_log")):
        assert torch.all(w["s"][k][1:] > w["s"][k][:-1])  # paired in order: -A grows with the head index
    with pytest.raises(RagsoupError, match="--timescales"):
        train(replace(base, out=str(tmp_path / "e"), init=str(tmp_path / "r" / "last"), timescales="spread"))
    with pytest.raises(RagsoupError, match="random or spread"):
        train(replace(base, out=str(tmp_path / "e"), timescales="wide"))
