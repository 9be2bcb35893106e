"""Loading a corpus into passages: .txt/.md directories, .jsonl, SQuAD/HotpotQA .json(.gz), saved `datasets`.

Every text goes through ``chunk_text`` (whitespace normalised, sentence-aware chunks of at most ``max_chars``).
Passage ids are stable: the record's own id when it has one, else the first 16 hex chars of
``sha1(source + "\\n" + text)``, so editing one file changes only that file's ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragsoup.errors import RagsoupError
from ragsoup.jsonl import iter_jsonl

TEXT_SUFFIXES = (".txt", ".md")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_HINT = "pass a directory of .txt/.md files, a .jsonl file, a SQuAD/HotpotQA .json file or a saved `datasets` dataset"


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text."""

    id: str
    text: str
    title: str
    source: str


@dataclass
class CorpusLoad:
    """The passages of a corpus plus what was skipped on the way."""

    passages: list[Passage]
    n_files: int
    skipped_binary: int = 0
    skipped_empty: int = 0
    n_duplicates: int = 0


class CorpusError(RagsoupError):
    """The corpus cannot be read: the message says which file/line and what to pass instead."""


# ---------------------------------------------------------------------------------------------------------------
# chunking
# ---------------------------------------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")  # a blank (or whitespace-only) line
_WHITESPACE = re.compile(r"\s+")
# end of a sentence: terminal punctuation, optional closing quotes/brackets, then a space (text is normalised);
# CJK full stops end a sentence with or without a following space.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]* |[\u3002\uff01\uff1f]+ ?")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e eg ie no fig al inc ltd co mt jan feb mar apr jun jul aug sep sept "
    "oct nov dec approx cf".split()
)


def _normalise(text: str) -> str:
    """Collapse every whitespace run to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, whitespace-normalised, empty ones dropped."""
    out = []
    for para in _PARAGRAPH_BREAK.split(text):
        para = _normalise(para)
        if para:
            out.append(para)
    return out


def _is_sentence_end(para: str, m: re.Match[str]) -> bool:
    """Whether a punctuation match really ends a sentence (not an abbreviation or initial, next word not lowercase)."""
    nxt = m.end()
    if nxt < len(para) and para[nxt].islower():
        return False
    if para[m.start()] != ".":
        return True
    word_start = para.rfind(" ", 0, m.start()) + 1
    word = para[word_start : m.start()].lower().lstrip("\"'(\u201c\u2018[")
    if len(word) == 1 and word.isalpha():
        return False  # an initial: "J. R. R. Tolkien"
    return word not in _ABBREVIATIONS


def _sentences(para: str) -> Iterator[str]:
    """Sentences of one normalised paragraph."""
    start = 0
    for m in _SENTENCE_END.finditer(para):
        if m.end() >= len(para) or not _is_sentence_end(para, m):
            continue
        piece = para[start : m.end()].strip()
        if piece:
            yield piece
        start = m.end()
    piece = para[start:].strip()
    if piece:
        yield piece


def split_sentences(text: str) -> list[str]:
    """The sentences of a text, as chunking finds them (paragraph breaks end a sentence too)."""
    return [s for para in _paragraphs(text) for s in _sentences(para)]


def _split_long(sentence: str, max_chars: int) -> Iterator[str]:
    """Split an over-long sentence on the last space that fits, else hard-split at max_chars (linear time)."""
    pos, n = 0, len(sentence)
    while n - pos > max_chars:
        cut = sentence.rfind(" ", pos + 1, pos + max_chars + 1)
        if cut <= pos:
            yield sentence[pos : pos + max_chars]
            pos += max_chars
        else:
            yield sentence[pos:cut]
            pos = cut + 1
        while pos < n and sentence[pos] == " ":
            pos += 1
    if pos < n:
        yield sentence[pos:]


def _units(para: str, max_chars: int) -> Iterator[str]:
    """Sentences of a paragraph, each at most max_chars."""
    for sent in _sentences(para):
        if len(sent) <= max_chars:
            yield sent
        else:
            yield from _split_long(sent, max_chars)


