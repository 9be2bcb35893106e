"""The state store: every passage's final per-layer state as one fixed-size row of a memory-mapped file.

Row layout (D = cfg.state_numel() values): for each layer, conv [conv_dim, d_conv-1] then ssm
[nheads, headdim, d_state], each flattened C-order. Row i lives at byte i * D * itemsize, so any
k rows load without reading the rest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ragsoup.errors import RagsoupError
from ragsoup.model import LayerState, Mamba2Config, States

DTYPES = {"float16": np.float16, "float32": np.float32}


def segments(cfg: Mamba2Config) -> list[tuple[int, int]]:
    """(offset, numel) of each state component in a row, in row order."""
    out, off = [], 0
    conv = cfg.conv_dim * (cfg.d_conv - 1)
    ssm = cfg.nheads * cfg.headdim * cfg.d_state
    for _ in range(cfg.n_layer):
        out += [(off, conv), (off + conv, ssm)]
        off += conv + ssm
    return out


def flatten_states(states: States) -> Tensor:
    """Per-layer states with batch B -> rows [B, D]."""
    parts = [t.reshape(t.shape[0], -1) for st in states for t in st]
    return torch.cat(parts, dim=1)


def unflatten_states(rows: Tensor, cfg: Mamba2Config) -> States:
    """Rows [B, D] -> per-layer states (views where possible)."""
    B = rows.shape[0]
    segs = segments(cfg)
    out: States = []
    for i in range(cfg.n_layer):
        (oc, nc), (os_, ns) = segs[2 * i], segs[2 * i + 1]
        conv = rows[:, oc : oc + nc].reshape(B, cfg.conv_dim, cfg.d_conv - 1)
        ssm = rows[:, os_ : os_ + ns].reshape(B, cfg.nheads, cfg.headdim, cfg.d_state)
        out.append(LayerState(conv, ssm))
    return out


class StoreWriter:
    """Writes rows into a new store file under a temporary name; ``commit`` moves it into place.

    It also sums the rows as they come (fp32), so the store's mean row (the corpus background) needs no second
    read: write each row once.
    """

    def __init__(self, path: Path, n_rows: int, row_numel: int, dtype: str = "float16") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.dtype = np.dtype(DTYPES[dtype])
        self.shape = (n_rows, row_numel)
        self.total = torch.zeros(row_numel, dtype=torch.float32)  # the sum of the rows written, as stored
        self.n_written = 0
        if n_rows:
            self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        else:
            np.save(self.tmp, np.zeros(self.shape, self.dtype), allow_pickle=False)
            os.replace(str(self.tmp) + ".npy", self.tmp)
            self.mm = None

    def write(self, idx: np.ndarray | slice, rows: np.ndarray | Tensor) -> None:
        """Write rows [n, D] at row positions ``idx``."""
        if isinstance(rows, Tensor):
            rows = rows.detach().cpu().numpy()
        rows = np.asarray(rows, dtype=self.dtype)
        self.mm[idx] = rows
        self.total.add_(torch.from_numpy(rows).float().sum(0))
        self.n_written += rows.shape[0]

    def mean(self) -> Tensor:
        """The mean of the rows written so far, fp32 [D] (each row written once: the store's mean row)."""
        if not self.n_written:
            raise RagsoupError("no state rows to average")
        return self.total / self.n_written

    def commit(self) -> None:
        """Flush and atomically move the file to its final name."""
        if self.mm is not None:
            self.mm.flush()
            del self.mm
            self.mm = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file."""
        self.mm = None
        self.tmp.unlink(missing_ok=True)


class StateStore:
    """Read-only, memory-mapped view of a store file."""

    def __init__(self, path: Path, row_numel: int | None = None, dtype: str | None = None) -> None:
        try:
            self.rows = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise RagsoupError(f"state store {path} is missing or corrupt ({exc}): rebuild it with `ragsoup index`") from exc
        if self.rows.ndim != 2 or (row_numel is not None and self.rows.shape[1] != row_numel) or (
            dtype is not None and self.rows.dtype != np.dtype(DTYPES[dtype])
        ):
            raise RagsoupError(f"state store {path} does not match its manifest: rebuild it with `ragsoup index`")

    def __len__(self) -> int:
        return self.rows.shape[0]

    @property
    def row_bytes(self) -> int:
        return self.rows.shape[1] * self.rows.dtype.itemsize

    def read(self, idx: Sequence[int]) -> np.ndarray:
        """Copy the rows ``idx`` (k of them) into memory: [k, D], reading only those rows (``ask`` streams them from
        ``view()`` into the soup instead; this is for copying rows out, as an incremental re-index does)."""
        return self.rows[np.asarray(idx, dtype=np.int64)]

    def view(self) -> Tensor:
        """A zero-copy, read-only torch view of the mapped rows [n, D] (never written to)."""
        if getattr(self, "_view", None) is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only read it
                self._view = torch.from_numpy(self.rows)
        return self._view
