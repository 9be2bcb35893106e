"""Soup finetuning: one Mamba2 is encoder (each passage alone) and decoder (question -> answer from the pooled state).

One code path covers the paper's ablations: pooling operator, soup vs concat, frozen encoder (decoder-only),
and a curriculum over the number of passages k. Gradients flow through every passage's encode; each group of
passages is activation-checkpointed so peak memory stays flat as k grows.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ragsoup.checkpoint import load_model, save_checkpoint
from ragsoup.encode import encode_rows, pad_batch
from ragsoup.errors import RagsoupError
from ragsoup.evaluate import predict, score
from ragsoup.generate import concat_ids
from ragsoup.kvsoup import TransformerConfig, TransformerLM, encode_pool, is_kv_model
from ragsoup.model import Mamba2Config, Mamba2LM, States
from ragsoup.soup import centre, check_pool, pool_states
from ragsoup.store import unflatten_states
from ragsoup.tasks import generate_example
from ragsoup.tasks.base import SoupExample
from ragsoup.tasks.filler import FillerSource, ProseFiller, gutenberg_shard
from ragsoup.tasks.squad import (SQUAD_SPLIT_SEED, SQUAD_TRAIN_PATH, SQUAD_VAL_FRACTION, SquadPool, load_squad,
                                 split_by_article)
from ragsoup.tokenizer import ByteTokenizer, Tokenizer, answer_ids, passage_ids, prompt_ids, train_bpe


@dataclass
class OptimConfig:
    """Optimizer and schedule settings shared by soup finetuning and LM pretraining."""

    steps: int = 1000
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    max_minutes: float = 0.0  # stop, with a checkpoint, once a step ends past this wall-clock budget (0: no limit)
    until: int = 0  # stop after this step (0: at `steps`); the schedule still spans `steps` (resumable chunks)

    def last_step(self) -> int:
        """The step the schedule stops after: ``until`` when set and sooner, else ``steps``."""
        return min(self.steps, self.until) if self.until > 0 else self.steps

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check_ranges(self, **minimum: int) -> None:
        """Raise a RagsoupError naming the first option out of range (the shared ones, then ``minimum``'s)."""
        if not self.lr > 0:
            raise RagsoupError(f"--lr must be positive (got {self.lr})")
        for name, low in {"steps": 1, "warmup_steps": 0, "max_minutes": 0, **minimum}.items():
            if getattr(self, name) < low:
                raise RagsoupError(f"--{name.replace('_', '-')} must be at least {low} (got {getattr(self, name)})")


@dataclass
class TrainConfig(OptimConfig):
    out: str = "runs/default"
    tasks: str = "needle:1"  # weighted mix, e.g. "needle:2,needle-distractor:1,two-hop:1"
    mode: str = "soup"  # soup | concat
    pool: str = "mean"
    k_min: int = 1
    k_max: int = 16
    k_ramp_steps: int = 0  # curriculum: the largest k grows (log-scale) from k_min to k_max over these steps
    # hold k at k_min (the ramp waits) until the mean training loss of the last HOLD_WINDOW steps is below this
    # (0: off); a run from scratch sits at chance for a few hundred steps, and a seed that is still there when
    # k grows may never learn (docs/models.md, sections (k) and (l))
    k_hold_loss: float = 0.0
    # the steps held after warmup do not count (needs k_hold_loss): the learning rate stays at its peak while k is
    # held and the run (steps, until) ends that many steps later, so a late-leaving seed still gets its whole ramp
    k_hold_extend: bool = False
    # the task mix while k is held (needs k_hold_loss; empty: tasks): leave the plateau on easy data, then switch
    hold_tasks: str = ""
    batch_size: int = 8
    freeze_encoder: bool = False
    loss_on_question: bool = False
    extra_questions: int = 0  # also supervise up to N further questions per soup (other needles' keys)
    extra_min_k: int = 0  # ... only on soups of at least this many passages (0 or 1: on every soup)
    # Filler bank (off when 0): at most fresh_max passages per example are encoded with gradient; the other
    # k - fresh_max are filler states drawn from a bank re-encoded by the current model every bank_refresh
    # steps (no gradient). Linear pools only. Makes training at k in the hundreds affordable on a CPU.
    bank_size: int = 0
    bank_refresh: int = 25
    fresh_max: int = 8
    # Prose in the bank (off when None): that fraction of the bank is passages of this .txt / Gutenberg .jsonl(.gz)
    # text, the rest template filler; each example draws all its bank rows from one of the two kinds
    bank_prose: str | None = None
    bank_prose_frac: float = 0.5
    # Prose passages (off when 0): that share of the generated examples (needles and two-hop) write their facts and
    # fresh filler passages into windows of --bank-prose's text instead of template filler
    prose_passages: float = 0.0
    # Encode passages in length-sorted groups (ragsoup.encode.length_groups: less padding, faster) instead of in
    # their order. Off by default: it changes float rounding, and so the trajectory of the documented runs
    group_by_length: bool = False
    ckpt_group: int = 16  # passages per activation-checkpointed encode group; 0 = no checkpointing
    passage_chars: int = 200
    max_tokens: int = 512
    eval_every: int = 250
    eval_ks: str = "1,4,16"
    eval_n: int = 32
    save_every: int = 250  # 0: only the last step's checkpoint
    init: str | None = None
    tokenizer: str = "bpe:2048"  # "bytes" or "bpe:VOCAB" (trained on a sample of the task mix)
    init_seed: int | None = None  # seed of a fresh run's initial weights and BPE (None: seed, which draws the data)
    # a fresh run's dt and A per head: random (independent draws) or spread (stratified and paired: every layer gets
    # heads from the longest memory to the shortest; Mamba2LM.spread_timescales)
    timescales: str = "random"
    squad: str | None = None  # SQuAD v1.1 JSON for the "squad" / "squad-segments" tasks (training articles only)
    model: dict = field(default_factory=dict)  # Mamba2Config fields (ignored with init)
    arch: str = "mamba2"  # mamba2 | transformer (the averaged-KV-cache baseline, ragsoup.kvsoup; model = TransformerConfig)

    def fresh_seed(self) -> int:
        """The seed of a fresh run's initial weights and tokenizer: init_seed when given, else seed."""
        return self.seed if self.init_seed is None else self.init_seed


# stage 2 of the real-text models, soup finetuning on SQuAD (each also has a concat twin in PRESETS)
_WIKI_SMALL_SQUAD = dict(
    out="runs/wiki-squad", init="runs/wiki-lm/last", squad=SQUAD_TRAIN_PATH, tasks="squad:3,squad-segments:1", k_min=1,
    k_max=16, k_ramp_steps=1500, steps=4000, batch_size=32, lr=5e-4, warmup_steps=100, passage_chars=600,
    max_tokens=512, eval_every=500, eval_ks="1,5", eval_n=200, save_every=500, ckpt_group=16,
)
_WIKI_CPU_SQUAD = dict(
    out="runs/wiki-cpu-squad", init="runs/wiki-cpu-lm/last", squad=SQUAD_TRAIN_PATH, tasks="squad:3,squad-segments:1",
    k_min=1, k_max=5, k_ramp_steps=300, steps=700, batch_size=8, lr=1e-3, warmup_steps=30, passage_chars=600,
    max_tokens=512, eval_every=200, eval_ks="1,5", eval_n=64, save_every=100, ckpt_group=0, extra_questions=4,
)

PRESETS: dict[str, dict] = {
    # the shipped default model (docs/models.md): byte-level, needle + two-hop mix
    "default": dict(
        out="runs/default", tasks="needle:3,needle-distractor:2,two-hop:1", k_min=1, k_max=64, k_ramp_steps=2000,
        steps=3000, batch_size=8, lr=2e-3, warmup_steps=100, passage_chars=200, eval_every=500, eval_ks="1,4,16,64",
        eval_n=32, save_every=250, ckpt_group=0,
        model=dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2, chunk_size=64),
    ),
    # stage 2 of the shipped default model: from stage 1's checkpoint, k up to 512 through a filler bank,
    # several questions per soup (see docs/models.md)
    "default-k512": dict(
        out="runs/default-k512", init="runs/default/last", tasks="needle:3,needle-distractor:3,two-hop:1",
        k_min=1, k_max=512, k_ramp_steps=300, steps=900, batch_size=8, lr=1e-3, warmup_steps=30, passage_chars=200,
        eval_every=300, eval_ks="4,16,64,256", eval_n=32, save_every=100, ckpt_group=0, extra_questions=3,
        bank_size=512, bank_refresh=20, fresh_max=8,
    ),
    # stage 3 of the shipped default model: more key matching (distractor and multi-key needles), k up to 256
    "default-keys": dict(
        out="runs/default-keys", init="runs/default-k512/last",
        tasks="needle:2,needle-distractor:4,needle-multikey:1,two-hop:1", k_min=1, k_max=256, k_ramp_steps=100,
        steps=1000, batch_size=8, lr=7e-4, warmup_steps=20, passage_chars=200, eval_every=250, eval_ks="4,16,64,256",
        eval_n=32, save_every=100, ckpt_group=0, extra_questions=3, bank_size=512, bank_refresh=20, fresh_max=8,
    ),
    # stage 4 of the shipped default model: single needles at large k (the filler bank up to 512), keeping the
    # key-matching and two-hop data in the mix
    "default-needle": dict(
        out="runs/default-needle", init="runs/default-keys/last",
        tasks="needle:4,needle-distractor:2,needle-multikey:1,two-hop:1", k_min=1, k_max=512, k_ramp_steps=50,
        steps=1200, batch_size=8, lr=5e-4, warmup_steps=20, passage_chars=200, eval_every=400, eval_ks="16,64,256",
        eval_n=32, save_every=100, ckpt_group=0, extra_questions=3, bank_size=512, bank_refresh=20, fresh_max=8, seed=4,
    ),
    # stage 5 of the shipped default model: two-hop chaining (two-hop 4 : needle 1 : distractor 1), k 2-8, no bank;
    # the demo's two-hop questions need it (with ask --hops 2); large-k needles then need --pool centered
    "default-twohop": dict(
        out="runs/default-twohop", init="runs/default-needle/last", tasks="needle:1,needle-distractor:1,two-hop:4",
        k_min=2, k_max=8, k_ramp_steps=0, steps=7000, batch_size=8, lr=5e-4, warmup_steps=20, passage_chars=200,
        eval_every=1000, eval_ks="5", eval_n=32, save_every=500, ckpt_group=0, seed=7,
    ),
    # stage 6 of the shipped default model: large k again (the filler bank up to 512) after stage 5's small k, two-hop
    # kept at 3 in 8; half of the bank is Gutenberg prose (books-00; evaluations read books-03); the shipped model
    # stopped at step 558 of this 600-step schedule (--until 558)
    "default-final": dict(
        out="runs/default-final", init="runs/default-twohop/last", tasks="needle:4,needle-distractor:1,two-hop:3",
        k_min=1, k_max=512, k_ramp_steps=50, steps=600, batch_size=8, lr=3e-4, warmup_steps=20, passage_chars=200,
        eval_every=300, eval_ks="5,64", eval_n=32, save_every=100, ckpt_group=0, extra_questions=3, bank_size=512,
        bank_refresh=20, fresh_max=8, seed=9, bank_prose=gutenberg_shard(0),
        bank_prose_frac=0.5,
    ),
    # stage 2 of wiki-small: soup finetuning on SQuAD training articles (gold paragraph, or its segments, plus
    # distractors from the same and other articles), k growing 1 -> 16; held-out EM on the held-out articles
    "wiki-small-squad": _WIKI_SMALL_SQUAD,
    # the same budget reading concatenated passages (the baseline wiki-small's soup is compared with)
    "wiki-small-squad-concat": dict(_WIKI_SMALL_SQUAD, out="runs/wiki-squad-concat", mode="concat"),
    # the CPU pilot of the same two stages (docs/models.md "wiki-cpu"): the default model's size, k 1 -> 5, four
    # more questions per context (the gold paragraph's other questions, then the distractors'), ~24 and ~18 minutes
    "wiki-cpu-squad": _WIKI_CPU_SQUAD,
    "wiki-cpu-squad-concat": dict(_WIKI_CPU_SQUAD, out="runs/wiki-cpu-squad-concat", mode="concat"),
    # the base of the finetuning-regime ablation (benchmarks/ablations.py): the default architecture trained from
    # scratch to answer from concatenated passages (an in-context reader); it has never seen a soup
    "ablation-reader": dict(
        out="runs/ablation-reader", mode="concat", tasks="needle:1,needle-distractor:1", k_min=1, k_max=4,
        k_ramp_steps=1000, steps=3000, batch_size=8, lr=2e-3, warmup_steps=50, passage_chars=200, eval_every=500,
        eval_ks="1,4", eval_n=32, save_every=250, ckpt_group=0,
        model=dict(d_model=256, n_layer=4, d_state=64, headdim=64, expand=2, chunk_size=64),
    ),
    "ablation-reader-transformer": dict(
        out="runs/ablation-reader-transformer", arch="transformer", mode="concat",
        tasks="needle:1,needle-distractor:1", k_min=1, k_max=4, k_ramp_steps=1000, steps=3000, batch_size=16, lr=1e-3,
        warmup_steps=50, passage_chars=200, eval_every=500, eval_ks="1,4", eval_n=32, save_every=250, ckpt_group=0,
        loss_on_question=True,  # the dense signal it needs: answer-only loss at batch 8 / lr 2e-3 never left chance
        model=dict(d_model=256, n_layer=4, n_head=4, mlp_ratio=1.5),
    ),
    # seconds-long smoke run
    "tiny": dict(
        out="runs/tiny", tasks="needle:1", k_min=1, k_max=4, steps=20, batch_size=4, lr=3e-3, warmup_steps=2,
        passage_chars=120, eval_every=10, eval_ks="1,4", eval_n=4, save_every=10,
        tokenizer="bytes", model=dict(d_model=32, n_layer=2, d_state=16, headdim=16, chunk_size=16),
    ),
}