def chunk_text(text: str, max_chars: int = 600, min_chars: int = 40) -> list[str]:
    """Split text into sentence-aware chunks of at most max_chars (a single over-long sentence is split on whitespace, then hard-split)."""
    if max_chars < 1:
        raise CorpusError(f"max_chars={max_chars} is too small: pass a chunk size of at least 1 character (default 600)")
    chunks: list[str] = []
    cur: list[str] = []
    cur_len = 0  # length of " ".join(cur)

    def flush() -> None:
        nonlocal cur, cur_len
        if cur:
            chunks.append(" ".join(cur))
        cur, cur_len = [], 0

    def add(piece: str) -> None:
        nonlocal cur_len
        cur_len += len(piece) + (1 if cur else 0)
        cur.append(piece)

    for para in _paragraphs(text):
        if para.startswith("#") and cur_len >= min_chars:
            flush()  # a markdown heading opens the next section's chunk
        if cur_len + 1 + len(para) <= max_chars or (not cur and len(para) <= max_chars):
            add(para)  # the whole paragraph fits the current chunk
            continue
        if cur_len >= min_chars:
            flush()  # a paragraph boundary is the natural place to cut
        if len(para) <= max_chars and not cur:
            add(para)
            continue
        for unit in _units(para, max_chars):
            if cur and cur_len + 1 + len(unit) > max_chars:
                flush()
            add(unit)
    flush()
    if len(chunks) >= 2 and len(chunks[-1]) < min_chars and len(chunks[-2]) + 1 + len(chunks[-1]) <= max_chars:
        chunks[-2:] = [chunks[-2] + " " + chunks[-1]]
    return chunks


# ---------------------------------------------------------------------------------------------------------------
# records -> passages
# ---------------------------------------------------------------------------------------------------------------


