"""Corpus loading: chunking, every input format, stable ids, skipped files, duplicates and errors."""

from __future__ import annotations

import gzip
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragsoup.corpus import CorpusError, CorpusLoad, Passage, chunk_text, load_corpus, passage_id
from ragsoup.errors import RagsoupError

SENTENCES = [f"Sentence number {i} talks about topic {i * 7 % 13} in some detail." for i in range(40)]


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


# ---------------------------------------------------------------------------------------------------------------
# chunk_text
# ---------------------------------------------------------------------------------------------------------------


def test_chunks_respect_sentence_boundaries_and_max_chars() -> None:
    text = " ".join(SENTENCES)
    chunks = chunk_text(text, max_chars=200)
    assert len(chunks) > 1
    assert all(len(c) <= 200 for c in chunks)
    for c in chunks:  # every chunk is a run of whole sentences
        assert c.endswith("."), c
        assert all(s in SENTENCES for s in re.split(r"(?<=\.) ", c)), c
    assert " ".join(chunks) == text


def test_paragraphs_are_natural_boundaries() -> None:
    p1 = " ".join(SENTENCES[:3])  # ~190 chars
    p2 = " ".join(SENTENCES[3:6])
    chunks = chunk_text(f"{p1}\n\n{p2}", max_chars=300)
    assert chunks == [p1, p2]  # not packed sentence-by-sentence across the paragraph break


def test_small_paragraphs_are_packed_together() -> None:
    text = "# Title\n\nFirst short paragraph.\n\n\nSecond   short\tparagraph.\n"
    assert chunk_text(text, max_chars=600) == ["# Title First short paragraph. Second short paragraph."]


def test_markdown_heading_joins_the_next_paragraph() -> None:
    big1, big2 = " ".join(SENTENCES[:3]), " ".join(SENTENCES[3:8])  # 161 and 269 chars
    chunks = chunk_text(f"{big1}\n\n## Notes\n\n{big2}", max_chars=200, min_chars=40)
    assert chunks[0] == big1
    assert chunks[1].startswith("## Notes Sentence number 3")
    assert all(len(c) <= 200 for c in chunks)


def test_tiny_paragraph_joins_the_next_one_when_the_previous_chunk_is_full() -> None:
    big1, big2 = " ".join(SENTENCES[:3]), " ".join(SENTENCES[3:8])
    chunks = chunk_text(f"{big1}\n\nSee below.\n\n{big2}", max_chars=165, min_chars=40)
    assert chunks[0] == big1
    assert chunks[1].startswith("See below. Sentence number 3")


def test_abbreviations_and_initials_do_not_end_sentences() -> None:
    text = "Dr. Smith met J. R. R. Tolkien, e.g. at lunch. " + "x" * 30 + " filler words here."
    chunks = chunk_text(text, max_chars=60, min_chars=5)
    assert chunks[0] == "Dr. Smith met J. R. R. Tolkien, e.g. at lunch."


