"""Souping operators: hand-computed values, pool_states == soup_rows, k=1 identity, linearity, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ragsoup.errors import RagsoupError
from ragsoup.model import LayerState, Mamba2Config
from ragsoup.soup import (POOLS, WEIGHTED_POOLS, check_pool, check_weighting, pool, pool_states,
                          relevance_weights, soup_rows)
from ragsoup.store import flatten_states, segments, unflatten_states

TINY = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=8)
R5 = 1 / math.sqrt(5)
R2 = 1 / math.sqrt(2)

# Two passages, two components each (think: conv and ssm of a one-layer model).
#   component 1: a = [3, 4] (|a| = 5),  b = [-8, 6] (|b| = 10)  -> mean norm 7.5
#   component 2: c = [1, 0] (|c| = 1),  d = [0, 2]  (|d| = 2)   -> mean norm 1.5
ROWS = [[3.0, 4.0, 1.0, 0.0], [-8.0, 6.0, 0.0, 2.0]]
SEGS = [(0, 2), (2, 2)]
EXPECTED = {
    "mean": [-2.5, 5.0, 0.5, 1.0],
    "sum": [-5.0, 10.0, 1.0, 2.0],
    "max": [3.0, 6.0, 1.0, 2.0],
    # sum rescaled to the mean norm: [-5, 10] / (5 sqrt 5) * 7.5 ; [1, 2] / sqrt 5 * 1.5
    "sum-norm": [-7.5 * R5, 15.0 * R5, 1.5 * R5, 3.0 * R5],
    # mean of unit vectors, rescaled: ([.6, .8] + [-.8, .6]) / 2 * 7.5 ; ([1, 0] + [0, 1]) / 2 * 1.5
    "norm-mean": [-0.75, 5.25, 0.75, 0.75],
    # background BG: BG + (a + b - 2 BG) / sqrt 2 = BG + [-7, 6, 1, 0] / sqrt 2
    "centered": [1.0 - 7.0 * R2, 2.0 + 6.0 * R2, 1.0 * R2, 1.0],
}
BG = [1.0, 2.0, 0.0, 1.0]  # a background state for the centered soup, in ROWS' layout


def _hand_states() -> list[LayerState]:
    """ROWS as a one-layer batched state of 2 passages: conv [2, 1, 2] = comp 1, ssm [2, 1, 1, 2] = comp 2."""
    r = torch.tensor(ROWS)
    return [LayerState(r[:, :2].reshape(2, 1, 2).clone(), r[:, 2:].reshape(2, 1, 1, 2).clone())]


def _hand_background() -> list[LayerState]:
    b = torch.tensor([BG])
    return [LayerState(b[:, :2].reshape(1, 1, 2), b[:, 2:].reshape(1, 1, 1, 2))]


def _random_states(n: int, seed: int, dtype=torch.float32, cfg: Mamba2Config = TINY) -> list[LayerState]:
    g = torch.Generator().manual_seed(seed)
    return [
        LayerState(
            torch.randn(n, cfg.conv_dim, cfg.d_conv - 1, generator=g).to(dtype),
            torch.randn(n, cfg.nheads, cfg.headdim, cfg.d_state, generator=g).to(dtype),
        )
        for _ in range(cfg.n_layer)
    ]


@pytest.mark.parametrize("op", POOLS)
def test_pool_hand_computed_single_component(op):
    x = torch.tensor([[[3.0, 4.0], [-8.0, 6.0]]])  # [B=1, k=2, N=2]
    out = pool(x, op, torch.tensor(BG[:2]))
    assert out.shape == (1, 2)
    torch.testing.assert_close(out[0], torch.tensor(EXPECTED[op][:2]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", POOLS)
def test_pool_states_hand_computed_per_component(op):
    out = pool_states(_hand_states(), k=2, op=op, background=_hand_background())
    assert len(out) == 1 and out[0].conv.shape == (1, 1, 2) and out[0].ssm.shape == (1, 1, 1, 2)
    got = torch.cat([out[0].conv.flatten(), out[0].ssm.flatten()])
    torch.testing.assert_close(got, torch.tensor(EXPECTED[op]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op", POOLS)
def test_soup_rows_hand_computed_per_segment(op):
    for rows in (np.array(ROWS, dtype=np.float32), torch.tensor(ROWS)):
        got = soup_rows(rows, op, SEGS, background=torch.tensor(BG))
        assert got.dtype == torch.float32 and got.shape == (4,)
        torch.testing.assert_close(got, torch.tensor(EXPECTED[op]), rtol=1e-6, atol=1e-6)


def test_norm_ops_use_each_segment_separately():
    # normalising the whole row at once would give a different answer than per component
    rows = np.array([[3.0, 4.0, 1.0, 0.0], [-8.0, 6.0, 0.0, 3.0]], dtype=np.float32)
    for op in ("sum-norm", "norm-mean"):
        whole = soup_rows(rows, op, [(0, 4)])
        per = soup_rows(rows, op, SEGS)
        assert not torch.allclose(whole, per, rtol=1e-3, atol=1e-3)
    # component 2 alone: c = [1, 0], d = [0, 3] (mean norm 2): norm-mean -> [.5, .5] * 2
    torch.testing.assert_close(soup_rows(rows, "norm-mean", SEGS)[2:], torch.tensor([1.0, 1.0]))


def test_pool_batches_examples_independently():
    # batch-major layout: example b's passages are rows b*k .. b*k+k-1
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # B=2, k=3
    st = [LayerState(x.reshape(6, 2, 1), x.reshape(6, 1, 1, 2))]
    out = pool_states(st, k=3, op="mean")
    torch.testing.assert_close(out[0].conv.reshape(2, 2), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    out = pool_states(st, k=3, op="max")
    torch.testing.assert_close(out[0].ssm.reshape(2, 2), torch.tensor([[4.0, 5.0], [10.0, 11.0]]))


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pool_states_agrees_with_soup_rows(op, dtype):
    B, k = 3, 4
    states = _random_states(B * k, seed=7, dtype=dtype)
    bg = _random_states(1, seed=70, dtype=dtype)
    pooled = pool_states(states, k, op, bg)
    assert all(p.conv.dtype == dtype and p.ssm.dtype == dtype for p in pooled)
    assert pooled[0].conv.shape == (B, TINY.conv_dim, TINY.d_conv - 1)
    assert pooled[1].ssm.shape == (B, TINY.nheads, TINY.headdim, TINY.d_state)
    pooled_rows = flatten_states(pooled).float()
    rows = flatten_states(states)
    assert rows.shape == (B * k, TINY.state_numel())
    segs = segments(TINY)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    for b in range(B):
        block = rows[b * k : (b + 1) * k]
        bg_row = flatten_states(bg)[0].float()
        got = soup_rows(block.numpy(), op, segs, background=bg_row)  # as read from a store (numpy)
        torch.testing.assert_close(got, pooled_rows[b], **tol)
        torch.testing.assert_close(soup_rows(block, op, segs, background=bg_row), got)  # tensor input too
        # and the fp32 reference on the same (rounded) inputs
        ref = (pool(block.float().reshape(1, k, -1), op, bg_row)[0] if op in ("mean", "sum", "max", "centered")
               else None)
        if ref is not None:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", POOLS)
def test_soup_rows_does_not_modify_its_input(op):
    rows = flatten_states(_random_states(3, seed=1))
    before = rows.clone()
    bg = flatten_states(_random_states(1, seed=2))[0]
    before_bg = bg.clone()
    soup_rows(rows, op, segments(TINY), background=bg)
    assert torch.equal(bg, before_bg)
    assert torch.equal(rows, before)


@pytest.mark.parametrize("op", POOLS)
def test_soup_of_one_state_is_that_state(op):
    states = _random_states(2, seed=3)  # B=2 examples, k=1
    bg = _random_states(1, seed=30)  # the centered soup of one state is that state, whatever the background
    pooled = pool_states(states, 1, op, bg)
    for p, s in zip(pooled, states):
        torch.testing.assert_close(p.conv, s.conv, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(p.ssm, s.ssm, rtol=1e-5, atol=1e-6)
    rows = flatten_states(states)
    for b in range(2):
        got = soup_rows(rows[b : b + 1], op, segments(TINY), background=flatten_states(bg)[0])
        torch.testing.assert_close(got, rows[b], rtol=1e-5, atol=1e-6)


def test_soup_of_identical_states_mean_max_norm_ops_is_that_state():
    s = _random_states(1, seed=5)
    rep = [LayerState(t.conv.expand(4, *t.conv.shape[1:]), t.ssm.expand(4, *t.ssm.shape[1:])) for t in s]
    for op in ("mean", "max", "sum-norm", "norm-mean"):
        out = pool_states(rep, 4, op)
        for p, q in zip(out, s):
            torch.testing.assert_close(p.ssm, q.ssm, rtol=1e-5, atol=1e-6)
    out = pool_states(rep, 4, "sum")
    torch.testing.assert_close(out[0].ssm, 4 * s[0].ssm)


def _mean_linearity(a: float, b: float, seed: int, k: int) -> None:
    X = _random_states(2 * k, seed=seed)
    Y = _random_states(2 * k, seed=seed + 1000)
    mix = [LayerState(a * x.conv + b * y.conv, a * x.ssm + b * y.ssm) for x, y in zip(X, Y)]
    lhs, px, py = pool_states(mix, k, "mean"), pool_states(X, k, "mean"), pool_states(Y, k, "mean")
    for l, x, y in zip(lhs, px, py):
        torch.testing.assert_close(l.conv, a * x.conv + b * y.conv, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(l.ssm, a * x.ssm + b * y.ssm, rtol=1e-4, atol=1e-4)
    segs = segments(TINY)
    fx, fy, fm = flatten_states(X)[:k], flatten_states(Y)[:k], flatten_states(mix)[:k]
    torch.testing.assert_close(
        soup_rows(fm, "mean", segs), a * soup_rows(fx, "mean", segs) + b * soup_rows(fy, "mean", segs),
        rtol=1e-4, atol=1e-4,
    )


def test_mean_soup_is_linear_fixed():
    _mean_linearity(2.5, -0.75, seed=11, k=3)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    a=st.floats(-4, 4, allow_nan=False, allow_subnormal=False, width=32),
    b=st.floats(-4, 4, allow_nan=False, allow_subnormal=False, width=32),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 5),
)
def test_mean_soup_is_linear_property(a, b, seed, k):
    _mean_linearity(a, b, seed, k)


def test_max_soup_is_not_linear():
    # sanity check that the linearity test can fail: max(-X) != -max(X)
    X = _random_states(3, seed=2)
    neg = [LayerState(-s.conv, -s.ssm) for s in X]
    assert not torch.allclose(pool_states(neg, 3, "max")[0].ssm, -pool_states(X, 3, "max")[0].ssm)


@pytest.mark.parametrize("bad", ["avg", "MEAN", "", "concat"])
def test_unknown_pool_raises(bad):
    with pytest.raises(RagsoupError, match="unknown pooling") as ei:
        check_pool(bad)
    assert "mean" in str(ei.value)  # the message lists the valid names
    rows = np.ones((2, 4), np.float32)
    with pytest.raises(RagsoupError):
        soup_rows(rows, bad, SEGS)
    with pytest.raises(RagsoupError):
        pool(torch.ones(1, 2, 3), bad)
    with pytest.raises(RagsoupError):
        pool_states(_hand_states(), 2, bad)


@pytest.mark.parametrize("op", POOLS)
def test_soup_rows_of_zero_rows_raises(op):
    with pytest.raises(RagsoupError, match="zero"):
        soup_rows(np.zeros((0, TINY.state_numel()), np.float16), op, segments(TINY),
                  background=torch.zeros(TINY.state_numel()))


def test_souped_rows_unflatten_to_pooled_states():
    k = 3
    states = _random_states(k, seed=9)
    row = soup_rows(flatten_states(states), "norm-mean", segments(TINY))
    back = unflatten_states(row[None], TINY)
    ref = pool_states(states, k, "norm-mean")
    for p, q in zip(back, ref):
        torch.testing.assert_close(p.conv, q.conv, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.ssm, q.ssm, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", POOLS)
def test_soup_rows_with_an_index_pools_exactly_those_rows_of_a_read_only_store(op, tmp_path):
    rng = np.random.default_rng(4)
    segs = [(0, 6), (6, 10)]
    table = rng.standard_normal((12, 16)).astype(np.float16)
    np.save(tmp_path / "rows.npy", table)
    mapped = np.load(tmp_path / "rows.npy", mmap_mode="r")  # read-only, like the state store
    idx = [1, 4, 5, 9, 11]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: the mapping is not writable (soup_rows never writes)
        view = torch.from_numpy(mapped)
    bg = torch.from_numpy(rng.standard_normal(16).astype(np.float32))
    got = soup_rows(view, op, segs, index=idx, background=bg)
    want = soup_rows(table[idx], op, segs, background=bg)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.dtype == torch.float32
    with pytest.raises(RagsoupError, match="zero"):
        soup_rows(view, op, segs, index=[], background=bg)


def test_centered_soup_is_the_background_plus_sqrt_k_times_the_mean_deviation():
    k = 16
    states = _random_states(k, seed=21)
    bg = _random_states(1, seed=22)
    mean = pool_states(states, k, "mean")
    got = pool_states(states, k, "centered", bg)
    for g, m, b in zip(got, mean, bg):
        torch.testing.assert_close(g.ssm, b.ssm + 4.0 * (m.ssm - b.ssm), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.conv, b.conv + 4.0 * (m.conv - b.conv), rtol=1e-5, atol=1e-5)
    # k copies of one passage: its deviation from the background grows by sqrt(k), where the mean keeps it
    rep = [LayerState(t.conv[:1].expand(k, *t.conv.shape[1:]), t.ssm[:1].expand(k, *t.ssm.shape[1:])) for t in states]
    out = pool_states(rep, k, "centered", bg)
    torch.testing.assert_close(out[0].ssm - bg[0].ssm, 4.0 * (states[0].ssm[:1] - bg[0].ssm), rtol=1e-5, atol=1e-5)


def test_centered_soup_without_a_background_says_how_to_make_one():
    rows = flatten_states(_random_states(3, seed=4))
    for call in (lambda: soup_rows(rows, "centered", segments(TINY)),
                 lambda: pool_states(_random_states(3, seed=4), 3, "centered"),
                 lambda: pool(torch.ones(1, 2, 3), "centered")):
        with pytest.raises(RagsoupError, match="ragsoup background"):
            call()


# ---- weighted soups (relevance weights) ----

# ROWS with weights 3:1 -> mean 0.75 a + 0.25 b; centered: k_eff = 1 / (0.75^2 + 0.25^2) = 1.6
W31 = [3.0, 1.0]
WEIGHTED = {
    "mean": [0.25, 4.5, 0.75, 0.5],
    # BG + sqrt(1.6) * (weighted mean - BG)
    "centered": [1.0 + math.sqrt(1.6) * -0.75, 2.0 + math.sqrt(1.6) * 2.5, math.sqrt(1.6) * 0.75, 1.0 - math.sqrt(1.6) * 0.5],
}


@pytest.mark.parametrize("op", WEIGHTED_POOLS)
def test_weighted_soup_hand_computed(op):
    want = torch.tensor(WEIGHTED[op])
    bg = torch.tensor(BG)
    torch.testing.assert_close(soup_rows(np.array(ROWS, np.float16), op, SEGS, background=bg, weights=W31), want)
    got = pool(torch.tensor([ROWS]), op, bg, weights=torch.tensor([W31]))  # weights are normalised to sum 1
    torch.testing.assert_close(got[0], want)
    st = pool_states(_hand_states(), 2, op, _hand_background(), weights=torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(flatten_states(st)[0], want)


@pytest.mark.parametrize("op", WEIGHTED_POOLS)
def test_equal_weights_give_the_unweighted_soup_and_one_hot_weights_give_that_passage(op):
    k = 5
    states = _random_states(k, seed=31)
    bg = _random_states(1, seed=32)
    rows, bg_row = flatten_states(states), flatten_states(bg)[0]
    plain = soup_rows(rows, op, segments(TINY), background=bg_row)
    even = soup_rows(rows, op, segments(TINY), background=bg_row, weights=torch.full((k,), 0.2))
    torch.testing.assert_close(even, plain, rtol=1e-5, atol=1e-5)
    one_hot = soup_rows(rows, op, segments(TINY), background=bg_row, weights=[0, 0, 1, 0, 0])
    torch.testing.assert_close(one_hot, rows[2], rtol=1e-5, atol=1e-5)  # centered: k_eff = 1, no gain


@pytest.mark.parametrize("op", WEIGHTED_POOLS)
def test_weighted_pool_states_agrees_with_weighted_soup_rows_per_example(op):
    B, k = 3, 4
    states = _random_states(B * k, seed=33)
    bg = _random_states(1, seed=34)
    w = torch.rand(B, k, generator=torch.Generator().manual_seed(35)) + 0.01  # a different k_eff per example
    pooled = flatten_states(pool_states(states, k, op, bg, weights=w))
    rows, bg_row = flatten_states(states), flatten_states(bg)[0]
    for b in range(B):
        got = soup_rows(rows[b * k : (b + 1) * k], op, segments(TINY), background=bg_row, weights=w[b])
        torch.testing.assert_close(pooled[b], got, rtol=1e-5, atol=1e-5)


def test_weighted_soup_with_an_index_takes_the_weights_in_index_order():
    rows = flatten_states(_random_states(6, seed=36))
    idx, w = [4, 1, 3], torch.tensor([0.5, 0.3, 0.2])
    got = soup_rows(rows, "mean", segments(TINY), index=idx, weights=w)
    torch.testing.assert_close(got, 0.5 * rows[4] + 0.3 * rows[1] + 0.2 * rows[3], rtol=1e-5, atol=1e-5)


def test_relevance_weights_are_a_softmax_that_flattens_with_temperature():
    scores = np.array([[0.7, 0.5, 0.4], [0.2, 0.2, 0.2]], np.float32)
    w = relevance_weights(scores, 0.1)
    torch.testing.assert_close(w, torch.softmax(torch.tensor(scores, dtype=torch.float64) / 0.1, -1).float())
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    assert w[0, 0] > w[0, 1] > w[0, 2] and torch.allclose(w[1], torch.full((3,), 1 / 3))
    assert relevance_weights(scores[0], 100.0).max() - relevance_weights(scores[0], 100.0).min() < 0.002
    assert relevance_weights(scores[0], 0.01)[0] > 0.99
    with pytest.raises(RagsoupError, match="temperature must be positive"):
        relevance_weights(scores, 0.0)


def test_weights_are_checked():
    rows = np.array(ROWS, np.float32)
    with pytest.raises(RagsoupError, match="mean or centered"):
        soup_rows(rows, "max", SEGS, weights=W31)
    with pytest.raises(RagsoupError, match="3 weights for 2 passages"):
        soup_rows(rows, "mean", SEGS, weights=[1.0, 1.0, 1.0])
    with pytest.raises(RagsoupError, match="non-negative"):
        soup_rows(rows, "mean", SEGS, weights=[1.0, -1.0])
    with pytest.raises(RagsoupError, match="not all zero"):
        pool(torch.tensor([ROWS]), "mean", weights=torch.zeros(1, 2))
    with pytest.raises(RagsoupError, match="ragsoup background"):
        soup_rows(rows, "centered", SEGS, weights=W31)
    # the default weighting follows the pooling; an explicit retrieval weighting with max is refused
    assert check_weighting(None, "mean", 0.05) == "retrieval" and check_weighting(None, "max", 0.05) == "uniform"
    with pytest.raises(RagsoupError, match="--weights uniform"):
        check_weighting("retrieval", "max", 0.05)
    with pytest.raises(RagsoupError, match="unknown weighting"):
        check_weighting("score", "mean", 0.05)
