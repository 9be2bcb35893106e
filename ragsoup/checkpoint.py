"""Checkpoints: a directory with model.safetensors, config.json and tokenizer.json."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ragsoup.errors import RagsoupError
from ragsoup.model import Mamba2Config, Mamba2LM
from ragsoup.tokenizer import Tokenizer, load_tokenizer

FORMAT = "ragsoup-mamba2"
SHIPPED_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "default"


@dataclass
class Loaded:
    model: Mamba2LM
    tokenizer: Tokenizer
    path: Path
    fingerprint: str
    meta: dict = field(default_factory=dict)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes to a temp file beside ``path`` and move it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def fingerprint(path: Path) -> str:
    """Model identity: sha256 over config.json and the weight files, 16 hex chars.

    Weight files are *.safetensors and (published mamba_ssm checkpoints) *.bin, read in 1 MiB blocks; a ragsoup
    checkpoint has no .bin, so its fingerprint is what it always was.
    """
    h = hashlib.sha256()
    weights = sorted(p.name for pat in ("*.safetensors", "*.bin") for p in Path(path).glob(pat))
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


def save_checkpoint(model: Mamba2LM, tok: Tokenizer, path: Path, meta: dict | None = None) -> str:
    """Save weights (safetensors), config and tokenizer to ``path``; returns the fingerprint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    tmp = path / ".model.safetensors.tmp"
    save_file(sd, str(tmp))
    os.replace(tmp, path / "model.safetensors")
    tok.save(path / ".tokenizer.json.tmp")
    os.replace(path / ".tokenizer.json.tmp", path / "tokenizer.json")
    fmt = getattr(model, "checkpoint_format", FORMAT)  # "ragsoup-transformer" for the kvsoup baseline
    atomic_write_json(path / "config.json", {"format": fmt, "model": model.cfg.to_dict(), **(meta or {})})
    return fingerprint(path)


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint directory (or shipped model name) onto ``device`` in eval mode."""
    path = resolve_model_path(name_or_path)
    # --- layout dispatch: published transformers / mamba_ssm Mamba2 directories go to ragsoup.external ---
    try:
        conf = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RagsoupError(f"cannot load model from {path}: {exc}") from exc
    from ragsoup.external import detect_layout, load_external

    if isinstance(conf, dict) and conf.get("format") == "ragsoup-transformer":  # averaged-KV baseline (kvsoup)
        from ragsoup.kvsoup import load_transformer

        return load_transformer(path, conf, device)
    if detect_layout(conf) != "ragsoup":
        return load_external(path, conf, device)
    # --- end layout dispatch ---
    try:
        cfg = Mamba2Config.from_dict(conf["model"])
        sd = load_file(str(path / "model.safetensors"))
    except (OSError, KeyError, ValueError) as exc:
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
