"""Language-model pretraining: next-token prediction on plain text, no souping.

The text is either generated (``tasks:MIX``, the passages of the task generators, e.g. for the "no finetuning"
ablation) or read from files (any corpus `ragsoup index` reads: Gutenberg .jsonl.gz shards, SQuAD JSON, .txt
directories). Each passage is tokenised as it is encoded for souping (``text <doc>``); a training row is
``seq_len + 1`` tokens of consecutive passages starting at a passage boundary. File text is tokenised once
into ``OUT/data/`` (int32 token stream + passage starts) and reused on resume.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ragsoup.checkpoint import load_model
from ragsoup.errors import RagsoupError
from ragsoup.tasks import generate_example
from ragsoup.tokenizer import Tokenizer, passage_ids, train_bpe
from ragsoup.train import (TrainConfig, lr_at, make_optimizer, make_tokenizer, new_model, parse_mix, save_run,
                           truncate_log)


@dataclass
class PretrainConfig:
    out: str = "runs/lm"
    text: str = "tasks:needle:3,needle-distractor:2,two-hop:1"  # "tasks:MIX" or comma-separated corpus paths
    passage_chars: int = 200  # generated passages (tasks:) / chunk size for files
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1000
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_batches: int = 4
    save_every: int = 250
    until: int = 0
    init: str | None = None
    tokenizer: str = "bpe:2048"
    arch: str = "mamba2"
    model: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PRETRAIN_PRESETS: dict[str, dict] = {
    # the LM that the finetuning-regime ablation starts from (docs/results.md): the default architecture, trained
    # only to predict the next token of the task generators' passages
    "ablation-lm": dict(out="runs/ablation-lm", text="tasks:needle:3,needle-distractor:2,two-hop:1", seq_len=256,
                        batch_size=16, steps=600, lr=2e-3, warmup_steps=50, eval_every=200, save_every=200,
                        model=dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2, chunk_size=64)),
    "ablation-lm-transformer": dict(out="runs/ablation-lm-transformer", arch="transformer",
                                    text="tasks:needle:3,needle-distractor:2,two-hop:1", seq_len=256, batch_size=16,
                                    steps=600, lr=2e-3, warmup_steps=50, eval_every=200, save_every=200,
                                    model=dict(d_model=256, n_layer=4, n_head=4, mlp_ratio=1.5)),
    "tiny": dict(out="runs/lm-tiny", text="tasks:needle:1", seq_len=64, batch_size=4, steps=10, warmup_steps=2,
                 eval_every=5, eval_batches=1, save_every=5, tokenizer="bytes",
                 model=dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16)),
}


# --- text sources --------------------------------------------------------------------------------------------------


class TaskText:
    """Passages of the task generators, drawn fresh for every row (an endless, seeded stream)."""

    def __init__(self, mix: str, passage_chars: int, tok: Tokenizer) -> None:
        self.mix, self.passage_chars, self.tok = parse_mix(mix), passage_chars, tok

    def row(self, rng: random.Random, n: int) -> list[int]:
        """n tokens of consecutive passages, starting at a passage boundary."""
        names, weights = zip(*self.mix)
        ids: list[int] = []
        while len(ids) < n:
            ex = generate_example(rng.choices(names, weights)[0], rng, 4, passage_chars=self.passage_chars)
            for d in ex.docs:
                ids += passage_ids(self.tok, d, 10_000)
        return ids[:n]


class TokenText:
    """A tokenised corpus: one int32 stream of ``text <doc>`` passages and the offset where each starts."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray) -> None:
        if len(starts) == 0:
            raise RagsoupError("no text to pretrain on: the corpus has no passages")
        self.tokens, self.starts = tokens, starts

    def row(self, rng: random.Random, n: int) -> list[int]:
        """n tokens from a random passage start (wrapping around the end of the stream)."""
        s = int(self.starts[rng.randrange(len(self.starts))])
        return np.take(self.tokens, np.arange(s, s + n), mode="wrap").tolist()

    def split(self, frac: float = 0.01) -> tuple["TokenText", "TokenText"]:
        """(train, held-out): the last ``frac`` of passages (at least one) are held out."""
        n_hold = max(1, int(len(self.starts) * frac)) if len(self.starts) > 1 else 0
        cut = len(self.starts) - n_hold
        if n_hold == 0:
            return self, self
        end = int(self.starts[cut])
        return TokenText(self.tokens[:end], self.starts[:cut]), TokenText(self.tokens[end:], self.starts[cut:] - end)


def corpus_texts(paths: list[str], passage_chars: int) -> Iterator[str]:
    """Passages of each corpus path (anything `ragsoup index` reads), chunked to about passage_chars."""
    from ragsoup.corpus import load_corpus

    for p in paths:
        for passage in load_corpus(p, max_chars=passage_chars).passages:
            yield passage.text


def tokenize_corpus(texts: Iterator[str], tok: Tokenizer, out_dir: Path) -> TokenText:
    """Tokenise passages into out_dir/{tokens,starts}.npy (written atomically) and return them."""
    chunks, starts, pos = [], [], 0
    for t in texts:
        ids = passage_ids(tok, t, 1 << 30)
        starts.append(pos)
        chunks.append(np.asarray(ids, dtype=np.int32))
        pos += len(ids)
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    st = np.asarray(starts, dtype=np.int64)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, arr in (("tokens", tokens), ("starts", st)):
        tmp = out_dir / f".{name}.tmp.npy"
        np.save(tmp, arr)
        tmp.replace(out_dir / f"{name}.npy")
    return TokenText(tokens, st)


