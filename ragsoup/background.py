"""A background state: the mean final state of a model over passages of one kind of text.

The ``centered`` soup (ragsoup.soup) keeps the souped passages' deviations from this state at the size of one
passage's, where a plain mean shrinks them by 1/k. It is a property of the model and of the kind of text it sees:
    - the model's: computed once (``ragsoup background MODEL``, template filler by default) and stored beside the
      weights as ``background.safetensors``;
    - an index's (the corpus background): the mean of all its state rows, written by ``ragsoup index`` into its data
      folder under the same file name, read by ``ask --pool centered --background corpus``. A background of the
      corpus's kind of text matters at large k (docs/results.md, section 2).
Either is one fp32 row in the state store's layout, with where it came from in the file's metadata. Neither is part
of the model's fingerprint: it does not change any passage's state.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from ragsoup.checkpoint import BACKGROUND_FILE, Loaded, atomic_write_bytes
from ragsoup.encode import encode_passages
from ragsoup.errors import RagsoupError
from ragsoup.model import Mamba2LM, States
from ragsoup.kvsoup import is_kv_model
from ragsoup.store import unflatten_states
from ragsoup.tokenizer import Tokenizer


def background_passages(text: str, n: int, seed: int = 0, chars: int = 200) -> list[str]:
    """n passages of about ``chars`` characters: ``template`` filler, or prose from a .txt / Gutenberg .jsonl(.gz)."""
    from ragsoup.tasks.filler import FillerSource, ProseFiller

    if n < 1:
        raise RagsoupError(f"--passages must be at least 1 (got {n})")
    source = FillerSource() if text == "template" else ProseFiller(text)
    rng = random.Random(seed)
    return [source.passage(rng, chars) for _ in range(n)]


def compute_background(model: Mamba2LM, tok: Tokenizer, passages: Sequence[str], batch_size: int = 32,
                       max_tokens: int = 1024, on_batch: Callable[[int], None] | None = None) -> Tensor:
    """The mean final state of the passages, each encoded alone (in length groups, as an index encodes them):
    one fp32 row [D], accumulated in fp32."""
    if not passages:
        raise RagsoupError("no passages to compute a background state from")
    if is_kv_model(model):
        raise RagsoupError("the transformer baseline's KV caches have no fixed size: --pool centered is for Mamba2 models")
    acc = torch.zeros(model.cfg.state_numel())
    for _, rows in encode_passages(model, tok, passages, batch_size, max_tokens, torch.float32, on_batch):
        acc.add_(rows.sum(0))
    return acc.div_(len(passages))


_REMAKE = "recreate it: `ragsoup background MODEL` for a model's, `ragsoup index CORPUS` for an index's"


def save_background(folder: str | Path, row: Tensor, meta: dict[str, str]) -> Path:
    """Write ``row`` to FOLDER/background.safetensors atomically; ``meta``: where it came from."""
    from safetensors.torch import save

    path = Path(folder) / BACKGROUND_FILE
    atomic_write_bytes(path, save({"background": row.float().contiguous()}, metadata={k: str(v) for k, v in meta.items()}))
    return path


def load_background(folder: str | Path, numel: int | None = None) -> Tensor | None:
    """The background row [D] (fp32) stored in a model's or an index data folder, or None; ``numel`` checks its length."""
    path = Path(folder) / BACKGROUND_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        row = load_file(str(path))["background"]
    except Exception as exc:  # corrupt file, missing key
        raise RagsoupError(f"cannot read {path}: {exc}; {_REMAKE}") from exc
    if numel is not None and row.numel() != numel:
        raise RagsoupError(f"{path} holds {row.numel()} values but the model's state has {numel}: it belongs to "
                           f"another model; {_REMAKE}")
    return row


def _as_states(row: Tensor, model: Mamba2LM) -> States:
    """A background row [D] as per-layer states (batch 1, on the model's device)."""
    return unflatten_states(row[None].to(model.device), model.cfg)


def model_background(loaded: Loaded) -> States | None:
    """The loaded model's background as per-layer states (batch 1, on the model's device), or None."""
    if is_kv_model(loaded.model):  # the KV-cache baseline has no background state
        return None
    row = load_background(loaded.path, loaded.model.cfg.state_numel())
    return None if row is None else _as_states(row, loaded.model)


def text_background(loaded: Loaded, text: str, chars: int = 200, n: int = 512) -> States:
    """The loaded model's background over n passages of ``text`` (template or a prose file), computed on the spot
    as ``ragsoup background --text`` would store it, as per-layer states (batch 1)."""
    row = compute_background(loaded.model, loaded.tokenizer, background_passages(text, n, 0, chars))
    return _as_states(row, loaded.model)