def parse_mix(spec: str) -> list[tuple[str, float]]:
    """'needle:2,two-hop:1' -> [(task, weight)]."""
    out = []
    for part in spec.split(","):
        name, _, w = part.strip().partition(":")
        try:
            out.append((name, float(w) if w else 1.0))
        except ValueError as exc:
            raise RagsoupError(f"bad task weight in '{part}': use name:weight, e.g. needle:2") from exc
    if not out or sum(w for _, w in out) <= 0:
        raise RagsoupError(f"empty task mix '{spec}'")
    return out


def k_for_step(cfg: TrainConfig, rng: random.Random, step: int, ramp_start: int | None = 0) -> int:
    """Number of passages for this step: log-uniform in [k_min, curriculum bound]; the bound's ramp starts at
    ``ramp_start`` (None: not yet, k = k_min)."""
    if ramp_start is None:
        frac = 0.0
    elif cfg.k_ramp_steps <= 0:
        frac = 1.0
    else:
        frac = min(1.0, max(0, step - ramp_start) / cfg.k_ramp_steps)
    hi = cfg.k_min * (cfg.k_max / cfg.k_min) ** frac
    return max(cfg.k_min, min(cfg.k_max, int(round(math.exp(rng.uniform(math.log(cfg.k_min), math.log(hi)))))))