def load_tokenized(out_dir: Path) -> TokenText | None:
    """The token stream written by tokenize_corpus, or None."""
    if not (out_dir / "tokens.npy").exists():
        return None
    return TokenText(np.load(out_dir / "tokens.npy", mmap_mode="r"), np.load(out_dir / "starts.npy"))


def _file_paths(cfg: PretrainConfig) -> list[str]:
    paths = [p.strip() for p in cfg.text.split(",") if p.strip()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RagsoupError(f"pretraining text not found: {', '.join(missing)} (give corpus paths or tasks:MIX)")
    return paths


def make_lm_tokenizer(cfg: PretrainConfig, n_passages: int = 20_000) -> Tokenizer:
    """The tokenizer for a new model: as `ragsoup train` makes it for tasks text, else a BPE on the files' text."""
    if cfg.text.startswith("tasks:") or cfg.tokenizer == "bytes":
        return make_tokenizer(TrainConfig(tasks=cfg.text.removeprefix("tasks:") if cfg.text.startswith("tasks:")
                                          else "needle:1", tokenizer=cfg.tokenizer, seed=cfg.seed,
                                          passage_chars=cfg.passage_chars))
    kind, _, size = cfg.tokenizer.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise RagsoupError(f"unknown tokenizer '{cfg.tokenizer}': use bytes or bpe:VOCAB (e.g. bpe:2048)")
    sample = []
    for i, t in enumerate(corpus_texts(_file_paths(cfg), cfg.passage_chars)):
        if i >= n_passages:
            break
        sample.append(t)
    return train_bpe(sample, int(size))


def text_source(cfg: PretrainConfig, tok: Tokenizer, out: Path) -> tuple[object, object]:
    """(train, held-out) sources with a ``row(rng, n)`` method."""
    if cfg.text.startswith("tasks:"):
        src = TaskText(cfg.text.removeprefix("tasks:"), cfg.passage_chars, tok)
        return src, src  # held-out rows come from seeds training never draws
    data = load_tokenized(out / "data") or tokenize_corpus(corpus_texts(_file_paths(cfg), cfg.passage_chars), tok,
                                                           out / "data")
    return data.split()


def lm_batch(src, rng: random.Random, batch_size: int, seq_len: int, device) -> torch.Tensor:
    """[batch, seq_len + 1] token rows."""
    return torch.tensor([src.row(rng, seq_len + 1) for _ in range(batch_size)], dtype=torch.long, device=device)


def lm_loss(model: torch.nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of the rows."""
    logits, _ = model(rows[:, :-1])
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, src, cfg: PretrainConfig) -> float:
    """Mean LM loss on cfg.eval_batches fixed held-out batches."""
    model.eval()
    rng = random.Random(f"heldout:{cfg.seed}")
    losses = [lm_loss(model, lm_batch(src, rng, cfg.batch_size, cfg.seq_len, model.device)).item()
              for _ in range(cfg.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


def pretrain(cfg: PretrainConfig, resume: bool = False, on_log: Callable[[dict], None] | None = None,
             device: str = "cpu") -> Path:
    """Pretrain (or resume) a language model per ``cfg``; checkpoints and log.jsonl under cfg.out."""
    if cfg.seq_len < 2 or cfg.batch_size < 1 or cfg.steps < 1:
        raise RagsoupError("need --seq-len >= 2, --batch-size >= 1 and --steps >= 1")
    out = Path(cfg.out)
    state_path = out / "trainer.pt"
    torch.manual_seed(cfg.seed)
    if resume:
        if not state_path.exists():
            raise RagsoupError(f"nothing to resume in {out}: no trainer.pt (pretrain without --resume first)")
        loaded = load_model(out / "last", device)
        model, tok = loaded.model, loaded.tokenizer
    elif cfg.init:
        loaded = load_model(cfg.init, device)
        model, tok = loaded.model, loaded.tokenizer
    else:
        tok = make_lm_tokenizer(cfg)
        model = new_model(cfg.arch, cfg.model, tok, device)
    out.mkdir(parents=True, exist_ok=True)
    train_src, held_src = text_source(cfg, tok, out)
    model.train()
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    step = 0
    if resume:
        st = torch.load(state_path, map_location=device, weights_only=False)
        opt.load_state_dict(st["opt"])
        step = st["step"]
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    truncate_log(out / "log.jsonl", step)
    use_amp = torch.device(device).type == "cuda"
    stop = min(cfg.steps, cfg.until) if cfg.until > 0 else cfg.steps
    with open(out / "log.jsonl", "a") as logf:
        t_last = time.perf_counter()
        while step < stop:
            rows = lm_batch(train_src, random.Random(f"lm:{cfg.seed}:{step}"), cfg.batch_size, cfg.seq_len, device)
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = lm_loss(model, rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            now = time.perf_counter()
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                   "grad_norm": round(float(gnorm), 4), "tokens": step * cfg.batch_size * cfg.seq_len,
                   "tok_per_s": round(rows.numel() / (now - t_last), 1)}
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == stop):
                rec["eval"] = {"heldout_loss": round(heldout_loss(model, held_src, cfg), 5)}
            if step % cfg.save_every == 0 or step == stop:
                _save(model, tok, opt, cfg, step, out)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if on_log:
                on_log(rec)
            t_last = time.perf_counter()
    return out / "last"


def _save(model, tok: Tokenizer, opt, cfg: PretrainConfig, step: int, out: Path) -> None:
    """Checkpoint a pretraining run."""
    meta = {"pretrain": {"step": step, "text": cfg.text, "seed": cfg.seed, "seq_len": cfg.seq_len,
                         "tokens": step * cfg.batch_size * cfg.seq_len}}
    save_run(model, tok, opt, step, out, meta, asdict(cfg))
