"""Checkpoints: a directory with model.safetensors (or its shards), config.json and tokenizer.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ragsoup.atomic import atomic_write_bytes, umask
from ragsoup.errors import RagsoupError
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import Tokenizer, load_tokenizer

FORMAT = "ragsoup-mamba2"
SHIPPED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "default"
BACKGROUND_FILE = "background.safetensors"  # the model's background state (ragsoup.background), not a weight file


@dataclass
class Loaded:
    model: Mamba2LM
    tokenizer: Tokenizer
    path: Path
    fingerprint: str
    meta: dict = field(default_factory=dict)


def atomic_write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def fingerprint(path: Path) -> str:
    """Model identity: sha256 over config.json and the weight files, 16 hex chars.

    Weight files are *.safetensors and (published mamba_ssm checkpoints) *.bin, read in 1 MiB blocks; a ragsoup
    checkpoint has no .bin, so its fingerprint is what it always was. The background state is left out: it does
    not change any passage's state.
    """
    h = hashlib.sha256()
    weights = sorted(p.name for pat in ("*.safetensors", "*.bin") for p in Path(path).glob(pat)
                     if p.name != BACKGROUND_FILE)
    for name in ["config.json", *weights]:
        h.update(name.encode())
        with open(Path(path) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def resolve_model_path(name_or_path: str | Path | None) -> Path:
    """A shipped model's name (e.g. 'default') or a checkpoint directory -> its directory."""
    name = str(name_or_path or DEFAULT_MODEL)
    p = Path(name)
    if p.is_dir():
        return p
    shipped = SHIPPED_DIR / name
    if shipped.is_dir():
        return shipped
    known = sorted(d.name for d in SHIPPED_DIR.glob("*") if d.is_dir()) if SHIPPED_DIR.is_dir() else []
    raise RagsoupError(
        f"model '{name}' not found: pass a checkpoint directory or one of the shipped models ({', '.join(known) or 'none'})"
    )


def model_label(path: str | Path) -> str:
    """How reports name a model: a shipped model's name, else its path (relative to the working directory if inside it)."""
    p = Path(path).resolve()
    if p.parent == SHIPPED_DIR.resolve():
        return p.name
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


MAX_SHARD_BYTES = 15 << 20  # weight files are split to at most this size (a file larger alone stays whole)


def _shards(sd: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy, in key order: consecutive tensors into parts of at most max_bytes."""
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        n = v.numel() * v.element_size()
        if parts[-1] and size + n > max_bytes:
            parts.append({})
            size = 0
        parts[-1][k] = v
        size += n
    return parts


def _swap_dir(new: Path, path: Path) -> None:
    """Put directory ``new`` at ``path``, replacing what was there (two renames; never a half-written path)."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model: Mamba2LM, tok: Tokenizer, path: Path, meta: dict | None = None,
                    dtype: torch.dtype | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
    """Save weights (safetensors; ``dtype`` e.g. torch.bfloat16 to halve them), config and tokenizer to ``path``.

    Weights over max_shard_bytes are split into model-0000i-of-0000n.safetensors. The directory is built beside
    ``path`` and swapped in, so ``path`` is always a complete checkpoint. Returns the fingerprint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        parts = _shards(sd, max_shard_bytes)
        names = (["model.safetensors"] if len(parts) == 1
                 else [f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors" for i in range(len(parts))])
        for name, part in zip(names, parts):
            save_file(part, str(tmp / name))
        tok.save(tmp / "tokenizer.json")
        fmt = getattr(model, "checkpoint_format", FORMAT)  # "ragsoup-transformer" for the kvsoup baseline
        atomic_write_json(tmp / "config.json", {"format": fmt, "model": model.cfg.to_dict(), **(meta or {})})
        _swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return fingerprint(path)


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint directory (or shipped model name) onto ``device`` in eval mode."""
    path = resolve_model_path(name_or_path)
    # --- layout dispatch: published transformers / mamba_ssm Mamba2 directories go to ragsoup.external ---
    try:
        conf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RagsoupError(f"cannot load model from {path}: {exc}") from exc
    from ragsoup.external import detect_layout, load_external, read_weights

    if isinstance(conf, dict) and conf.get("format") == "ragsoup-transformer":  # averaged-KV baseline (kvsoup)
        from ragsoup.kvsoup import load_transformer

        return load_transformer(path, conf, device)
    if detect_layout(conf) != "ragsoup":
        return load_external(path, conf, device)
    # --- end layout dispatch ---
    try:
        cfg = Mamba2Config.from_dict(conf["model"])
        sd = read_weights(path)  # model.safetensors, or its shards
    except (OSError, KeyError, ValueError, RagsoupError) as exc:
        raise RagsoupError(f"cannot load model from {path}: {exc}") from exc
    model = Mamba2LM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RagsoupError(f"checkpoint {path} does not match its config: missing {missing}, unexpected {unexpected}")
    model.to(device).eval()
    tok = load_tokenizer(path / "tokenizer.json")
    meta = {k: v for k, v in conf.items() if k not in ("model", "format")}
    return Loaded(model, tok, path, fingerprint(path), meta)