def passage_id(source: str, text: str) -> str:
    """Stable passage id: first 16 hex chars of sha1(source + newline + text)."""
    return hashlib.sha1(f"{source}\n{text}".encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


@dataclass
class _Collector:
    """Accumulates passages, dropping exact-duplicate texts and refusing clashing ids."""

    passages: list[Passage]
    seen_text: set[str]
    seen_id: dict[str, str]  # id -> source that used it
    n_files: int = 0
    skipped_binary: int = 0
    skipped_empty: int = 0
    n_duplicates: int = 0

    def add_text(self, text: str, title: str, source: str, max_chars: int, record_id: Any = None) -> None:
        """Chunk one record's text and add its pieces (an empty record is counted as skipped)."""
        pieces = chunk_text(text, max_chars)
        if not pieces:
            self.skipped_empty += 1
            return
        for i, piece in enumerate(pieces):
            if record_id is None:
                pid = passage_id(source, piece)
            else:
                pid = str(record_id) if len(pieces) == 1 else f"{record_id}-{i}"
            self._add(Passage(pid, piece, title, source))

    def _add(self, p: Passage) -> None:
        if p.text in self.seen_text:
            self.n_duplicates += 1
            return
        if p.id in self.seen_id:
            raise CorpusError(
                f"passage id '{p.id}' ({p.source}) is already used by {self.seen_id[p.id]} for a different text: "
                "give every record a unique id (or drop the `id` field to get content-hash ids)"
            )
        self.seen_text.add(p.text)
        self.seen_id[p.id] = p.source
        self.passages.append(p)

    def result(self) -> CorpusLoad:
        """The finished CorpusLoad."""
        return CorpusLoad(self.passages, self.n_files, self.skipped_binary, self.skipped_empty, self.n_duplicates)


def _new_collector() -> _Collector:
    return _Collector(passages=[], seen_text=set(), seen_id={})


def _strip_gz(path: Path) -> tuple[str, bool]:
    """(lower-case name without a trailing .gz, whether it was gzipped)."""
    name = path.name.lower()
    return (name[:-3], True) if name.endswith(".gz") else (name, False)


def _stem(path: Path) -> str:
    """File name without .gz and the format suffix."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem


# ---------------------------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------------------------


def _text_files(root: Path) -> list[Path]:
    """Every .txt/.md file under root (hidden files and folders skipped), sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(TEXT_SUFFIXES):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _read_text_file(path: Path) -> str | None:
    """The file's text, or None when it is binary (NUL bytes) or not UTF-8."""
    data = path.read_bytes()
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _load_text_files(files: list[Path], root: Path, max_chars: int) -> CorpusLoad:
    col = _new_collector()
    for f in files:
        col.n_files += 1
        try:
            text = _read_text_file(f)
        except OSError as exc:
            raise CorpusError(f"cannot read '{f}' ({exc.strerror or exc}): check its permissions or remove it") from exc
        if text is None:
            col.skipped_binary += 1
            continue
        source = f.relative_to(root).as_posix() if f != root else f.name
        col.add_text(text, _stem(f), source, max_chars)
    return col.result()


def _open_text(path: Path, gz: bool) -> Any:
    return gzip.open(path, "rt", encoding="utf-8") if gz else path.open("r", encoding="utf-8")


def _load_jsonl(path: Path, gz: bool, max_chars: int) -> CorpusLoad:
    col = _new_collector()
    col.n_files = 1
    title_default, index = _stem(path), 0
    try:
        with _open_text(path, gz) as f:
            for lineno, obj in iter_jsonl(f, path, CorpusError):
                text = obj.get("text") if isinstance(obj, dict) else None
                if not isinstance(text, str):
                    raise CorpusError(
                        f"{path}: line {lineno} needs a JSON object with a string `text` field "
                        "(optional `id`, `title`): fix that line"
                    )
                title, rid = obj.get("title"), obj.get("id")
                col.add_text(text, str(title) if title not in (None, "") else title_default,
                             f"{path.name}#{index}", max_chars, None if rid in (None, "") else rid)
                index += 1
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise CorpusError(f"{path} is not a UTF-8 JSON-lines file ({exc}): re-save it as UTF-8 (gzip optional)") from exc
    return col.result()


def _is_squad(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("data"), list)
            and all(isinstance(a, dict) and isinstance(a.get("paragraphs"), list) for a in obj["data"]))


def _is_hotpot(obj: Any) -> bool:
    return isinstance(obj, list) and all(isinstance(ex, dict) and isinstance(ex.get("context"), list) for ex in obj)


def _load_squad(obj: dict, path: Path, max_chars: int) -> CorpusLoad:
    col = _new_collector()
    col.n_files = 1
    index = 0
    for article in obj["data"]:
        title = article.get("title") or _stem(path)
        for para in article["paragraphs"]:
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str):
                raise CorpusError(f"{path}: SQuAD paragraph {index} has no string `context`: is this a SQuAD file?")
            col.add_text(context, str(title), f"{path.name}#{index}", max_chars)
            index += 1
    return col.result()


def _load_hotpot(obj: list, path: Path, max_chars: int) -> CorpusLoad:
    col = _new_collector()
    col.n_files = 1
    seen: set[tuple[str, str]] = set()
    for i, example in enumerate(obj):
        for item in example["context"]:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], list)):
                raise CorpusError(f"{path}: example {i} has a `context` entry that is not [title, [sentences]]: "
                                  "is this a HotpotQA file?")
            title, sentences = str(item[0]), item[1]
            text = "".join(str(s) for s in sentences)
            if (title, text) in seen:
                col.n_duplicates += 1
                continue
            seen.add((title, text))
            col.add_text(text, title, f"{path.name}#{i}", max_chars)
    return col.result()


