"""Length-sorted encode groups: every passage once, the cheapest grouping, the same states and gradients as one batch."""

import itertools
import random

import pytest
import torch

from ragsoup.encode import encode_passages, encode_rows, encode_token_batch, length_groups
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.store import flatten_states
from ragsoup.tokenizer import ByteTokenizer, passage_ids

TINY = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=8)


def _cost(groups: list[list[int]], lengths: list[int], call: int) -> int:
    return sum(call + len(g) * max(lengths[i] for i in g) for g in groups)


def _brute_force(lengths: list[int], max_size: int, call: int) -> int:
    """The cheapest cost over every way of cutting the length-sorted order into runs."""
    srt, n = sorted(lengths), len(lengths)
    best = None
    for r in range(n):
        for cuts in itertools.combinations(range(1, n), r):
            bounds = (0, *cuts, n)
            runs = [srt[a:b] for a, b in zip(bounds, bounds[1:])]
            if max_size and any(len(run) > max_size for run in runs):
                continue
            cost = sum(call + len(run) * run[-1] for run in runs)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("max_size", [0, 3])
@pytest.mark.parametrize("call", [0, 5, 40, 10**6])
def test_length_groups_is_an_optimal_partition(max_size, call):
    rng = random.Random(f"{max_size}:{call}")
    for _ in range(12):
        lengths = [rng.randrange(1, 30) for _ in range(rng.randrange(1, 9))]
        groups = length_groups(lengths, max_size, call)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # every index exactly once
        assert all(0 < len(g) <= (max_size or len(lengths)) for g in groups)
        spans = [(min(lengths[i] for i in g), max(lengths[i] for i in g)) for g in groups]
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))  # runs of the sorted order
        assert _cost(groups, lengths, call) == _brute_force(lengths, max_size, call)


def test_length_groups_extremes():
    lengths = [5, 50, 6, 51, 5]
    assert length_groups(lengths, 0, 10**6) == [[0, 4, 2, 1, 3]]  # calls dear: one group
    assert length_groups(lengths, 0, 0) == [[0, 4], [2], [1], [3]]  # calls free: one group per length
    assert length_groups(lengths, 0, 20) == [[0, 4, 2], [1, 3]]  # the short ones apart from the long ones
    assert length_groups([], 0) == []


def _model() -> Mamba2LM:
    torch.manual_seed(0)
    m = Mamba2LM(TINY)
    with torch.no_grad():  # non-trivial dynamics, so that padding mistakes would show
        for layer in m.backbone.layers:
            layer.mixer.dt_bias.normal_(0.0, 1.0)
    return m


def _seqs() -> list[list[int]]:
    gen = random.Random(3)
    return [[gen.randrange(1, 64) for _ in range(n)] for n in (3, 290, 7, 300, 2, 12, 280, 5)]


@pytest.mark.parametrize("group", [0, 3])
def test_encode_rows_equal_one_padded_batch_in_input_order(group):
    m, seqs = _model().eval(), _seqs()
    with torch.no_grad():
        one_batch = flatten_states(encode_token_batch(m, seqs, pad_id=0))
    rows = encode_rows(m, seqs, pad_id=0, group=group)
    assert len(length_groups([len(s) for s in seqs], group)) > 1  # the grouping really splits this batch
    torch.testing.assert_close(rows, one_batch, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("group", [0, 3])
def test_encode_rows_gradients_equal_one_padded_batch(group):
    seqs = _seqs()
    weights = torch.randn(len(seqs), 1, generator=torch.Generator().manual_seed(1))  # a loss that tells rows apart
    grads = []
    for grouped in (False, True):
        m = _model()
        rows = encode_rows(m, seqs, 0, group, grad=True) if grouped else flatten_states(encode_token_batch(m, seqs, 0))
        (rows * weights).pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_encode_rows_without_grad_builds_no_graph():
    rows = encode_rows(_model(), _seqs(), 0, 3, grad=False)
    assert not rows.requires_grad


def test_encode_passages_yields_every_position_once_with_its_own_state():
    tok = ByteTokenizer()
    torch.manual_seed(0)
    m = Mamba2LM(Mamba2Config(d_model=32, n_layer=2, vocab_size=264, d_state=8, headdim=16, chunk_size=8)).eval()
    texts = [("word " * n).strip() for n in (2, 60, 3, 55, 1, 58, 4)]
    out = list(encode_passages(m, tok, texts, batch_size=3, dtype=torch.float32))
    positions = [i for pos, _ in out for i in pos]
    assert sorted(positions) == list(range(len(texts))) and len(out) >= 3
    assert all(len(pos) <= 3 for pos, _ in out)
    for pos, rows in out:
        for i, row in zip(pos, rows):
            with torch.no_grad():
                alone = flatten_states(encode_token_batch(m, [passage_ids(tok, texts[i], 1024)], tok.pad_id))[0]
            torch.testing.assert_close(row, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("group", [0, 3])
def test_encode_rows_in_input_order_is_bitwise_the_consecutive_batches(group):
    m, seqs = _model().eval(), _seqs()
    size = group or len(seqs)
    with torch.no_grad():
        chunks = [flatten_states(encode_token_batch(m, seqs[i : i + size], 0)) for i in range(0, len(seqs), size)]
    assert torch.equal(encode_rows(m, seqs, 0, group, by_length=False), torch.cat(chunks))