HOLD_WINDOW = 50  # steps whose mean training loss --k-hold-loss compares


class RampHold:
    """When the k curriculum's ramp starts: step 0 without --k-hold-loss, else the first step at which the mean
    loss of the last HOLD_WINDOW steps (the answer tokens' loss) is below it (``start`` is None until then)."""

    def __init__(self, threshold: float, past: Iterable[dict] = ()) -> None:
        self.threshold = threshold
        self.start: int | None = 0 if threshold <= 0 else None
        self.recent: deque[float] = deque(maxlen=HOLD_WINDOW)
        for rec in past:  # a resumed run replays its log's losses
            self.observe_record(rec)

    def observe_record(self, rec: dict) -> bool:
        """``observe`` a log record's watched loss: its answer tokens' (``answer_loss`` when logged, else ``loss``)."""
        return self.observe(rec["step"], rec.get("answer_loss", rec["loss"]))

    def observe(self, step: int, loss: float) -> bool:
        """Take the loss logged at ``step``; True when the ramp starts at this step."""
        if self.start is not None:
            return False
        self.recent.append(loss)
        if len(self.recent) == HOLD_WINDOW and sum(self.recent) / HOLD_WINDOW < self.threshold:
            self.start = step
            return True
        return False

    def clock(self, step: int, warmup: int) -> int:
        """The schedule's step after ``step`` steps when held steps past ``warmup`` do not count."""
        held_until = step if self.start is None else min(step, self.start)
        return step - max(0, held_until - warmup)


