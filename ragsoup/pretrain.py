"""Language-model pretraining: next-token prediction on plain text, no souping.

The text is either generated (``tasks:MIX``, the passages of the task generators, e.g. for the "no finetuning"
ablation) or read from files (any corpus `ragsoup index` reads: Gutenberg .jsonl.gz shards, SQuAD JSON, .txt
directories). Each passage is tokenised as it is encoded for souping (``text <doc>``); a training row is
``seq_len + 1`` tokens of consecutive passages starting at a passage boundary. File text is tokenised once
into ``OUT/data/`` (uint16 shards + passage starts, a held-out slice, the tokenizer) and reused on resume, also
on a machine that has the shards but not the text.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ragsoup.errors import RagsoupError
from ragsoup.tasks import generate_example
from ragsoup.tasks.filler import gutenberg_shard, strip_gutenberg
from ragsoup.tasks.squad import SQUAD_TRAIN_PATH
from ragsoup.tokenizer import Tokenizer, answer_ids, passage_ids, prompt_ids, train_bpe
from ragsoup.train import (OptimConfig, TrainConfig, make_optimizer, make_tokenizer, new_model, parse_mix,
                           save_run, start_model, truncate_log, update, wall_deadline)


@dataclass
class PretrainConfig(OptimConfig):
    out: str = "runs/lm"
    text: str = "tasks:needle:3,needle-distractor:2,two-hop:1"  # "tasks:MIX" or comma-separated corpus paths
    qa: bool = False  # tasks: text: follow each example's passages with its question and answer (in-context QA)
    qa_k_max: int = 4  # with qa: 1..qa_k_max passages per example
    passage_chars: int = 200  # generated passages (tasks:) / chunk size for files
    seq_len: int = 256
    batch_size: int = 16
    eval_every: int = 250
    eval_batches: int = 4
    save_every: int = 250  # 0: only the last step's checkpoint
    init: str | None = None
    tokenizer: str = "bpe:2048"
    arch: str = "mamba2"
    model: dict = field(default_factory=dict)


# the real-text models' pretraining text: the four Gutenberg shards and SQuAD train (its held-out articles left out)
WIKI_TEXT = ",".join([*(gutenberg_shard(i) for i in range(4)), SQUAD_TRAIN_PATH])

PRETRAIN_PRESETS: dict[str, dict] = {
    # the LM that the finetuning-regime ablation starts from (docs/results.md): the default architecture trained
    # only on next-token prediction over task examples in the concat layout (passages, then question and answer),
    # so it answers from concatenated passages in context, as a pretrained LM does, but has never seen a soup
    "ablation-lm": dict(out="runs/ablation-lm", text="tasks:needle:1,needle-distractor:1", qa=True, qa_k_max=4,
                        seq_len=256, batch_size=16, steps=1000, lr=2e-3, warmup_steps=50, eval_every=250,
                        save_every=250, model=dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2,
                                                   chunk_size=64)),
    "ablation-lm-transformer": dict(out="runs/ablation-lm-transformer", arch="transformer",
                                    text="tasks:needle:1,needle-distractor:1", qa=True, qa_k_max=4, seq_len=256,
                                    batch_size=16, steps=1000, lr=2e-3, warmup_steps=50, eval_every=250,
                                    save_every=250, model=dict(d_model=256, n_layer=4, n_head=4, mlp_ratio=1.5)),
    # stage 1 of the real-text model wiki-small (docs/models.md): English prose (Gutenberg) + SQuAD training articles.
    # Tokenise on any machine (--prepare-only), then train on a GPU in <= 20-minute runs (benchmarks/train_wiki.sh).
    "wiki-small": dict(out="runs/wiki-lm", text=WIKI_TEXT,
                       passage_chars=600, tokenizer="bpe:8192", seq_len=512, batch_size=64, steps=6000, lr=1.5e-3,
                       warmup_steps=300, eval_every=500, eval_batches=8, save_every=500,
                       model=dict(d_model=384, n_layer=8, d_state=64, headdim=64, expand=2, chunk_size=64)),
    # a CPU-sized pilot of wiki-small (docs/models.md): the same tokenised data, the default model's size, ~40 minutes
    # on the 2-core CPU; it measures the recipe end to end where no GPU is lent
    "wiki-cpu": dict(out="runs/wiki-cpu-lm", text=WIKI_TEXT,
                     passage_chars=600, tokenizer="bpe:8192", seq_len=256, batch_size=16, steps=2000, lr=2e-3,
                     warmup_steps=100, eval_every=250, eval_batches=8, save_every=250,
                     model=dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2, chunk_size=64)),
    "tiny": dict(out="runs/lm-tiny", text="tasks:needle:1", seq_len=64, batch_size=4, steps=10, warmup_steps=2,
                 eval_every=5, eval_batches=1, save_every=5, tokenizer="bytes",
                 model=dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16)),
}


# --- text sources --------------------------------------------------------------------------------------------------


class TaskText:
    """Passages of the task generators, drawn fresh for every row (an endless, seeded stream).

    With ``qa``, each example's passages are followed by its question and answer in the concat layout
    (``p1 <doc> ... pk <doc> <q> question <a> answer <eos>``): the LM learns question answering over
    concatenated passages in context, as a pretrained LM has, but never sees a souped state.
    """

    def __init__(self, mix: str, passage_chars: int, tok: Tokenizer, qa: bool = False, k_max: int = 4) -> None:
        self.mix, self.passage_chars, self.tok, self.qa, self.k_max = parse_mix(mix), passage_chars, tok, qa, k_max

    def row(self, rng: random.Random, n: int) -> list[int]:
        """n tokens of consecutive examples, starting at a passage boundary."""
        names, weights = zip(*self.mix)
        ids: list[int] = []
        while len(ids) < n:
            k = rng.randint(1, self.k_max) if self.qa else 4
            ex = generate_example(rng.choices(names, weights)[0], rng, k, passage_chars=self.passage_chars)
            for d in ex.docs:
                ids += passage_ids(self.tok, d, 10_000)
            if self.qa:
                ids += prompt_ids(self.tok, ex.question) + answer_ids(self.tok, ex.answer)
        return ids[:n]


class TokenShards:
    """A tokenised corpus held as shards of (token stream, passage starts); rows come from shards by size."""

    def __init__(self, shards: list[tuple[np.ndarray, np.ndarray]]) -> None:
        self.shards = [(t, st) for t, st in shards if len(st)]
        if not self.shards:
            raise RagsoupError("no text to pretrain on: the tokenised corpus has no passages")
        self.weights = [len(t) for t, _ in self.shards]

    @property
    def n_tokens(self) -> int:
        """Tokens held."""
        return sum(self.weights)

    def row(self, rng: random.Random, n: int) -> list[int]:
        """n tokens from a random passage start of a shard (wrapping around that shard's end)."""
        tokens, starts = rng.choices(self.shards, self.weights)[0]
        s = int(starts[rng.randrange(len(starts))])
        return np.take(tokens, np.arange(s, s + n), mode="wrap").tolist()


def corpus_texts(paths: list[str], passage_chars: int) -> Iterator[str]:
    """Passages of each corpus path (anything `ragsoup index` reads), chunked to about passage_chars.

    A SQuAD JSON file gives only the paragraphs of its training articles (ragsoup's by-article split), so that
    pretraining never sees the held-out articles `ragsoup eval --task squad --split val` scores.
    """
    from ragsoup.corpus import chunk_text, load_corpus
    from ragsoup.tasks.squad import SQUAD_SPLIT_SEED, SQUAD_VAL_FRACTION, load_squad, split_by_article

    for p in paths:
        if p.lower().endswith((".json", ".json.gz")):
            try:
                records = load_squad(p)
            except RagsoupError:
                records = None  # not SQuAD: read it like `ragsoup index` does
            if records is not None:
                train, _ = split_by_article(records, SQUAD_VAL_FRACTION, SQUAD_SPLIT_SEED)
                for context in dict.fromkeys(r["context"] for r in train):
                    yield from chunk_text(context, max_chars=passage_chars)
                continue
        if p.lower().endswith((".jsonl", ".jsonl.gz")):  # e.g. Gutenberg shards: drop each book's licence header/footer
            yield from _jsonl_texts(Path(p), passage_chars)
            continue
        for passage in load_corpus(p, max_chars=passage_chars).passages:
            yield passage.text


def _jsonl_texts(path: Path, passage_chars: int) -> Iterator[str]:
    """Chunks of each record's ``text``, without a Project Gutenberg START/END header and footer."""
    import gzip

    from ragsoup.corpus import chunk_text
    from ragsoup.jsonl import iter_jsonl

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, obj in iter_jsonl(f, path):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise RagsoupError(f'{path}:{lineno}: expected an object with a "text" string')
            yield from chunk_text(strip_gutenberg(obj["text"]), max_chars=passage_chars)


HELDOUT_EVERY = 100  # every 100th passage of the corpus is held out (never trained on)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)


def write_shards(texts: Iterator[str], tok: Tokenizer, out_dir: Path, shard_tokens: int = 4_000_000,
                 sources: list[str] | None = None) -> dict:
    """Tokenise passages into out_dir: shard-NNNNN.npy (+ .starts.npy) of about shard_tokens tokens each,
    heldout.npy (every HELDOUT_EVERY-th passage), tokenizer.json and data.json (written last: marks it complete).

    Tokens are uint16 when the vocabulary fits: shards are what a GPU machine is sent, a few at a time.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    bufs: dict[str, tuple[list[np.ndarray], list[int], list[int]]] = {"train": ([], [], [0]), "heldout": ([], [], [0])}
    shards, n_passages = [], 0

    def flush(kind: str) -> None:
        chunks, starts, pos = bufs[kind]
        if not chunks:
            return
        name = "heldout" if kind == "heldout" else f"shard-{len(shards):05d}"
        _save_npy(out_dir / f"{name}.npy", np.concatenate(chunks).astype(dtype))
        _save_npy(out_dir / f"{name}.starts.npy", np.asarray(starts, dtype=np.int64))
        if kind == "train":
            shards.append({"name": name, "tokens": pos[0], "passages": len(starts)})
        bufs[kind] = ([], [], [0])

    for t in texts:
        ids = passage_ids(tok, t, 1 << 30)
        kind = "heldout" if n_passages % HELDOUT_EVERY == HELDOUT_EVERY - 1 else "train"
        n_passages += 1
        chunks, starts, pos = bufs[kind]
        starts.append(pos[0])
        chunks.append(np.asarray(ids, dtype=np.int64))
        pos[0] += len(ids)
        if kind == "train" and pos[0] >= shard_tokens:
            flush("train")
    flush("train")
    flush("heldout")
    tok.save(out_dir / "tokenizer.json")
    meta = {"shards": shards, "train_tokens": sum(x["tokens"] for x in shards), "passages": n_passages,
            "heldout_every": HELDOUT_EVERY, "dtype": np.dtype(dtype).name, "sources": sources or []}
    (out_dir / ".data.json.tmp").write_text(json.dumps(meta, indent=1))
    (out_dir / ".data.json.tmp").replace(out_dir / "data.json")
    return meta


def load_shards(data_dir: Path) -> tuple[TokenShards, TokenShards]:
    """(train, held-out) from a write_shards folder: every training shard present (a GPU run may carry a few)."""
    if not (data_dir / "data.json").exists():
        raise RagsoupError(f"{data_dir} holds no complete tokenised corpus (no data.json): prepare it with "
                           "ragsoup pretrain --text PATHS --prepare-only")
    meta = json.loads((data_dir / "data.json").read_text())

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        return np.load(data_dir / f"{name}.npy", mmap_mode="r"), np.load(data_dir / f"{name}.starts.npy")

    present = [s["name"] for s in meta["shards"] if (data_dir / f"{s['name']}.npy").exists()]
    if not present:
        raise RagsoupError(f"{data_dir}: none of its {len(meta['shards'])} training shards is present")
    held = [load("heldout")] if (data_dir / "heldout.npy").exists() else [load(present[-1])]
    return TokenShards([load(n) for n in present]), TokenShards(held)


def _file_paths(cfg: PretrainConfig) -> list[str]:
    paths = [p.strip() for p in cfg.text.split(",") if p.strip()]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RagsoupError(f"pretraining text not found: {', '.join(missing)} (give corpus paths or tasks:MIX)")
    return paths


def make_lm_tokenizer(cfg: PretrainConfig, n_passages: int = 40_000) -> Tokenizer:
    """The tokenizer for a new model: as `ragsoup train` makes it for tasks text, else a BPE on the files' text."""
    if cfg.text.startswith("tasks:") or cfg.tokenizer == "bytes":
        return make_tokenizer(TrainConfig(tasks=cfg.text.removeprefix("tasks:") if cfg.text.startswith("tasks:")
                                          else "needle:1", tokenizer=cfg.tokenizer, seed=cfg.seed,
                                          passage_chars=cfg.passage_chars))
    kind, _, size = cfg.tokenizer.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise RagsoupError(f"unknown tokenizer '{cfg.tokenizer}': use bytes or bpe:VOCAB (e.g. bpe:2048)")
    paths = _file_paths(cfg)
    sample: list[str] = []
    for p in paths:  # the same number of passages from each source
        for i, t in enumerate(corpus_texts([p], cfg.passage_chars)):
            if i >= n_passages // len(paths):
                break
            sample.append(t)
    return train_bpe(sample, int(size))


def prepare_data(cfg: PretrainConfig, out: Path, tok: Tokenizer | None = None) -> Tokenizer:
    """Make sure OUT/data holds the tokenised corpus (tokenising cfg.text once); returns its tokenizer.

    ``tok``: the model's tokenizer when starting from a checkpoint; the data must have been made with it.
    """
    from ragsoup.tokenizer import load_tokenizer

    data = out / "data"
    if (data / "data.json").exists():
        data_tok = (data / "tokenizer.json").read_text()
        if tok is not None:
            probe = out / ".tokenizer-check.json"
            tok.save(probe)
            same = probe.read_text() == data_tok
            probe.unlink()
            if not same:
                raise RagsoupError(f"{data} was tokenised with another tokenizer than the model's: delete it to retokenise")
            return tok
        return load_tokenizer(data / "tokenizer.json")
    tok = tok or make_lm_tokenizer(cfg)
    paths = _file_paths(cfg)
    write_shards(corpus_texts(paths, cfg.passage_chars), tok, data, sources=paths)
    return tok


def text_source(cfg: PretrainConfig, tok: Tokenizer, out: Path) -> tuple[object, object]:
    """(train, held-out) sources with a ``row(rng, n)`` method."""
    if cfg.text.startswith("tasks:"):
        src = TaskText(cfg.text.removeprefix("tasks:"), cfg.passage_chars, tok, cfg.qa, cfg.qa_k_max)
        return src, src  # held-out rows come from seeds training never draws
    return load_shards(out / "data")


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
    cfg.check_ranges(seq_len=2, batch_size=1, eval_every=0, eval_batches=1, save_every=0, until=0, qa_k_max=1)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    model, tok = start_model(out, resume, cfg.init, device, "pretrain")
    if cfg.text.startswith("tasks:"):
        tok = tok or make_lm_tokenizer(cfg)
    else:
        tok = prepare_data(cfg, out, tok)  # tokenised once into OUT/data, with the model's tokenizer if it has one
    if model is None:
        model = new_model(cfg.arch, cfg.model, tok, device)
    out.mkdir(parents=True, exist_ok=True)
    train_src, held_src = text_source(cfg, tok, out)
    model.train()
    opt, step = make_optimizer(model, cfg, out if resume else None, device)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    truncate_log(out / "log.jsonl", step)
    use_amp = torch.device(device).type == "cuda"
    stop = cfg.last_step()
    deadline = wall_deadline(cfg)
    with open(out / "log.jsonl", "a") as logf:
        t_last = time.perf_counter()
        while step < stop:
            rows = lm_batch(train_src, random.Random(f"lm:{cfg.seed}:{step}"), cfg.batch_size, cfg.seq_len, device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = lm_loss(model, rows)
            gnorm = update(model, opt, loss, cfg, step)
            step += 1
            now = time.perf_counter()
            rec = {"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                   "grad_norm": round(float(gnorm), 4), "tokens": step * cfg.batch_size * cfg.seq_len,
                   "tok_per_s": round(rows.numel() / (now - t_last), 1)}
            last = step == stop or time.monotonic() >= deadline
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last):
                rec["eval"] = {"heldout_loss": round(heldout_loss(model, held_src, cfg), 5)}
            if last or (cfg.save_every > 0 and step % cfg.save_every == 0):
                _save(model, tok, opt, cfg, step, out)
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if on_log:
                on_log(rec)
            t_last = time.perf_counter()
            if last:
                break
    return out / "last"


def _save(model, tok: Tokenizer, opt, cfg: PretrainConfig, step: int, out: Path) -> None:
    """Checkpoint a pretraining run."""
    meta = {"pretrain": {"step": step, "text": cfg.text, "seed": cfg.seed, "seq_len": cfg.seq_len,
                         "tokens": step * cfg.batch_size * cfg.seq_len}}
    save_run(model, tok, opt, step, out, meta, asdict(cfg))