def _load_json(path: Path, gz: bool, max_chars: int) -> CorpusLoad:
    try:
        with _open_text(path, gz) as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg}): fix the file") from exc
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise CorpusError(f"{path} is not a UTF-8 JSON file ({exc}): re-save it as UTF-8 (gzip optional)") from exc
    if _is_squad(obj):
        return _load_squad(obj, path, max_chars)
    if _is_hotpot(obj):
        return _load_hotpot(obj, path, max_chars)
    raise CorpusError(
        f"{path} is neither SQuAD format ({{\"data\": [{{\"title\", \"paragraphs\": [{{\"context\"}}]}}]}}) "
        "nor HotpotQA format (a list of objects with `context`): convert it, or use a .jsonl of {\"text\"} objects"
    )


def _dataset_rows(ds: Any, source: str) -> Iterable[tuple[dict, str]]:
    """Rows of a Dataset (or every split of a DatasetDict, sorted by name) with their source labels."""
    from datasets import Dataset

    splits = [(None, ds)] if isinstance(ds, Dataset) else [(k, ds[k]) for k in sorted(ds.keys())]
    for split, part in splits:
        if "text" not in part.column_names:
            raise CorpusError(
                f"dataset '{source}' has no `text` column (columns: {', '.join(part.column_names)}): "
                "rename the passage column to `text` before save_to_disk"
            )
        cols = [c for c in ("text", "id", "title") if c in part.column_names]
        prefix = source if split is None else f"{source}/{split}"
        i = 0
        for batch in part.select_columns(cols).iter(batch_size=1024):
            for j in range(len(batch["text"])):
                yield {c: batch[c][j] for c in cols}, f"{prefix}#{i}"
                i += 1


def _load_dataset_dir(path: Path, max_chars: int) -> CorpusLoad:
    try:
        from datasets import load_from_disk
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise CorpusError(f"'{path}' is a saved `datasets` dataset but `datasets` is not installed: pip install datasets") from exc
    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise CorpusError(f"cannot load the `datasets` dataset in '{path}' ({exc}): re-create it with save_to_disk") from exc
    col = _new_collector()
    col.n_files = 1
    for row, source in _dataset_rows(ds, path.name):
        text = row["text"]
        if text is None:
            col.skipped_empty += 1
            continue
        title = row.get("title")
        rid = row.get("id")
        col.add_text(str(text), str(title) if title not in (None, "") else path.name, source, max_chars,
                     None if rid in (None, "") else rid)
    return col.result()


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _dispatch(path: Path, max_chars: int) -> CorpusLoad:
    if path.is_dir():
        if any((path / m).is_file() for m in DATASET_MARKERS):
            return _load_dataset_dir(path, max_chars)
        return _load_text_files(_text_files(path), path, max_chars)
    name, gz = _strip_gz(path)
    if name.endswith(".jsonl"):
        return _load_jsonl(path, gz, max_chars)
    if name.endswith(".json"):
        return _load_json(path, gz, max_chars)
    if name.endswith(TEXT_SUFFIXES) and not gz:
        return _load_text_files([path], path, max_chars)
    raise CorpusError(f"corpus file '{path}' has an unknown type: {_HINT}")


def load_corpus(path: str | Path, max_chars: int = 600) -> CorpusLoad:
    """Load passages from a directory of .txt/.md files (or one holding corpus.jsonl), a .jsonl file, a SQuAD- or HotpotQA-format .json(.gz) file, or a `datasets` dataset saved to disk."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus path '{path}' does not exist: {_HINT}")
    if max_chars < 1:
        raise CorpusError(f"chunk size {max_chars} is too small: pass at least 1 character per passage (default 600)")
    if path.is_dir() and (path / "corpus.jsonl").is_file():  # a `ragsoup make-corpus` directory
        path = path / "corpus.jsonl"
    load = _dispatch(path, max_chars)
    if not load.passages:
        if path.is_dir() and load.n_files == 0:
            raise CorpusError(f"corpus directory '{path}' has no .txt or .md files: {_HINT}")
        raise CorpusError(
            f"no passages in '{path}': {load.n_files} file(s) read, {load.skipped_binary} skipped as binary/non-UTF-8, "
            f"{load.skipped_empty} empty file(s)/record(s) skipped: add UTF-8 text to the corpus"
        )
    return load