SQUAD_TASKS = ("squad", "squad-segments")


@functools.lru_cache(maxsize=2)
def squad_pools(path: str) -> tuple[SquadPool, SquadPool]:
    """(train, held-out) pools of a SQuAD file, split by article (5% held out, fixed seed: never trained on)."""
    train, val = split_by_article(load_squad(path), val_fraction=SQUAD_VAL_FRACTION, seed=SQUAD_SPLIT_SEED)
    return SquadPool(train), SquadPool(val)


def check_tasks(cfg: TrainConfig) -> None:
    """Every task of the mix exists, and SQuAD tasks have their file."""
    from ragsoup.tasks import TASKS

    mixes = [("--tasks", cfg.tasks)] + ([("--hold-tasks", cfg.hold_tasks)] if cfg.hold_tasks else [])
    for option, spec in mixes:
        for name, _ in parse_mix(spec):
            if name not in TASKS + SQUAD_TASKS:
                raise RagsoupError(f"unknown task '{name}' in {option}: use {', '.join(TASKS + SQUAD_TASKS)}")
            if name in SQUAD_TASKS and not cfg.squad:
                raise RagsoupError(f"task {name} needs --squad PATH (SQuAD v1.1 JSON, e.g. train-v1.1.json.gz)")


@functools.lru_cache(maxsize=2)
def prose_filler(path: str) -> ProseFiller:
    """The prose source of a .txt / Gutenberg .jsonl(.gz) file, read once per process."""
    return ProseFiller(path)


PROSE_TASK_PREFIXES = ("needle", "two-hop")  # generators that take a filler source


def draw_example(cfg: TrainConfig, task: str, rng: random.Random, k: int, heldout: bool = False) -> SoupExample:
    """One example of a generated task, or of SQuAD (gold paragraph, or its segments, plus distractors)."""
    if task not in SQUAD_TASKS:
        kw = {}
        if cfg.prose_passages > 0 and task.startswith(PROSE_TASK_PREFIXES) and rng.random() < cfg.prose_passages:
            kw["filler"] = prose_filler(cfg.bank_prose)
        return generate_example(task, rng, k, passage_chars=cfg.passage_chars, **kw)
    if not cfg.squad:
        raise RagsoupError(f"task {task} needs --squad PATH (SQuAD v1.1 JSON, e.g. train-v1.1.json.gz)")
    pool = squad_pools(cfg.squad)[1 if heldout else 0]
    rec = pool.records[rng.randrange(len(pool.records))]
    return pool.example(rng, rec, k, same_article=1, segment_chars=cfg.passage_chars if task == "squad-segments" else 0)


def mix_spec(cfg: TrainConfig, held: bool) -> str:
    """The task mix of a step: --hold-tasks while k is held (when given), else --tasks."""
    return cfg.hold_tasks if held and cfg.hold_tasks else cfg.tasks


def k_of_step(cfg: TrainConfig, step: int, ramp_start: int | None = 0) -> int:
    """The k that ``make_batch`` draws for ``step`` (its first draw from the step's seed), without the examples."""
    return k_for_step(cfg, random.Random(f"{cfg.seed}:{step}"), step, ramp_start)


