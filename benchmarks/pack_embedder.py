"""Pack a sentence-transformers directory into one smaller file for a device run, and unpack it there (lossless).

A device run carries at most 64 MiB; the bf16 MiniLM (45 MiB) plus the FAISS and mamba-ssm wheels (18 MiB) plus
the working tree do not fit. 16-bit weights compress poorly as a byte stream but well when the high bytes (sign
and exponent) are compressed apart from the low bytes (mantissa, near-random, stored raw): 45 -> 30 MiB.

    python benchmarks/pack_embedder.py pack .emb/minilm-bf16 .whl/minilm-bf16.pack
    python benchmarks/pack_embedder.py unpack .whl/minilm-bf16.pack /tmp/minilm-bf16
"""

from __future__ import annotations

import io
import lzma
import sys
import tarfile
from pathlib import Path

WEIGHTS = "model.safetensors"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(src: Path, dst: Path) -> None:
    """Write every file of src into one tar at dst, the weights byte-split with the high bytes xz-compressed."""
    with tarfile.open(dst, "w") as tar:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = f.relative_to(src).as_posix()
            if rel != WEIGHTS:
                _add(tar, rel, f.read_bytes())
                continue
            raw = f.read_bytes()
            head = 8 + int.from_bytes(raw[:8], "little")  # safetensors: u64 header length, JSON header, then data
            body = raw[head:]
            if len(body) % 2:
                raise SystemExit(f"{f}: odd data length, not 16-bit weights")
            _add(tar, rel + ".head", raw[:head])
            _add(tar, rel + ".lo", body[0::2])
            _add(tar, rel + ".hi.xz", lzma.compress(body[1::2], preset=6))


def unpack(src: Path, dst: Path) -> None:
    """Rebuild the directory that pack() read."""
    parts: dict[str, bytes] = {}
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            if m.name.startswith(WEIGHTS + "."):
                parts[m.name[len(WEIGHTS) + 1:]] = data
                continue
            (dst / m.name).parent.mkdir(parents=True, exist_ok=True)
            (dst / m.name).write_bytes(data)
    lo, hi = parts["lo"], lzma.decompress(parts["hi.xz"])
    body = bytearray(2 * len(lo))
    body[0::2], body[1::2] = lo, hi
    (dst / WEIGHTS).write_bytes(parts["head"] + bytes(body))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        raise SystemExit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))
