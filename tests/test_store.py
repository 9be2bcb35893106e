"""State store: row layout round trips, writer/reader round trips, subset reads, corruption, atomic commit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragsoup.errors import RagsoupError
from ragsoup.model import LayerState, Mamba2Config, Mamba2LM
from ragsoup.store import StateStore, StoreWriter, flatten_states, segments, unflatten_states

TINY = Mamba2Config(d_model=32, n_layer=2, vocab_size=64, d_state=8, headdim=16, chunk_size=8)
D = TINY.state_numel()


def _rows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def _model_states(b: int = 3) -> list[LayerState]:
    torch.manual_seed(0)
    m = Mamba2LM(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (b, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return m.encode(ids)


def test_segments_cover_the_row_in_order():
    segs = segments(TINY)
    assert len(segs) == 2 * TINY.n_layer
    off = 0
    for i, (o, n) in enumerate(segs):
        assert o == off
        expect = TINY.conv_dim * (TINY.d_conv - 1) if i % 2 == 0 else TINY.nheads * TINY.headdim * TINY.d_state
        assert n == expect
        off += n
    assert off == D


def test_flatten_unflatten_round_trip_model_states():
    states = _model_states(3)
    rows = flatten_states(states)
    assert rows.shape == (3, D)
    back = unflatten_states(rows, TINY)
    assert len(back) == TINY.n_layer
    for a, b in zip(back, states):
        assert a.conv.shape == b.conv.shape and a.ssm.shape == b.ssm.shape
        assert torch.equal(a.conv, b.conv) and torch.equal(a.ssm, b.ssm)
    assert torch.equal(flatten_states(back), rows)


def test_row_layout_is_layer_conv_then_ssm_c_order():
    states = _model_states(2)
    rows = flatten_states(states)
    (oc, nc), (os_, ns) = segments(TINY)[2], segments(TINY)[3]  # layer 1
    assert torch.equal(rows[1, oc : oc + nc], states[1].conv[1].reshape(-1))
    assert torch.equal(rows[1, os_ : os_ + ns], states[1].ssm[1].reshape(-1))
    # C-order: ssm[b, h, p, n] sits at offset ((h * headdim) + p) * d_state + n
    h, p, n = 1, 3, 5
    idx = os_ + (h * TINY.headdim + p) * TINY.d_state + n
    assert rows[1, idx] == states[1].ssm[1, h, p, n]


def test_unflatten_flatten_round_trip_random_rows():
    rows = _rows(4, seed=2)
    assert torch.equal(flatten_states(unflatten_states(rows, TINY)), rows)


def _write(path, rows: torch.Tensor, dtype: str, chunks: int = 2) -> None:
    w = StoreWriter(path, rows.shape[0], rows.shape[1], dtype)
    n = rows.shape[0]
    step = -(-n // chunks)
    for s in range(0, n, step):  # in pieces, tensor and numpy inputs
        piece = rows[s : s + step]
        w.write(slice(s, s + piece.shape[0]), piece if s == 0 else piece.numpy())
    w.commit()


def test_store_round_trip_float32_exact(tmp_path):
    rows = _rows(7, seed=3)
    path = tmp_path / "states.npy"
    _write(path, rows, "float32")
    st = StateStore(path, row_numel=D, dtype="float32")
    assert len(st) == 7
    assert st.row_bytes == D * 4
    got = st.read(range(7))
    assert got.dtype == np.float32
    assert np.array_equal(got, rows.numpy())


def test_store_round_trip_float16_within_tolerance(tmp_path):
    rows = _rows(5, seed=4)
    path = tmp_path / "states.npy"
    _write(path, rows, "float16", chunks=3)
    st = StateStore(path, row_numel=D, dtype="float16")
    assert st.row_bytes == D * 2
    got = st.read([0, 1, 2, 3, 4])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), rows.numpy(), rtol=1e-3, atol=1e-3)
    assert np.array_equal(got, rows.numpy().astype(np.float16))  # exactly fp16 rounding


def test_store_round_trip_model_states(tmp_path):
    states = _model_states(3)
    path = tmp_path / "s.npy"
    _write(path, flatten_states(states), "float32", chunks=1)
    back = unflatten_states(torch.from_numpy(StateStore(path).read([2, 0])), TINY)
    assert torch.equal(back[1].ssm[0], states[1].ssm[2])
    assert torch.equal(back[0].conv[1], states[0].conv[0])


def test_read_subset_returns_exactly_those_rows(tmp_path):
    rows = _rows(20, seed=5)
    path = tmp_path / "states.npy"
    _write(path, rows, "float32")
    st = StateStore(path, D, "float32")
    for idx in ([3], [19, 0, 7], [5, 5, 2], list(range(19, -1, -2)), np.array([1, 18])):
        got = st.read(idx)
        assert got.shape == (len(idx), D)
        assert np.array_equal(got, rows.numpy()[np.asarray(idx)])
    got = st.read([4, 9])
    got[:] = 0  # a copy, not a view of the (read-only) map
    assert np.array_equal(st.read([4, 9]), rows.numpy()[[4, 9]])


def test_rows_written_out_of_order(tmp_path):
    rows = _rows(6, seed=6)
    w = StoreWriter(tmp_path / "x.npy", 6, D, "float32")
    perm = np.array([4, 1, 5, 0, 3, 2])
    w.write(perm, rows[perm])
    w.commit()
    assert np.array_equal(StateStore(tmp_path / "x.npy").read(range(6)), rows.numpy())


def test_the_writer_averages_the_rows_as_stored(tmp_path):
    rows = _rows(7, seed=7) * 3
    w = StoreWriter(tmp_path / "m.npy", 7, D, "float16")
    with pytest.raises(RagsoupError, match="no state rows"):
        w.mean()
    w.write([6, 0, 2], rows[[6, 0, 2]])  # a Tensor, out of order
    w.write(slice(3, 6), rows[3:6].numpy())  # fp32 rows are stored (and counted) as fp16
    w.write([1], rows[[1]].half())
    w.commit()
    stored = torch.from_numpy(StateStore(tmp_path / "m.npy").read(range(7))).float()
    torch.testing.assert_close(w.mean(), stored.mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w.mean(), rows.mean(0), rtol=0, atol=1e-6)  # the fp16 rounding is in it


def test_empty_store(tmp_path):
    w = StoreWriter(tmp_path / "e.npy", 0, D, "float16")
    w.commit()
    st = StateStore(tmp_path / "e.npy", D, "float16")
    assert len(st) == 0
    assert not list(tmp_path.glob(".*tmp*"))


def test_temp_file_then_atomic_commit(tmp_path):
    path = tmp_path / "states.npy"
    rows = _rows(4, seed=7)
    w = StoreWriter(path, 4, D, "float16")
    w.write(slice(0, 4), rows)
    assert not path.exists()  # nothing at the final path before commit
    assert w.tmp.exists() and w.tmp.parent == tmp_path
    with pytest.raises(RagsoupError):
        StateStore(path)
    w.commit()
    assert path.exists()
    assert not w.tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["states.npy"]
    np.testing.assert_allclose(StateStore(path).read(range(4)).astype(np.float32), rows.numpy(), rtol=1e-3, atol=1e-3)


def test_abort_removes_temp_and_leaves_old_store(tmp_path):
    path = tmp_path / "states.npy"
    old = _rows(2, seed=8)
    _write(path, old, "float32", chunks=1)
    w = StoreWriter(path, 3, D, "float32")
    w.write(slice(0, 3), _rows(3, seed=9))
    w.abort()
    assert not w.tmp.exists()
    assert np.array_equal(StateStore(path).read([0, 1]), old.numpy())


def test_missing_store_raises(tmp_path):
    with pytest.raises(RagsoupError, match="ragsoup index"):
        StateStore(tmp_path / "nope.npy")


def test_corrupt_store_raises(tmp_path):
    path = tmp_path / "states.npy"
    path.write_bytes(b"this is not a numpy file at all" * 10)
    with pytest.raises(RagsoupError, match="missing or corrupt"):
        StateStore(path)


def test_truncated_store_raises(tmp_path):
    path = tmp_path / "states.npy"
    _write(path, _rows(8, seed=10), "float16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - D])  # lose half of the last row
    with pytest.raises(RagsoupError, match="missing or corrupt"):
        StateStore(path)
    path.write_bytes(data[:40])  # header cut short
    with pytest.raises(RagsoupError):
        StateStore(path)


def test_store_not_matching_manifest_raises(tmp_path):
    path = tmp_path / "states.npy"
    _write(path, _rows(3, seed=11), "float16")
    StateStore(path, row_numel=D, dtype="float16")  # matches
    with pytest.raises(RagsoupError, match="manifest"):
        StateStore(path, row_numel=D + 1)
    with pytest.raises(RagsoupError, match="manifest"):
        StateStore(path, dtype="float32")
    np.save(tmp_path / "v.npy", np.zeros(D, np.float16))  # 1-d: not a row store
    with pytest.raises(RagsoupError, match="manifest"):
        StateStore(tmp_path / "v.npy")


def test_read_copies_exactly_the_requested_rows(tmp_path):
    import numpy as _np

    from ragsoup.store import StateStore, StoreWriter

    rows = _np.arange(40 * 7, dtype=_np.float16).reshape(40, 7)
    w = StoreWriter(tmp_path / "s.npy", 40, 7, "float16")
    w.write(slice(0, 40), rows)
    w.commit()
    store = StateStore(tmp_path / "s.npy", 7, "float16")
    for idx in ([3, 1, 39], [0], list(range(10))):
        got = store.read(idx)
        assert got.shape == (len(idx), 7)
        _np.testing.assert_array_equal(got, rows[idx])