def test_huge_single_sentence_is_split_on_whitespace() -> None:
    words = [f"w{i:05d}" for i in range(3000)]
    sentence = " ".join(words)  # ~18k chars, no punctuation
    chunks = chunk_text(sentence, max_chars=100)
    assert all(len(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == words  # no word was broken


def test_huge_word_is_hard_split() -> None:
    chunks = chunk_text("a" * 1050, max_chars=100)
    assert [len(c) for c in chunks] == [100] * 10 + [50]
    assert "".join(chunks) == "a" * 1050


def test_whitespace_only_gives_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n\t \n") == []


def test_chunking_is_deterministic() -> None:
    text = "\n\n".join(" ".join(SENTENCES[i : i + 5]) for i in range(0, 40, 5))
    assert chunk_text(text, 150) == chunk_text(text, 150)


def test_bad_max_chars() -> None:
    with pytest.raises(CorpusError, match="at least 1"):
        chunk_text("hello", max_chars=0)


_alphabet = st.sampled_from(list("abc xyz.!?\n\n\t") + ["Mr.", " Dr. ", "e.g. ", "\u00e9", "\u3002"])


@settings(max_examples=200, deadline=None, derandomize=True)
@given(text=st.lists(_alphabet, max_size=400).map("".join), max_chars=st.integers(1, 80),
       min_chars=st.integers(0, 40))
def test_chunk_properties(text: str, max_chars: int, min_chars: int) -> None:
    chunks = chunk_text(text, max_chars, min_chars)
    assert all(0 < len(c) <= max_chars for c in chunks)
    assert all(c == c.strip() and "  " not in c and "\n" not in c for c in chunks)
    assert _squash("".join(chunks)) == _squash(text)  # nothing lost, nothing added, order kept
    if len(chunks) >= 2:  # a tiny trailing chunk that fits was merged
        assert not (len(chunks[-1]) < min_chars and len(chunks[-2]) + 1 + len(chunks[-1]) <= max_chars)


# ---------------------------------------------------------------------------------------------------------------
# directories of .txt/.md
# ---------------------------------------------------------------------------------------------------------------


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_directory_recursive_sorted_with_titles_and_sources(tmp_path: Path) -> None:
    _write(tmp_path / "b.md", "Bee facts. Bees make honey.")
    _write(tmp_path / "a.txt", "Apples are red. Apples grow on trees.")
    _write(tmp_path / "sub" / "c.txt", "Cats purr when happy.")
    _write(tmp_path / "ignored.pdf", "not a corpus file")
    _write(tmp_path / ".git" / "x.txt", "hidden folder text")
    load = load_corpus(tmp_path)
    assert isinstance(load, CorpusLoad)
    assert load.n_files == 3
    assert [(p.source, p.title) for p in load.passages] == [("a.txt", "a"), ("b.md", "b"), ("sub/c.txt", "c")]
    p = load.passages[0]
    assert isinstance(p, Passage)
    assert p.id == passage_id("a.txt", p.text) and re.fullmatch(r"[0-9a-f]{16}", p.id)
    assert (load.skipped_binary, load.skipped_empty, load.n_duplicates) == (0, 0, 0)


def test_single_file(tmp_path: Path) -> None:
    f = _write(tmp_path / "notes.md", "# Notes\n\nOne fact here.")
    load = load_corpus(f)
    assert load.n_files == 1
    assert [(p.text, p.title, p.source) for p in load.passages] == [("# Notes One fact here.", "notes", "notes.md")]


def test_long_file_is_chunked(tmp_path: Path) -> None:
    _write(tmp_path / "long.txt", " ".join(SENTENCES))
    load = load_corpus(tmp_path, max_chars=200)
    assert len(load.passages) > 5
    assert all(len(p.text) <= 200 for p in load.passages)
    assert len({p.id for p in load.passages}) == len(load.passages)


def test_ids_are_stable_and_local_to_a_file(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "\n\n".join(SENTENCES[:10]))
    _write(tmp_path / "b.txt", "\n\n".join(SENTENCES[10:20]))
    first = load_corpus(tmp_path, max_chars=120)
    again = load_corpus(tmp_path, max_chars=120)
    assert first.passages == again.passages
    _write(tmp_path / "b.txt", "\n\n".join(SENTENCES[10:19]) + "\n\nAn edited ending.")
    edited = load_corpus(tmp_path, max_chars=120)
    ids = lambda load, src: [p.id for p in load.passages if p.source == src]  # noqa: E731
    assert ids(edited, "a.txt") == ids(first, "a.txt")
    assert ids(edited, "b.txt") != ids(first, "b.txt")


def test_same_text_in_another_file_gets_another_id_but_is_dropped(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", "Shared passage text. It repeats.")
    _write(tmp_path / "b.txt", "Shared passage text. It repeats.")
    _write(tmp_path / "c.txt", "Something else entirely.")
    load = load_corpus(tmp_path)
    assert load.n_duplicates == 1
    assert [p.source for p in load.passages] == ["a.txt", "c.txt"]  # first one kept


def test_binary_and_non_utf8_files_are_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "good.txt", "Readable text lives here.")
    _write(tmp_path / "nul.txt", b"PK\x03\x04\x00\x00binary zip bytes")
    _write(tmp_path / "latin1.md", "caf\u00e9 cr\u00e8me".encode("latin-1"))
    _write(tmp_path / "bom.txt", "\ufeffWith a byte order mark.".encode("utf-8"))
    load = load_corpus(tmp_path)
    assert load.n_files == 4 and load.skipped_binary == 2
    assert sorted(p.text for p in load.passages) == ["Readable text lives here.", "With a byte order mark."]


def test_empty_files_are_counted(tmp_path: Path) -> None:
    _write(tmp_path / "empty.txt", "")
    _write(tmp_path / "blank.md", "  \n\n\t\n")
    _write(tmp_path / "real.txt", "Real content.")
    load = load_corpus(tmp_path)
    assert (load.n_files, load.skipped_empty, len(load.passages)) == (3, 2, 1)


def test_all_binary_corpus_errors_with_counts(tmp_path: Path) -> None:
    _write(tmp_path / "a.txt", b"\x00\x01\x02")
    _write(tmp_path / "b.txt", b"\xff\xfe\xfa")
    _write(tmp_path / "c.txt", "   ")
    with pytest.raises(CorpusError, match=r"2 skipped as binary.*1 empty") as exc:
        load_corpus(tmp_path)
    assert isinstance(exc.value, RagsoupError)


def test_directory_without_text_files(tmp_path: Path) -> None:
    _write(tmp_path / "x.pdf", b"%PDF")
    with pytest.raises(CorpusError, match="no .txt or .md files"):
        load_corpus(tmp_path)


def test_huge_file_loads_quickly(tmp_path: Path) -> None:
    blocks = [" ".join(f"Block {i} sentence {j} says {i * j % 97} things." for j in range(60)) for i in range(2500)]
    _write(tmp_path / "big.txt", "\n\n".join(blocks[:1000]) + "\n" + " ".join(blocks[1000:]))  # half one paragraph
    t0 = time.perf_counter()
    load = load_corpus(tmp_path)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"5 MB took {elapsed:.1f}s"
    assert all(len(p.text) <= 600 for p in load.passages)
    assert len(load.passages) > 8000


# ---------------------------------------------------------------------------------------------------------------
# .jsonl
# ---------------------------------------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_ids_titles_and_chunks(tmp_path: Path, gz: bool) -> None:
    rows = [
        {"id": "doc1", "title": "First", "text": "A short record."},
        {"id": 7, "text": " ".join(SENTENCES[:8])},  # chunked -> 7-0, 7-1, ...
        {"text": "No id given here.", "title": ""},
        {"id": "e", "text": "   "},
    ]
    f = _jsonl(tmp_path / ("c.jsonl.gz" if gz else "c.jsonl"), rows, gz)
    load = load_corpus(f, max_chars=200)
    ids = [p.id for p in load.passages]
    assert ids[0] == "doc1" and load.passages[0].title == "First"
    chunked = [i for i in ids if i.startswith("7-")]
    assert chunked == [f"7-{j}" for j in range(len(chunked))] and len(chunked) >= 2
    last = load.passages[-1]
    assert last.id == passage_id("c.jsonl#2" if not gz else "c.jsonl.gz#2", last.text)
    assert last.title == "c" and last.source.endswith("#2")
    assert load.skipped_empty == 1 and load.n_files == 1


def test_jsonl_single_piece_keeps_plain_id(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "c.jsonl", [{"id": "x", "text": "Only one piece."}])
    assert [p.id for p in load_corpus(f).passages] == ["x"]


def test_jsonl_malformed_line_names_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "fine"}\n\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 3"):
        load_corpus(f)


def test_jsonl_missing_text_field(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "bad.jsonl", [{"body": "no text key"}])
    with pytest.raises(CorpusError, match="line 1.*`text`"):
        load_corpus(f)


def test_jsonl_conflicting_ids(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "One text."}, {"id": "a", "text": "Another text."}])
    with pytest.raises(CorpusError, match="unique id"):
        load_corpus(f)


