"""Mamba2 reference: the chunked scan equals the recurrence, state carries exactly, padding is inert."""

from dataclasses import replace

import pytest
import torch

from ragsoup import ssd
from ragsoup.model import Mamba2Config, Mamba2LM

TINY = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=8)


def _model(cfg: Mamba2Config = TINY, seed: int = 0) -> Mamba2LM:
    torch.manual_seed(seed)
    m = Mamba2LM(cfg).eval()
    with torch.no_grad():  # random, non-trivial dynamics (default dt is tiny)
        for layer in m.backbone.layers:
            layer.mixer.dt_bias.normal_(0.0, 1.0)
    return m


def _scan_inputs(b=2, l=37, h=4, p=8, n=6, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(b, l, h, generator=gen, dtype=torch.float64))
    A = -torch.rand(h, generator=gen, dtype=torch.float64) * 2
    B = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    s0 = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    return x, dt, A, B, C, s0


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("length", [37, 1])  # 37 < 64: a prompt shorter than one chunk
def test_chunked_scan_equals_recurrence(chunk, with_init, length):
    x, dt, A, B, C, s0 = _scan_inputs(l=length)
    init = s0 if with_init else None
    y1, s1 = ssd.ssd_chunked(x, dt, A, B, C, chunk, init)
    y2, s2 = ssd.ssd_recurrent(x, dt, A, B, C, init)
    torch.testing.assert_close(y1, y2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s1, s2, rtol=1e-9, atol=1e-9)


def test_zero_dt_leaves_state_untouched():
    x, dt, A, B, C, s0 = _scan_inputs()
    dt[:, 20:] = 0
    _, s_full = ssd.ssd_chunked(x, dt, A, B, C, 8, s0)
    _, s_cut = ssd.ssd_chunked(x[:, :20], dt[:, :20], A, B[:, :20], C[:, :20], 8, s0)
    torch.testing.assert_close(s_full, s_cut)


def test_model_two_pieces_equal_whole():
    m = _model()
    ids = torch.randint(0, TINY.vocab_size, (3, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_whole, st_whole = m(ids)
        logits_a, st_a = m(ids[:, :13])
        logits_b, st_b = m(ids[:, 13:], st_a)
    torch.testing.assert_close(torch.cat([logits_a, logits_b], 1), logits_whole, rtol=1e-4, atol=1e-4)
    for a, b in zip(st_b, st_whole):
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d_conv", [4, 8])
def test_step_equals_forward(d_conv):
    m = _model(replace(TINY, d_conv=d_conv))  # 8: a widened conv (benchmarks/widen_conv.py)
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits_seq, st_seq = m(ids[:, :7])
        st = st_seq
        stepped = []
        for t in range(7, 12):
            lg, st = m.step(ids[:, t], st)
            stepped.append(lg)
        logits_full, st_full = m(ids)
    torch.testing.assert_close(torch.stack(stepped, 1), logits_full[:, 7:], rtol=1e-4, atol=1e-4)
    for a, b in zip(st, st_full):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-5, atol=1e-5)


def test_step_from_empty_states_equals_forward():
    m = _model()
    ids = torch.randint(0, TINY.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        st = m.empty_states(2)
        out = []
        for t in range(6):
            lg, st = m.step(ids[:, t], st)
            out.append(lg)
        full, _ = m(ids)
    torch.testing.assert_close(torch.stack(out, 1), full, rtol=1e-4, atol=1e-4)


def test_right_padding_gives_each_sequence_its_own_final_state():
    m = _model()
    gen = torch.Generator().manual_seed(4)
    seqs = [torch.randint(0, TINY.vocab_size, (n,), generator=gen) for n in (2, 9, 17)]
    L = max(len(s) for s in seqs)
    batch = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    lengths = torch.tensor([len(s) for s in seqs])
    with torch.no_grad():
        padded_states = m.encode(batch, lengths)
        for i, s in enumerate(seqs):
            alone = m.encode(s[None])
            for a, b in zip(padded_states, alone):
                torch.testing.assert_close(a.conv[i : i + 1], b.conv, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(a.ssm[i : i + 1], b.ssm, rtol=1e-4, atol=1e-4)


def test_state_shapes_and_numel():
    m = _model()
    st = m.encode(torch.zeros(2, 5, dtype=torch.long))
    c = TINY
    assert len(st) == c.n_layer
    assert st[0].conv.shape == (2, c.conv_dim, c.d_conv - 1)
    assert st[0].ssm.shape == (2, c.nheads, c.headdim, c.d_state)
    assert sum(s.conv[0].numel() + s.ssm[0].numel() for s in st) == c.state_numel()


def test_parameter_names_follow_mamba_ssm_layout():
    names = set(_model().state_dict())
    for n in ["backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight",
              "backbone.layers.0.norm.weight", "backbone.layers.0.mixer.in_proj.weight",
              "backbone.layers.0.mixer.conv1d.weight", "backbone.layers.0.mixer.conv1d.bias",
              "backbone.layers.0.mixer.dt_bias", "backbone.layers.0.mixer.A_log",
              "backbone.layers.0.mixer.D", "backbone.layers.0.mixer.norm.weight",
              "backbone.layers.0.mixer.out_proj.weight"]:
        assert n in names, n


def test_spread_timescales_gives_every_layer_one_head_per_stratum_paired_in_order():
    from ragsoup.model import A_RANGE, DT_RANGE

    cfg = replace(TINY, d_model=64, n_layer=3)  # 8 heads per layer
    h = cfg.nheads
    torch.manual_seed(0)
    m = Mamba2LM(cfg)
    random_longest = []
    for layer in m.backbone.layers:
        dt = torch.nn.functional.softplus(layer.mixer.dt_bias)
        random_longest.append((1 / (dt * torch.exp(layer.mixer.A_log))).max().item())
    m.spread_timescales(torch.Generator().manual_seed(1))
    again = Mamba2LM(cfg)
    again.spread_timescales(torch.Generator().manual_seed(1))
    lo, hi = (torch.log(torch.tensor(r)) for r in DT_RANGE)
    for layer, twin in zip(m.backbone.layers, again.backbone.layers):
        dt = torch.nn.functional.softplus(layer.mixer.dt_bias.detach())
        A = torch.exp(layer.mixer.A_log.detach())
        q_dt = (torch.log(dt) - lo) / (hi - lo)  # quantile of dt in its log-uniform range
        q_a = (A - A_RANGE[0]) / (A_RANGE[1] - A_RANGE[0])
        strata = torch.arange(h)
        assert torch.equal((q_dt * h + 1e-4).floor().long().clamp(0, h - 1), strata)
        assert torch.equal((q_a * h + 1e-4).floor().long().clamp(0, h - 1), strata)
        assert (1 / (dt[0] * A[0])).item() >= 195.0  # head 0: dt <= 1e-3 * 100**(1/8), -A <= 1 + 15/8
        assert torch.equal(layer.mixer.dt_bias, twin.mixer.dt_bias) and torch.equal(layer.mixer.A_log, twin.mixer.A_log)
    assert min(random_longest) < 195.0  # the independent draws left some layer without such a head
