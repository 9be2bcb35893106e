"""Tokenizers with ragsoup's special tokens, and the prompt layout shared by training and inference.

Layout (one model is encoder and decoder):
    passage  : text <doc>                         encoded alone; its final state is cached
    decoder  : <q> question <a> answer <eos>      run from the souped state
    concat   : p1 <doc> p2 <doc> ... <q> question <a> answer <eos>
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ragsoup.errors import RagsoupError

SPECIALS = ("<pad>", "<doc>", "<q>", "<a>", "<eos>")


class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    doc_id: int
    q_id: int
    a_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save(self, path: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus the special tokens; no training, no unknown tokens."""

    def __init__(self) -> None:
        self.pad_id, self.doc_id, self.q_id, self.a_id, self.eos_id = range(256, 256 + len(SPECIALS))
        self.vocab_size = 256 + len(SPECIALS)

    def encode(self, text: str) -> list[int]:
        """Text -> byte ids."""
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Ids -> text (special tokens dropped, invalid UTF-8 replaced)."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        """Write tokenizer.json."""
        Path(path).write_text(json.dumps({"type": "ragsoup-bytes", "specials": list(SPECIALS)}))


class HFTokenizer:
    """A `tokenizers` BPE/Unigram tokenizer whose vocabulary holds ragsoup's special tokens."""

    def __init__(self, tok) -> None:
        self.tok = tok
        ids = {}
        for s in SPECIALS:
            i = tok.token_to_id(s)
            if i is None:
                raise RagsoupError(f"tokenizer lacks special token {s}: add {', '.join(SPECIALS)} when training it")
            ids[s] = i
        self.pad_id, self.doc_id, self.q_id, self.a_id, self.eos_id = (ids[s] for s in SPECIALS)
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no special tokens added)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text, special tokens skipped."""
        return self.tok.decode(ids, skip_special_tokens=True)

    def save(self, path: Path) -> None:
        """Write tokenizer.json in the `tokenizers` format."""
        self.tok.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer.json written by either tokenizer class."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RagsoupError(f"cannot read tokenizer {path}: {exc}") from exc
    if data.get("type") == "ragsoup-bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as _HF

    return HFTokenizer(_HF.from_file(str(path)))


def passage_ids(tok: Tokenizer, text: str, max_tokens: int) -> list[int]:
    """Token ids of one passage as it is encoded alone: text (truncated) then <doc>."""
    return tok.encode(text)[: max_tokens - 1] + [tok.doc_id]


def prompt_ids(tok: Tokenizer, question: str, max_tokens: int = 256) -> list[int]:
    """Decoder prompt: <q> question <a>."""
    return [tok.q_id] + tok.encode(question)[: max_tokens - 2] + [tok.a_id]


def answer_ids(tok: Tokenizer, answer: str, max_tokens: int = 64) -> list[int]:
    """Answer target: answer <eos>."""
    return tok.encode(answer)[: max_tokens - 1] + [tok.eos_id]


def train_bpe(texts: list[str], vocab_size: int = 2048) -> HFTokenizer:
    """Train a byte-level BPE (digits kept one per token) holding ragsoup's special tokens."""
    from tokenizers import Tokenizer as _HF
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok)