def test_jsonl_duplicate_texts_dropped(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "Same  text."}, {"id": "b", "text": "Same text."}])
    load = load_corpus(f)
    assert [p.id for p in load.passages] == ["a"] and load.n_duplicates == 1


# ---------------------------------------------------------------------------------------------------------------
# SQuAD / HotpotQA .json
# ---------------------------------------------------------------------------------------------------------------

SQUAD = {
    "version": "1.1",
    "data": [
        {"title": "Normans", "paragraphs": [
            {"context": "The Normans were a people in Normandy.", "qas": [{"question": "Who?", "id": "q1"}]},
            {"context": "Rollo was their first ruler.", "qas": []},
        ]},
        {"title": "Physics", "paragraphs": [{"context": "Force equals mass times acceleration.", "qas": []}]},
    ],
}

HOTPOT = [
    {"_id": "h1", "question": "Q1?", "answer": "A",
     "context": [["Alpha", ["Alpha is a letter.", " It comes first."]], ["Beta", ["Beta is second."]]]},
    {"_id": "h2", "question": "Q2?", "answer": "B",
     "context": [["Beta", ["Beta is second."]], ["Gamma", ["Gamma is third.", " It follows beta."]]]},
]


@pytest.mark.parametrize("gz", [False, True])
def test_squad(tmp_path: Path, gz: bool) -> None:
    f = tmp_path / ("train.json.gz" if gz else "train.json")
    data = json.dumps(SQUAD).encode()
    f.write_bytes(gzip.compress(data) if gz else data)
    load = load_corpus(f)
    assert [(p.title, p.text) for p in load.passages] == [
        ("Normans", "The Normans were a people in Normandy."),
        ("Normans", "Rollo was their first ruler."),
        ("Physics", "Force equals mass times acceleration."),
    ]
    assert [p.source for p in load.passages] == [f"{f.name}#0", f"{f.name}#1", f"{f.name}#2"]