def bank_needed(cfg: TrainConfig, step: int, ramp_start: int | None) -> bool:
    """Whether a bank refreshed at ``step`` is read before the next due refresh: some step up to it draws k above
    fresh_max (or the centered pool reads the bank's mean). Skipping a refresh that nothing reads changes no result."""
    if cfg.pool == "centered":
        return True
    if ramp_start is None:  # held at k_min until the loss decides; checked again every step until the release
        return cfg.k_min > cfg.fresh_max
    end = (step // cfg.bank_refresh + 1) * cfg.bank_refresh
    return any(k_of_step(cfg, s, ramp_start) > cfg.fresh_max for s in range(step, end))


def make_batch(cfg: TrainConfig, step: int, ramp_start: int | None = 0) -> tuple[int, list[SoupExample]]:
    """The examples of one step, a pure function of (seed, step, ramp_start) so that resuming replays the same data."""
    rng = random.Random(f"{cfg.seed}:{step}")
    mix = parse_mix(mix_spec(cfg, held=ramp_start is None))
    k = k_for_step(cfg, rng, step, ramp_start)
    k_fresh = min(k, cfg.fresh_max) if cfg.bank_size > 0 else k
    names, weights = zip(*mix)
    batch = [
        draw_example(cfg, rng.choices(names, weights)[0], rng, k_fresh) for _ in range(cfg.batch_size)
    ]
    return k, batch


def make_tokenizer(cfg: TrainConfig, n_examples: int = 3000) -> Tokenizer:
    """The tokenizer named by cfg.tokenizer; a BPE is trained on examples of the first task mix (seeded)."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    kind, _, size = cfg.tokenizer.partition(":")
    if kind != "bpe" or not size.isdigit():
        raise RagsoupError(f"unknown tokenizer '{cfg.tokenizer}': use bytes or bpe:VOCAB (e.g. bpe:2048)")
    rng = random.Random(f"tokenizer:{cfg.fresh_seed()}")
    names, weights = zip(*parse_mix(mix_spec(cfg, held=cfg.k_hold_loss > 0)))
    texts: list[str] = []
    for _ in range(n_examples):
        ex = draw_example(cfg, rng.choices(names, weights)[0], rng, 4)
        texts += ex.docs + [ex.question, ex.answer]
    return train_bpe(texts, int(size))


def new_model(arch: str, model: dict, tok: Tokenizer, device: str = "cpu") -> torch.nn.Module:
    """A freshly initialised model of ``arch`` (mamba2 | transformer) sized for ``tok`` (vocab padded to 8)."""
    conf = {**model, "vocab_size": -(-tok.vocab_size // 8) * 8}
    if arch == "transformer":  # the averaged-KV-cache baseline (ragsoup.kvsoup)
        return TransformerLM(TransformerConfig.from_dict(conf)).to(device)
    if arch != "mamba2":
        raise RagsoupError(f"unknown arch '{arch}': use mamba2 or transformer")
    return Mamba2LM(Mamba2Config.from_dict(conf)).to(device)


def start_model(out: Path, resume: bool, init: str | None, device: str, command: str) -> tuple:
    """(model, tokenizer) a run starts from: OUT/last when resuming, else ``init``; (None, None) for a new model."""
    if resume:
        if not (out / "trainer.pt").exists():
            raise RagsoupError(f"nothing to resume in {out}: no trainer.pt ({command} without --resume first)")
        loaded = load_model(out / "last", device)
        return loaded.model, loaded.tokenizer
    if init:
        loaded = load_model(init, device)
        return loaded.model, loaded.tokenizer
    return None, None


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, resume_from: Path | None = None,
                   device: str = "cpu") -> tuple[torch.optim.AdamW, int]:
    """AdamW (betas 0.9/0.95, weight decay on matrices only) and the step to start at: 0, or the step of
    ``resume_from``/trainer.pt, whose optimizer state is loaded."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    if resume_from is None:
        return opt, 0
    st = torch.load(resume_from / "trainer.pt", map_location=device, weights_only=False)
    opt.load_state_dict(st["opt"])
    return opt, st["step"]


def update(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, cfg: OptimConfig,
           step: int) -> float:
    """One optimizer update at ``step``: the scheduled learning rate, backward, gradient clipping; the grad norm."""
    for g in opt.param_groups:
        g["lr"] = lr_at(cfg, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return float(gnorm)


def lr_at(cfg: OptimConfig, step: int) -> float:
    """Linear warmup then cosine decay to min_lr_frac * lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def encode_groups(model: Mamba2LM, seqs: list[list[int]], pad_id: int, group: int, grad: bool,
                  by_length: bool) -> States:
    """Encode passages independently, at most ``group`` at a time (0: any), as ``encode_rows`` does, as states."""
    return unflatten_states(encode_rows(model, seqs, pad_id, group, grad, by_length), model.cfg)


class FillerBank:
    """Filler passages' state rows, encoded without gradient by the model as it is at refresh time."""

    def __init__(self, cfg: TrainConfig) -> None:
        if cfg.pool not in ("mean", "sum", "centered"):
            raise RagsoupError(f"--bank-size needs a linear pool (mean, sum or centered), not '{cfg.pool}'")
        self.cfg = cfg
        self.rows: torch.Tensor | None = None

    def refresh(self, model: Mamba2LM, tok: Tokenizer, step: int) -> None:
        """Re-encode bank_size fresh filler passages (template, then prose if any) with the current weights."""
        rng = random.Random(f"bank:{self.cfg.seed}:{step}")
        n_prose = self.n_prose()
        prose = [prose_filler(self.cfg.bank_prose)] * n_prose if n_prose else []
        sources = [FillerSource()] * (self.cfg.bank_size - n_prose) + prose
        seqs = [passage_ids(tok, src.passage(rng, self.cfg.passage_chars), self.cfg.max_tokens) for src in sources]
        self.rows = encode_rows(model, seqs, tok.pad_id, 64, False, self.cfg.group_by_length).float()
        self.background = self.rows.mean(0)  # [D]: the current model's background state, for the centered pool

    def n_prose(self) -> int:
        """How many of the bank's rows (its last ones) are prose passages."""
        if not self.cfg.bank_prose:
            return 0
        return min(self.cfg.bank_size - 1, max(1, round(self.cfg.bank_prose_frac * self.cfg.bank_size)))

    def sums(self, n_each: int, batch: int, step: int) -> torch.Tensor:
        """[batch, D]: for each example, the sum of n_each bank rows drawn with replacement from one kind of text."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        n, n_prose = self.rows.shape[0], self.n_prose()
        idx = torch.randint(0, n - n_prose, (batch, n_each), generator=gen)
        if n_prose:
            prose = torch.rand(batch, generator=gen) < n_prose / n  # [batch]: this example's filler is prose
            idx_prose = n - n_prose + torch.randint(0, n_prose, (batch, n_each), generator=gen)
            idx = torch.where(prose[:, None], idx_prose, idx)
        counts = torch.zeros(batch, n)
        counts.scatter_add_(1, idx, torch.ones(batch, n_each))
        return counts.to(self.rows.device) @ self.rows


def _decoder_batch(tok: Tokenizer, prefixes: list[list[int]], qas: list[tuple[str, str]], loss_on_question: bool, device):
    """Inputs, targets, loss mask and answer mask (the answer tokens alone) for `prefix <q> question <a> answer
    <eos>` sequences; the loss mask adds the question's tokens with ``loss_on_question``."""
    seqs, starts, answers = [], [], []
    for pre, (question, answer) in zip(prefixes, qas):
        prompt = pre + prompt_ids(tok, question)
        seqs.append(prompt + answer_ids(tok, answer))
        answers.append(len(prompt) - 1)
        starts.append(len(pre) if loss_on_question else len(prompt) - 1)
    ids, lengths = pad_batch(seqs, tok.pad_id, device)
    inp, tgt = ids[:, :-1], ids[:, 1:]
    pos = torch.arange(inp.size(1), device=device)[None]
    within = pos < (lengths - 1)[:, None]
    mask = (pos >= torch.tensor(starts, device=device)[:, None]) & within
    if not loss_on_question:  # the loss mask is the answer mask
        return inp, tgt, mask, mask
    return inp, tgt, mask, (pos >= torch.tensor(answers, device=device)[:, None]) & within


def _answer_from(model: Mamba2LM, tok: Tokenizer, cfg: TrainConfig, k: int, batch: list[SoupExample],
                 states: States) -> tuple[torch.Tensor, ...]:
    """Decoder inputs, targets, loss and answer masks and logits of each example's question (and its extra
    questions, when cfg asks for them at this k) read from that example's state."""
    qas, owner = [], []  # each question, and the example (soup) it is asked of
    n_extra = cfg.extra_questions if k >= cfg.extra_min_k else 0
    for i, ex in enumerate(batch):
        for qa in [(ex.question, ex.answer)] + ex.extra[:n_extra]:
            qas.append(qa)
            owner.append(i)
    if len(qas) > len(batch):
        sel = torch.tensor(owner, device=model.device)
        states = [type(st)(*(t.index_select(0, sel) for t in st)) for st in states]
    inp, tgt, mask, answer = _decoder_batch(tok, [[] for _ in qas], qas, cfg.loss_on_question, model.device)
    logits, _ = model(inp, states)
    return inp, tgt, mask, answer, logits


def batch_losses(model: Mamba2LM, tok: Tokenizer, cfg: TrainConfig, k: int, batch: list[SoupExample],
                 bank: FillerBank | None = None, step: int = 0, encoder: Mamba2LM | None = None
                 ) -> tuple[torch.Tensor, int, float]:
    """The loss of one batch (mean cross-entropy of its answer tokens, and of its question tokens with
    cfg.loss_on_question), the number of tokens processed, and the answer tokens' mean cross-entropy alone.

    Each example holds k passages, or (with a filler bank) len(docs) fresh ones plus k - len(docs) from the bank.
    Passages are encoded by ``encoder`` when given (decoder-only finetuning), else by the model itself; with
    cfg.freeze_encoder no gradient flows through the encode pass.
    """
    dev = model.device
    enc = encoder if encoder is not None else model
    if cfg.mode == "soup":
        seqs = [passage_ids(tok, d, cfg.max_tokens) for ex in batch for d in ex.docs]
        k_fresh = len(batch[0].docs)
        if bank is not None and k > k_fresh:
            rows = encode_rows(enc, seqs, tok.pad_id, cfg.ckpt_group, not cfg.freeze_encoder, cfg.group_by_length)
            total = rows.view(len(batch), k_fresh, -1).sum(1) + bank.sums(k - k_fresh, len(batch), step)
            if cfg.pool == "centered":
                total = centre(total / k, bank.background, k)
            pooled = unflatten_states(total / k if cfg.pool == "mean" else total, model.cfg)
        elif is_kv_model(model):  # transformer baseline: each passage's KV cache, averaged (ragsoup.kvsoup)
            pooled = encode_pool(enc, seqs, tok.pad_id, cfg.ckpt_group, not cfg.freeze_encoder, k_fresh, cfg.pool)
        else:
            states = encode_groups(enc, seqs, tok.pad_id, cfg.ckpt_group, not cfg.freeze_encoder,
                                   cfg.group_by_length)
            bg = bank_background(bank, model) if cfg.pool == "centered" else None
            pooled = pool_states(states, k_fresh, cfg.pool, bg)
        inp, tgt, mask, answer, logits = _answer_from(model, tok, cfg, k, batch, pooled)
        n_tok = sum(len(s) for s in seqs) + inp.numel()
    elif cfg.extra_questions > 0 and not is_kv_model(model):
        # concat with several questions per context: encode each concatenation once (the same function as reading
        # it in one pass with the question), then answer every question from its final state, as the soup does
        seqs = [concat_ids(tok, ex.docs, cfg.max_tokens) for ex in batch]
        states = encode_groups(enc, seqs, tok.pad_id, cfg.ckpt_group, not cfg.freeze_encoder,
                               cfg.group_by_length)
        inp, tgt, mask, answer, logits = _answer_from(model, tok, cfg, k, batch, states)
        n_tok = sum(len(s) for s in seqs) + inp.numel()
    else:
        prefixes = [concat_ids(tok, ex.docs, cfg.max_tokens) for ex in batch]
        inp, tgt, mask, answer = _decoder_batch(tok, prefixes, [(ex.question, ex.answer) for ex in batch],
                                                cfg.loss_on_question, dev)
        logits, _ = model(inp)
        n_tok = inp.numel()
    ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none")
    m = mask.reshape(-1).float()
    loss = (ce * m).sum() / m.sum().clamp(min=1)
    if not cfg.loss_on_question:  # the loss mask is the answer mask: the loss is the answer tokens' loss
        return loss, n_tok, float(loss.detach())
    a = answer.reshape(-1).float()
    return loss, n_tok, float((ce.detach() * a).sum() / a.sum().clamp(min=1))


def loss_on_batch(model: Mamba2LM, tok: Tokenizer, cfg: TrainConfig, k: int, batch: list[SoupExample],
                  bank: FillerBank | None = None, step: int = 0, encoder: Mamba2LM | None = None
                  ) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of one batch's answer tokens (and question tokens with cfg.loss_on_question), and the
    number of tokens processed (``batch_losses`` without the answer tokens' mean)."""
    return batch_losses(model, tok, cfg, k, batch, bank, step, encoder)[:2]


def eval_sets(cfg: TrainConfig) -> dict[int, list[SoupExample]]:
    """Held-out examples per k (seeds disjoint from training's)."""
    out = {}
    for k in [int(x) for x in cfg.eval_ks.split(",") if x.strip()]:
        rng = random.Random(f"eval:{cfg.seed}:{k}")
        names, weights = zip(*parse_mix(cfg.tasks))
        out[k] = [draw_example(cfg, rng.choices(names, weights)[0], rng, k, heldout=True)
                  for _ in range(cfg.eval_n)]
    return out


def bank_background(bank: FillerBank | None, model: Mamba2LM) -> States | None:
    """The filler bank's mean state as per-layer states (batch 1), or None without a bank."""
    return None if bank is None else unflatten_states(bank.background[None], model.cfg)


def run_eval(model: Mamba2LM, tok: Tokenizer, cfg: TrainConfig, sets: dict[int, list[SoupExample]],
             encoder: Mamba2LM | None = None, bank: FillerBank | None = None) -> dict[str, float]:
    """EM per k on the held-out sets (the centered pool reads the bank's mean state as its background)."""
    model.eval()
    res = {}
    bg = bank_background(bank, model) if cfg.pool == "centered" else None
    for k, exs in sets.items():
        preds = predict(model, tok, exs, cfg.mode, cfg.pool, max_tokens=cfg.max_tokens, encoder=encoder,
                        background=bg)
        res[f"em@{k}"] = score(preds, exs)["em"]
    model.train()
    return res


Log = Callable[[dict], None]


def train(cfg: TrainConfig, resume: bool = False, on_log: Log | None = None, device: str = "cpu") -> Path:
    """Train (or resume) per ``cfg``; writes checkpoints and log.jsonl under cfg.out; returns the final checkpoint."""
    check_pool(cfg.pool)
    if cfg.pool == "centered" and cfg.bank_size <= 0:
        raise RagsoupError("--pool centered trains against the filler bank's mean state as its background: give "
                           "--bank-size N (e.g. 256), then run `ragsoup background` on the result")
    if cfg.mode not in ("soup", "concat"):
        raise RagsoupError(f"unknown mode '{cfg.mode}': use soup or concat")
    if cfg.bank_prose:
        if cfg.bank_size < 2:
            raise RagsoupError("--bank-prose puts prose into the filler bank: give --bank-size N too (e.g. 512)")
        if not Path(cfg.bank_prose).is_file():
            raise RagsoupError(f"--bank-prose: no such file {cfg.bank_prose} (a .txt or Gutenberg .jsonl(.gz) file)")
        if not 0.0 < cfg.bank_prose_frac < 1.0:
            raise RagsoupError(f"--bank-prose-frac must be between 0 and 1 (got {cfg.bank_prose_frac})")
    if not 0.0 <= cfg.prose_passages <= 1.0:
        raise RagsoupError(f"--prose-passages must be between 0 and 1 (got {cfg.prose_passages})")
    if cfg.prose_passages > 0 and not cfg.bank_prose:
        raise RagsoupError("--prose-passages writes examples into the prose of --bank-prose: give --bank-prose FILE "
                           "(and --bank-size N) too")
    if cfg.arch not in ("mamba2", "transformer"):
        raise RagsoupError(f"unknown arch '{cfg.arch}': use mamba2 or transformer")
    bank_minimum = dict(bank_refresh=1, fresh_max=1) if cfg.bank_size > 0 else {}
    cfg.check_ranges(batch_size=1, k_ramp_steps=0, k_hold_loss=0, extra_questions=0, extra_min_k=0, bank_size=0,
                     ckpt_group=0, eval_every=0, eval_n=1, save_every=0, until=0, max_tokens=1, **bank_minimum)
    if not 1 <= cfg.k_min <= cfg.k_max:
        raise RagsoupError(f"need 1 <= --k-min <= --k-max (got {cfg.k_min}, {cfg.k_max})")
    if cfg.k_hold_extend and cfg.k_hold_loss <= 0:
        raise RagsoupError("--k-hold-extend leaves out the steps k is held: give --k-hold-loss X too (e.g. 1.5)")
    if cfg.hold_tasks and cfg.k_hold_loss <= 0:
        raise RagsoupError("--hold-tasks is the task mix while k is held: give --k-hold-loss X too (e.g. 2.0)")
    check_tasks(cfg)
    out = Path(cfg.out)
    if cfg.init and cfg.init_seed is not None:
        raise RagsoupError("--init-seed sets the initial weights of a run from scratch; with --init they come from "
                           f"{cfg.init}: leave one out")
    if cfg.timescales not in ("random", "spread"):
        raise RagsoupError(f"unknown --timescales '{cfg.timescales}': use random or spread")
    if cfg.init and cfg.timescales != "random":
        raise RagsoupError(f"--timescales sets a run from scratch's initial dt and A; with --init they come from "
                           f"{cfg.init}: leave one out")
    if cfg.timescales == "spread" and cfg.arch != "mamba2":
        raise RagsoupError("--timescales spread sets Mamba2 heads' dt and A: the transformer has none")
    torch.manual_seed(cfg.fresh_seed())
    model, tok = start_model(out, resume, cfg.init, device, "train")
    if model is None:
        tok = make_tokenizer(cfg)
        model = new_model(cfg.arch, cfg.model, tok, device)
        if cfg.timescales == "spread":
            model.spread_timescales(torch.Generator().manual_seed(cfg.fresh_seed()))
    encoder = None
    if cfg.freeze_encoder:  # decoder-only: the starting weights, frozen, encode every passage (saved as OUT/encoder)
        encoder = _frozen_encoder(cfg, model, tok, Path(cfg.out), resume, device)
    if is_kv_model(model) and cfg.bank_size > 0:
        raise RagsoupError("--bank-size needs fixed-size states; the transformer (KV-cache) baseline has none")
    model.train()
    opt, step = make_optimizer(model, cfg, out if resume else None, device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    sets = eval_sets(cfg) if cfg.eval_every > 0 else {}
    truncate_log(out / "log.jsonl", step)  # a resumed run replays the steps after its checkpoint
    logf = open(out / "log.jsonl", "a")

    def log(rec: dict) -> None:
        logf.write(json.dumps(rec) + "\n")
        logf.flush()
        if on_log:
            on_log(rec)

    use_amp = torch.device(device).type == "cuda"
    bank = FillerBank(cfg) if cfg.bank_size > 0 else None
    replay = step > 0 and cfg.k_hold_loss > 0 and (out / "log.jsonl").exists()  # a resumed run's hold, from its log
    hold = RampHold(cfg.k_hold_loss, read_log(out) if replay else [])
    t_last, ex_acc, tok_acc = time.perf_counter(), 0, 0
    stop = cfg.last_step()

    def sched(step: int) -> int:  # the step that the schedule (learning rate, steps, --until) sees
        return hold.clock(step, cfg.warmup_steps) if cfg.k_hold_extend else step

    def done(step: int) -> bool:  # a run still held at its unextended end stops there: holding forever gains nothing
        return sched(step) >= stop or (hold.start is None and step >= stop)

    try:
        deadline = wall_deadline(cfg)
        while not done(step):
            k, batch = make_batch(cfg, step, hold.start)
            due = bank is not None and (bank.rows is None or step % cfg.bank_refresh == 0)
            if due and bank_needed(cfg, step, hold.start):
                model.eval()
                bank.refresh(encoder or model, tok, step)
                model.train()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss, n_tok, answer_loss = batch_losses(model, tok, cfg, k, batch, bank, step, encoder)
            gnorm = update(model, opt, loss, cfg, sched(step))
            step += 1
            ex_acc += len(batch)
            tok_acc += n_tok
            now = time.perf_counter()
            rec = {"step": step, "loss": round(loss.item(), 5), "k": k, "lr": opt.param_groups[0]["lr"],
                   "grad_norm": round(float(gnorm), 4), "ex_per_s": round(ex_acc / (now - t_last), 2),
                   "tok_per_s": round(tok_acc / (now - t_last), 1)}
            t_last, ex_acc, tok_acc = now, 0, 0
            if cfg.loss_on_question:
                rec["answer_loss"] = round(answer_loss, 5)
            if hold.observe_record(rec):
                rec["ramp_start"] = step
            if cfg.k_hold_extend:
                rec["sched_step"] = sched(step)
            last = done(step) or time.monotonic() >= deadline
            if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or last):
                rec["eval"] = run_eval(model, tok, cfg, sets, encoder, bank)
                t_last = time.perf_counter()
            log(rec)
            if last or (cfg.save_every > 0 and step % cfg.save_every == 0):
                _save(model, tok, opt, cfg, step, out)
                t_last = time.perf_counter()
            if last:
                break
    finally:
        logf.close()
    return out / "last"


def _frozen_encoder(cfg: TrainConfig, model: Mamba2LM, tok: Tokenizer, out: Path, resume: bool,
                    device: str) -> Mamba2LM:
    """The frozen encoder of a decoder-only run: OUT/encoder, written from the starting model on a fresh run."""
    if cfg.mode != "soup":
        raise RagsoupError("--freeze-encoder applies to --mode soup (concat has no separate encode pass)")
    path = out / "encoder"
    if resume:
        if not path.exists():
            raise RagsoupError(f"cannot resume a decoder-only run without its frozen encoder {path}")
        encoder = load_model(path, device).model
    else:
        if not cfg.init:
            raise RagsoupError("--freeze-encoder needs --init: decoder-only finetuning keeps a trained encoder frozen")
        encoder = copy.deepcopy(model)
        save_checkpoint(encoder, tok, path, meta={"frozen_encoder_of": cfg.init})
    encoder.eval()
    return encoder.requires_grad_(False)


def wall_deadline(cfg: OptimConfig) -> float:
    """The ``time.monotonic()`` after which a run stops at the end of its step (inf without --max-minutes)."""
    return time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes > 0 else math.inf


def read_log(run: Path) -> list[dict]:
    """Records of a run's log.jsonl, one per step (the last one wins when a resumed run replayed steps)."""
    by_step: dict[int, dict] = {}
    for line in (Path(run) / "log.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def truncate_log(path: Path, step: int) -> None:
    """Drop log records after ``step`` (left by a run that stopped after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _save(model: Mamba2LM, tok: Tokenizer, opt, cfg: TrainConfig, step: int, out: Path) -> None:
    """Checkpoint a soup-finetuning run."""
    meta = {"train": {"step": step, "tasks": cfg.tasks, "mode": cfg.mode, "pool": cfg.pool, "k_max": cfg.k_max,
                      "seed": cfg.seed, "passage_chars": cfg.passage_chars, "max_tokens": cfg.max_tokens}}
    save_run(model, tok, opt, step, out, meta, asdict(cfg))


def save_run(model, tok: Tokenizer, opt, step: int, out: Path, meta: dict, config: dict) -> None:
    """Checkpoint the model (out/last) and the optimizer/step (out/trainer.pt), each atomically."""
    save_checkpoint(model, tok, out / "last", meta=meta)
    tmp = out / ".trainer.pt.tmp"
    torch.save({"opt": opt.state_dict(), "step": step, "config": config}, tmp)
    tmp.replace(out / "trainer.pt")
