"""A device-resident cache of hot state rows, and souping on the device.

On a GPU the k rows of a query come from this cache when they are hot; the misses are gathered from the
memory-mapped store into one (pinned) host buffer and moved with a single host-to-device copy, then stay
cached until the least recently used rows are evicted to keep within ``budget_mb``. Pooling runs on the device
with an fp32 accumulation. On a CPU the engine soups straight from the memory map instead (``soup.soup_rows``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from ragsoup.errors import RagsoupError
from ragsoup.soup import centre, check_pool, effective_k, normalise_weights, soup_rows


class DeviceStateCache:
    """Up to ``budget_mb`` of state rows on ``device`` (least recently used evicted), and their soups."""

    def __init__(self, rows: Tensor, device: str | torch.device, budget_mb: float) -> None:
        if budget_mb <= 0:
            raise RagsoupError(f"--cache-mb must be positive (got {budget_mb})")
        self.rows = rows  # [N, D] host rows (the memory-mapped store's view)
        self.device = torch.device(device)
        row_bytes = rows.shape[1] * rows.element_size()
        self.capacity = max(1, min(rows.shape[0], int(budget_mb * (1 << 20)) // row_bytes))
        self.slots = torch.empty(self.capacity, rows.shape[1], dtype=rows.dtype, device=self.device)
        self.where: OrderedDict[int, int] = OrderedDict()  # row -> slot, least recently used first
        self.free = list(range(self.capacity - 1, -1, -1))
        self.hits = self.misses = 0
        self._staging: Tensor | None = None

    def _stage(self, n: int) -> Tensor:
        """A reused host buffer for n rows, page-locked on a GPU machine (faster host-to-device copies)."""
        if self._staging is None or self._staging.shape[0] < n:
            pin = self.device.type == "cuda"
            self._staging = torch.empty(max(n, 16), self.rows.shape[1], dtype=self.rows.dtype, pin_memory=pin)
        return self._staging[:n]

    def gather(self, idx: Sequence[int]) -> Tensor:
        """The rows ``idx`` [k, D] on the device: hits from the cache, misses in one host-to-device copy."""
        idx = [int(i) for i in idx]
        if len(set(idx)) != len(idx):
            raise RagsoupError("a soup's passages must be distinct rows")
        if len(idx) > self.capacity:  # bigger than the whole cache: one copy, nothing kept
            host = self._stage(len(idx))
            torch.index_select(self.rows, 0, torch.tensor(idx), out=host)
            self.misses += len(idx)
            return host.to(self.device, copy=True)  # synchronous: the staging buffer is reused by the next call
        missing = [i for i in idx if i not in self.where]
        for i in idx:
            if i in self.where:
                self.where.move_to_end(i)
        self.hits += len(idx) - len(missing)
        self.misses += len(missing)
        if missing:
            keep = set(idx)
            slots = []
            for _ in missing:
                if not self.free:  # evict the least recently used row that this query does not need
                    victim = next(r for r in self.where if r not in keep)
                    self.free.append(self.where.pop(victim))
                slots.append(self.free.pop())
            host = self._stage(len(missing))
            torch.index_select(self.rows, 0, torch.tensor(missing), out=host)
            self.slots[torch.tensor(slots, device=self.device)] = host.to(self.device)  # one host-to-device copy
            for i, s in zip(missing, slots):
                self.where[i] = s
        return self.slots.index_select(0, torch.tensor([self.where[i] for i in idx], device=self.device))

    def soup(self, idx: Sequence[int], op: str, segments: list[tuple[int, int]],
             background: Tensor | None = None, weights: Tensor | Sequence[float] | None = None) -> Tensor:
        """One fp32 row [D] on the device: the rows ``idx`` pooled with ``op``.

        ``background``: for centered; ``weights`` [k], in ``idx``'s order: a weighted mean or centered soup.
        """
        check_pool(op)
        if len(idx) == 0:
            raise RagsoupError("cannot soup zero passages")
        rows = self.gather(idx)
        if weights is not None:
            w = normalise_weights(weights, len(idx), op).to(self.device)
            acc = torch.zeros(rows.shape[1], dtype=torch.float32, device=self.device)
            for i in range(0, len(idx), 64):  # fp32 accumulation, 64 rows' temporary at a time
                acc.addmv_(rows[i : i + 64].t().float(), w[i : i + 64])
            return acc if op == "mean" else centre(acc, background, float(effective_k(w)))
        if op in ("mean", "sum", "centered"):
            acc = rows.sum(0, dtype=torch.float32)  # fp32 accumulation on the device
            if op == "sum":
                return acc
            acc.div_(len(idx))
            return acc if op == "mean" else centre(acc, background, len(idx))
        return soup_rows(rows, op, segments)

    @property
    def used_mb(self) -> float:
        """Bytes of rows held, in MB."""
        return len(self.where) * self.slots.shape[1] * self.slots.element_size() / (1 << 20)