def test_squad_long_context_is_chunked(tmp_path: Path) -> None:
    squad = {"data": [{"title": "T", "paragraphs": [{"context": " ".join(SENTENCES), "qas": []}]}]}
    f = tmp_path / "s.json"
    f.write_text(json.dumps(squad), encoding="utf-8")
    load = load_corpus(f, max_chars=150)
    assert len(load.passages) > 5 and all(p.title == "T" and len(p.text) <= 150 for p in load.passages)


def test_hotpot(tmp_path: Path) -> None:
    f = tmp_path / "hotpot_dev.json"
    f.write_text(json.dumps(HOTPOT), encoding="utf-8")
    load = load_corpus(f)
    assert [(p.title, p.text) for p in load.passages] == [
        ("Alpha", "Alpha is a letter. It comes first."),
        ("Beta", "Beta is second."),
        ("Gamma", "Gamma is third. It follows beta."),
    ]
    assert load.n_duplicates == 1


def test_unknown_json_shape(tmp_path: Path) -> None:
    f = tmp_path / "other.json"
    f.write_text(json.dumps({"rows": [1, 2]}), encoding="utf-8")
    with pytest.raises(CorpusError, match="neither SQuAD.*nor HotpotQA"):
        load_corpus(f)


def test_invalid_json(tmp_path: Path) -> None:
    f = tmp_path / "broken.json"
    f.write_text('{"data": [', encoding="utf-8")
    with pytest.raises(CorpusError, match="not valid JSON"):
        load_corpus(f)


# ---------------------------------------------------------------------------------------------------------------
# datasets.save_to_disk
# ---------------------------------------------------------------------------------------------------------------


def test_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({
        "id": ["d1", "d2", "d3"],
        "title": ["One", "Two", "Three"],
        "text": ["The first record.", "", "The third record."],
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    load = load_corpus(tmp_path / "ds")
    assert [(p.id, p.title, p.text) for p in load.passages] == [
        ("d1", "One", "The first record."), ("d3", "Three", "The third record."),
    ]
    assert load.skipped_empty == 1 and load.passages[1].source == "ds#2"


def test_saved_dataset_text_only(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["Alpha text.", "Beta text."]}).save_to_disk(str(tmp_path / "plain"))
    load = load_corpus(tmp_path / "plain")
    assert [p.title for p in load.passages] == ["plain", "plain"]
    assert load.passages[0].id == passage_id("plain#0", "Alpha text.")


def test_saved_dataset_without_text_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(CorpusError, match="no `text` column.*body"):
        load_corpus(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------------------------
# path errors
# ---------------------------------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"corpus path '.*nope' does not exist: pass a directory of \.txt/\.md"):
        load_corpus(tmp_path / "nope")


def test_unknown_file_type(tmp_path: Path) -> None:
    f = _write(tmp_path / "paper.pdf", b"%PDF-1.4")
    with pytest.raises(CorpusError, match="unknown type"):
        load_corpus(f)
