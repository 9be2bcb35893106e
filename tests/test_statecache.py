"""The device state cache: LRU within its budget, one copy for the misses, soups equal to the host soups.

Runs on the CPU (device "cpu"): the same code moves rows to a GPU when one is present.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ragsoup.errors import RagsoupError
from ragsoup.soup import POOLS, soup_rows
from ragsoup.statecache import DeviceStateCache

D = 24
SEGS = [(0, 8), (8, 16)]


def _rows(n: int = 20) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((n, D)).astype(np.float16))


def _cache(rows: torch.Tensor, n_rows: int) -> DeviceStateCache:
    return DeviceStateCache(rows, "cpu", budget_mb=n_rows * D * 2 / (1 << 20))


@pytest.mark.parametrize("op", POOLS)
def test_device_soup_equals_the_host_soup(op):
    rows = _rows()
    cache = _cache(rows, 8)
    for idx in ([0, 3, 5], [2, 3, 4, 9, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]):  # the last is bigger than the cache
        bg = torch.linspace(-1, 1, D)
        torch.testing.assert_close(cache.soup(idx, op, SEGS, bg), soup_rows(rows, op, SEGS, index=idx, background=bg),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["mean", "centered"])
def test_weighted_device_soup_equals_the_weighted_host_soup(op):
    rows = _rows(200)
    cache = _cache(rows, 150)
    bg = torch.linspace(-1, 1, D)
    idx = list(range(3, 173, 2))  # 85 rows: more than one 64-row block of the weighted accumulation
    w = torch.rand(len(idx), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cache.soup(idx, op, SEGS, bg, weights=w),
                               soup_rows(rows, op, SEGS, index=idx, background=bg, weights=w), rtol=1e-5, atol=1e-5)


def test_lru_eviction_keeps_the_budget_and_the_hot_rows():
    rows = _rows()
    cache = _cache(rows, 4)
    assert cache.capacity == 4
    cache.gather([0, 1, 2])
    assert (cache.hits, cache.misses) == (0, 3)
    cache.gather([0, 1])  # 0 and 1 are now the most recently used
    assert (cache.hits, cache.misses) == (2, 3)
    got = cache.gather([5, 6])  # evicts 2 (least recently used), fills the free slot
    torch.testing.assert_close(got, rows[[5, 6]])
    assert sorted(cache.where) == [0, 1, 5, 6] and len(cache.where) <= cache.capacity
    cache.gather([7, 0])  # 1 is the least recently used now
    assert sorted(cache.where) == [0, 5, 6, 7]
    assert cache.used_mb == pytest.approx(4 * D * 2 / (1 << 20))
    # a query never evicts its own rows, and every returned row is the stored one
    torch.testing.assert_close(cache.gather([9, 10, 11, 0]), rows[[9, 10, 11, 0]])


def test_bad_inputs():
    rows = _rows()
    with pytest.raises(RagsoupError, match="positive"):
        DeviceStateCache(rows, "cpu", 0)
    cache = _cache(rows, 4)
    with pytest.raises(RagsoupError, match="distinct"):
        cache.gather([1, 1])
    with pytest.raises(RagsoupError, match="zero"):
        cache.soup([], "mean", SEGS)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", ["mean", "max", "sum-norm"])
def test_gpu_cache_soups_equal_the_host_soups(op):
    rows = _rows(300)
    cache = DeviceStateCache(rows, "cuda", budget_mb=64 * D * 2 / (1 << 20))
    for idx in ([0, 3, 5], list(range(10, 60)), list(range(100, 200))):  # the last exceeds the 64-row cache
        got = cache.soup(idx, op, SEGS)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), soup_rows(rows, op, SEGS, index=idx), rtol=1e-4, atol=1e-4)
    assert cache._staging.is_pinned()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("op", ["mean", "centered"])
def test_gpu_cache_weighted_soups_equal_the_host_soups(op):
    rows = _rows(300)
    cache = DeviceStateCache(rows, "cuda", budget_mb=64 * D * 2 / (1 << 20))
    bg = torch.linspace(-1, 1, D)
    for idx in ([0, 3, 5], list(range(100, 200))):  # the second exceeds the 64-row cache
        w = torch.rand(len(idx), generator=torch.Generator().manual_seed(len(idx)))
        got = cache.soup(idx, op, SEGS, bg.cuda(), weights=w)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), soup_rows(rows, op, SEGS, index=idx, background=bg, weights=w),
                                   rtol=1e-4, atol=1e-4)
