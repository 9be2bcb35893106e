"""ragsoup command line: parse, call the library, render with rich. Domain errors -> one red line, exit 1."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ragsoup.errors import RagsoupError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Retrieval-augmented QA by souping cached Mamba2 states.")
console = Console()
err = Console(stderr=True)


def domain_errors(fn):
    """Turn RagsoupError (and Ctrl-C) into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RagsoupError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]")
            raise typer.Exit(130)

    return wrapper


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=False,
    )


@app.command()
@domain_errors
def index(
    corpus: Path = typer.Argument(..., help="Directory of .txt/.md, a .jsonl, a SQuAD/HotpotQA .json, or a saved `datasets` dataset."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Index directory to create or update (default: indexes/<corpus name>)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint directory or shipped model name (default: the shipped default)."),
    batch_size: int = typer.Option(16, help="Passages encoded per batch at most (grouped by length, so that little is padding)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    factory: str = typer.Option("Flat", help="FAISS index factory string (inner product), e.g. IVF256,Flat for big corpora."),
    chunk_chars: int = typer.Option(600, help="Maximum passage length in characters (sentence-aware chunking)."),
    state_dtype: str = typer.Option("float16", help="float16 or float32."),
    embedder: Optional[str] = typer.Option(None, help="A local sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Index a corpus: FAISS over embeddings + every passage's cached Mamba2 state."""
    from ragsoup.build import build_index
    from ragsoup.device import set_threads

    set_threads(threads)
    if batch_size <= 0:
        raise RagsoupError(f"--batch-size must be at least 1 (got {batch_size})")
    if out is None:
        from ragsoup.indexdir import default_index_dir

        out = default_index_dir(corpus)
    if state_dtype not in ("float16", "float32"):
        raise RagsoupError(f"--state-dtype must be float16 or float32 (got {state_dtype})")
    with _progress() as prog:
        tasks: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            name = {"embed": "embedding", "encode": "state encoding"}[stage]
            if stage not in tasks:
                tasks[stage] = prog.add_task(name, total=total, rate="")
            t = prog.tasks[tasks[stage]]
            rate = f"{done / t.elapsed:,.0f} passages/s" if t.elapsed and done else ""
            prog.update(tasks[stage], completed=done, total=total, rate=rate)

        rep = build_index(corpus, out, model=model, batch_size=batch_size, device=device, factory=factory,
                          embedder=embedder, chunk_chars=chunk_chars, state_dtype=state_dtype,
                          progress=None if json_out else on_progress)
    if json_out:
        from dataclasses import asdict

        _print_json(asdict(rep))
        return
    skipped = rep.skipped_binary + rep.skipped_empty
    console.print(
        f"[green]indexed[/] {rep.n_passages} passages from {rep.n_files} files into [bold]{escape(rep.out)}[/]: "
        f"added {rep.added}, kept {rep.kept}, removed {rep.removed}"
        + (f"; skipped {rep.skipped_binary} binary/non-UTF-8 and {rep.skipped_empty} empty files" if skipped else "")
        + (f"; dropped {rep.n_duplicates} duplicate passages" if rep.n_duplicates else "")
    )
    if rep.rebuilt:
        console.print(f"[yellow]re-encoded everything:[/] {escape(rep.rebuilt)}")
    s = rep.seconds
    console.print(
        f"time: embedding {s.get('embed', 0):.1f}s, state encoding {s.get('encode', 0):.1f}s (concurrently), total {s['total']:.1f}s"
    )


@app.command()
@domain_errors
def ask(
    question: Optional[str] = typer.Argument(None, help="The question."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="A questions.jsonl file (question, answer): answer each and report EM/F1."),
    doc: Optional[Path] = typer.Option(None, "--doc", help="Long-document mode: soup every segment of this file (no index)."),
    chunk_chars: int = typer.Option(200, help="With --doc: segment length in characters."),
    index_dir: Optional[Path] = typer.Option(None, "--index", help="Index directory (default: indexes/demo)."),
    k: int = typer.Option(5, "--k", help="Passages to retrieve and soup."),
    pool: str = typer.Option("mean", help="mean, sum, max, sum-norm, norm-mean or centered (around a background "
                             "state: see --background)."),
    background: str = typer.Option("model", help="What --pool centered centres on: model (its background state, "
                                   "ragsoup background) or corpus (the index's mean state). --doc: the model's."),
    weights: Optional[str] = typer.Option(None, help="retrieval: weigh each passage by softmax(score / temperature) of its retrieval score; uniform: the plain equal-weight soup (the paper's). Default: retrieval with mean/centered pooling, else uniform."),
    temperature: Optional[float] = typer.Option(None, help="Softmax temperature of the retrieval weights (default 0.05; larger: closer to equal weights)."),
    hops: int = typer.Option(1, "--hops", help="2: a second search with the top passage's sentence closest to the question, for facts the question does not name (two-hop questions); its passages take half of the k slots."),
    extractive: bool = typer.Option(False, "--extractive", help="Decode each answer as a span of its passages: at each step the model's best-scored token that keeps the answer a substring of the retrieved text."),
    max_new_tokens: int = typer.Option(32, help="Answer length limit in tokens."),
    batch_size: int = typer.Option(16, help="With --questions: questions answered together (one embedding call, one batched decode)."),
    cache_mb: float = typer.Option(2048.0, help="On a GPU: MB of hot passage states kept on the device (LRU)."),
    model: Optional[str] = typer.Option(None, help="Override the index's model (must be the one it was built with)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Answer a question from the soup of its top-k passages' cached states."""
    from ragsoup.ask import Engine
    from ragsoup.device import set_threads

    set_threads(threads)
    from ragsoup.soup import DEFAULT_TEMPERATURE, check_pool, check_weighting

    temperature = DEFAULT_TEMPERATURE if temperature is None else temperature
    if questions is None and not (question or "").strip():
        raise RagsoupError('the question is empty: ask something, e.g. ragsoup ask "What is ...?"')
    if k <= 0:
        raise RagsoupError(f"--k must be at least 1 (got {k})")
    if batch_size <= 0:
        raise RagsoupError(f"--batch-size must be at least 1 (got {batch_size})")
    check_pool(pool)
    weights = check_weighting(weights, pool, temperature)
    how = dict(pool=pool, weights=weights, temperature=temperature, extractive=extractive)
    if doc is not None:
        from ragsoup.ask import ask_document

        if hops != 1:
            raise RagsoupError("--hops applies to an index; --doc soups every segment of the document")
        res = ask_document(doc, question or "", model=model, chunk_chars=chunk_chars, max_new_tokens=max_new_tokens,
                           device=device, **how)
        _render_answer(res, json_out, title=f"{res.k} segments of {doc}, {_souped(res.pool, weights, temperature)}"
                                            f"{_spans(extractive)}")
        return
    engine = Engine(index_dir, model=model, device=device, cache_mb=cache_mb, background=background)
    if questions is not None:
        _ask_file(engine, questions, k, {**how, "hops": hops}, max_new_tokens, json_out, batch_size)
        return
    res = engine.ask(question, k=k, max_new_tokens=max_new_tokens, hops=hops, **how)
    _render_answer(res, json_out, title=f"top-{res.k} passages{_hops(hops)}, {_souped(res.pool, weights, temperature)}"
                                        f"{_spans(extractive)}")


def _hops(hops: int) -> str:
    """Retrieval hops, for titles."""
    return " in 2 hops" if hops == 2 else ""


def _spans(extractive: bool) -> str:
    """Extractive decoding, for titles."""
    return ", answers decoded as spans of the passages" if extractive else ""


def _souped(pool: str, weights: str, temperature: float) -> str:
    """How a soup was made, for table titles."""
    return f"souped with {pool}" + (f", weighted by retrieval score (T={temperature:g})" if weights == "retrieval" else "")


def _render_answer(res, json_out: bool, title: str) -> None:
    """Print one AskResult: the JSON object, or the answer, a passage table and the stage timings."""
    for n in res.notices:
        err.print(f"[yellow]notice:[/] {escape(n)}", soft_wrap=True)
    if json_out:
        _print_json(res.to_json())
        return
    console.print(f"[bold green]{escape(res.answer) if res.answer else '(empty answer)'}[/]", highlight=False)
    table = Table(title=escape(title), show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("weight", justify="right")
    if res.hops > 1:
        table.add_column("hop", justify="right")
    table.add_column("source")
    table.add_column("passage")
    for i, p in enumerate(res.passages, 1):
        snippet = p["text"] if len(p["text"]) <= 100 else p["text"][:97] + "..."
        hop = [str(p["hop"])] if res.hops > 1 else []
        table.add_row(str(i), f"{p['score']:.3f}", f"{p['weight']:.3f}", *hop, escape(p["title"] or p["source"]),
                      escape(snippet))
    console.print(table)
    t = res.timings_ms
    console.print(" | ".join(f"{name} {t[name]:.1f} ms" for name in ("retrieve", "soup", "decode", "total")))

def _ask_file(engine, path: Path, k: int, how: dict, max_new_tokens: int, json_out: bool, batch_size: int = 16) -> None:
    """Answer every question of a questions.jsonl file, batch_size at a time; print each, EM/F1 and recall@k.

    ``how``: the soup's pool, weights, temperature and retrieval hops (Engine.ask_batch's arguments).
    """
    from ragsoup.metrics import best_em_f1, gold_retrieved
    from ragsoup.tasks.files import read_questions

    qs = read_questions(path)
    rows, em_sum, f1_sum = [], 0.0, 0.0
    table = Table(title=escape(f"{len(qs)} questions from {path}: top-{k}{_hops(how['hops'])}, "
                               f"{_souped(how['pool'], how['weights'], how['temperature'])}{_spans(how['extractive'])}"))
    for col in ("question", "expected", "answer", "ok"):
        table.add_column(col)
    results = []
    for i in range(0, len(qs), batch_size):
        results += engine.ask_batch([q["question"] for q in qs[i : i + batch_size]], k=k,
                                    max_new_tokens=max_new_tokens, **how)
    hits = hits_all = 0
    for q, res in zip(qs, results):
        em, f1 = best_em_f1(res.answer, q.get("answers") or [q["answer"]])
        ids = [p["id"] for p in res.passages]
        found = gold_retrieved(ids, q["gold_ids"])
        em_sum, f1_sum, hits = em_sum + em, f1_sum + f1, hits + found
        hits_all += gold_retrieved(ids, q["gold_ids"], require_all=True)
        rows.append({"question": q["question"], "expected": q["answer"], "answer": res.answer, "em": em, "f1": f1,
                     "gold_retrieved": found, "total_ms": res.timings_ms["total"]})
        table.add_row(escape(q["question"]), escape(q["answer"]), escape(res.answer), "[green]yes[/]" if em else "[red]no[/]")
    n = max(len(qs), 1)
    summary = {"n": len(qs), "k": k, **how, "em": 100 * em_sum / n, "f1": 100 * f1_sum / n,
               "recall_at_k": 100 * hits / n, "recall_all_at_k": 100 * hits_all / n}
    if json_out:
        _print_json({**summary, "results": rows})
        return
    console.print(table)
    console.print(f"[bold]EM {summary['em']:.1f}  F1 {summary['f1']:.1f}[/]  recall@{k} {summary['recall_at_k']:.1f}"
                  f" (all gold passages: {summary['recall_all_at_k']:.1f}) over {len(qs)} questions")


@app.command()
@domain_errors
def train(
    preset: Optional[str] = typer.Option(None, help="Start from a named preset (default, tiny); other options override it."),
    out: Optional[str] = typer.Option(None, help="Run directory (checkpoints, log.jsonl)."),
    tasks: Optional[str] = typer.Option(None, help="Task mix, e.g. needle:3,needle-distractor:2,two-hop:1."),
    mode: Optional[str] = typer.Option(None, help="soup or concat (the baseline)."),
    pool: Optional[str] = typer.Option(None, help="mean, sum, max, sum-norm, norm-mean or centered (needs "
                                       "--bank-size: the bank's mean state is the background)."),
    k_min: Optional[int] = typer.Option(None, help="Fewest passages per example."),
    k_max: Optional[int] = typer.Option(None, help="Most passages per example (curriculum target)."),
    k_ramp_steps: Optional[int] = typer.Option(None, help="Steps over which the largest k grows from k-min to k-max."),
    k_hold_loss: Optional[float] = typer.Option(None, help="Hold k at k-min (the ramp waits) until the mean training loss (of the answer tokens, also with --loss-on-question) of the last 50 steps is below this (0: off)."),
    hold_tasks: Optional[str] = typer.Option(None, help="Task mix while k is held by --k-hold-loss (default: --tasks)."),
    k_hold_extend: bool = typer.Option(False, "--k-hold-extend", help="Steps spent holding k (after warmup) do not count: the learning rate stays at its peak and the run ends that many steps later."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, help="Examples per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warmup steps before the cosine decay."),
    passage_chars: Optional[int] = typer.Option(None, help="Characters per generated passage."),
    seed: Optional[int] = typer.Option(None, help="Seed (data and init)."),
    init_seed: Optional[int] = typer.Option(None, "--init-seed", help="Seed of a fresh run's initial weights and BPE tokenizer alone (default: --seed); --seed then draws only the data."),
    timescales: Optional[str] = typer.Option(None, help="A fresh run's initial dt and A per head: random (independent draws) or spread (stratified and paired, so every layer has a long-memory head; an ablation, docs/models.md (t))."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Decoder-only finetuning: passages are encoded by a frozen copy of the starting model (saved in OUT/encoder)."),
    loss_on_question: bool = typer.Option(False, "--loss-on-question", help="Also train on the question tokens."),
    ckpt_group: Optional[int] = typer.Option(None, help="Passages per activation-checkpointed group (0: off)."),
    group_by_length: bool = typer.Option(False, "--group-by-length", help="Encode passages in length-sorted groups: less padding, faster, but other float rounding than the documented runs had."),
    extra_questions: Optional[int] = typer.Option(None, help="Also supervise up to N other needles' questions per soup."),
    extra_min_k: Optional[int] = typer.Option(None, help="With --extra-questions: only on soups of at least this many passages."),
    bank_size: Optional[int] = typer.Option(None, help="Filler-state bank size (0: off); with it only --fresh-max passages per example get gradient."),
    bank_refresh: Optional[int] = typer.Option(None, help="Steps between re-encodes of the filler bank."),
    fresh_max: Optional[int] = typer.Option(None, help="With a bank: passages per example encoded with gradient."),
    bank_prose: Optional[str] = typer.Option(None, help="With a bank: part of it is prose from this .txt / Gutenberg .jsonl(.gz) file."),
    bank_prose_frac: Optional[float] = typer.Option(None, help="With --bank-prose: the bank's prose fraction (and of examples with prose filler)."),
    prose_passages: Optional[float] = typer.Option(None, help="With --bank-prose: this share of the generated examples write their facts and fresh filler into that prose instead of template filler."),
    eval_every: Optional[int] = typer.Option(None, help="Held-out EM per k every N steps (0: off)."),
    eval_ks: Optional[str] = typer.Option(None, help="k values for held-out EM, e.g. 1,4,16."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps (0: only at the end)."),
    init: Optional[str] = typer.Option(None, help="Start from this checkpoint (or shipped model name)."),
    tokenizer: Optional[str] = typer.Option(None, help="bytes or bpe:VOCAB (new models only)."),
    squad: Optional[str] = typer.Option(None, help="SQuAD v1.1 JSON for --tasks squad / squad-segments (training articles only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    until: Optional[int] = typer.Option(None, help="Stop after this step (the schedule still spans --steps); resume later."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop with a checkpoint once a step ends past this many minutes (a time-limited machine); resume later."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Soup-finetune a Mamba2 (encoder and decoder are the same model) on generated tasks."""

    from ragsoup.device import pick_device, set_threads
    from ragsoup.train import PRESETS, TrainConfig, train as run_train

    if preset is not None and preset not in PRESETS:
        raise RagsoupError(f"unknown preset '{preset}': use one of {', '.join(PRESETS)}")
    base = dict(PRESETS[preset]) if preset else {}
    given = dict(out=out, tasks=tasks, mode=mode, pool=pool, k_min=k_min, k_max=k_max, k_ramp_steps=k_ramp_steps,
                 k_hold_loss=k_hold_loss, hold_tasks=hold_tasks, steps=steps, batch_size=batch_size, lr=lr,
                 warmup_steps=warmup_steps,
                 passage_chars=passage_chars, seed=seed, init_seed=init_seed, timescales=timescales,
                 ckpt_group=ckpt_group,
                 eval_every=eval_every, eval_ks=eval_ks,
                 save_every=save_every, init=init, tokenizer=tokenizer, extra_questions=extra_questions,
                 extra_min_k=extra_min_k, bank_size=bank_size, bank_refresh=bank_refresh, fresh_max=fresh_max,
                 bank_prose=bank_prose, bank_prose_frac=bank_prose_frac, prose_passages=prose_passages, until=until,
                 squad=squad, max_minutes=max_minutes)
    base.update({k: v for k, v in given.items() if v is not None})
    if freeze_encoder:
        base["freeze_encoder"] = True
    if loss_on_question:
        base["loss_on_question"] = True
    if group_by_length:
        base["group_by_length"] = True
    if k_hold_extend:
        base["k_hold_extend"] = True
    if resume and (Path(base.get("out", "runs/default")) / "train_config.json").exists():
        saved = json.loads((Path(base.get("out", "runs/default")) / "train_config.json").read_text())
        base = {**saved, **{k: v for k, v in given.items() if v is not None}}
    cfg = TrainConfig.from_dict(base)
    set_threads(threads)
    dev = pick_device(device)
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err) as prog:
        task = prog.add_task("train", total=cfg.last_step(), info="")

        def on_log(rec: dict) -> None:
            info = f"loss {rec['loss']:.3f} k {rec['k']} {rec['ex_per_s']:.1f} ex/s {rec['tok_per_s']:,.0f} tok/s"
            held = rec["step"] - rec.get("sched_step", rec["step"])  # steps --k-hold-extend added so far
            prog.update(task, completed=rec["step"], total=cfg.last_step() + held, info=info)
            if "eval" in rec:
                prog.console.print(f"step {rec['step']}: " + ", ".join(f"EM@{k.split('@')[1]} {v:.1f}" for k, v in rec["eval"].items()))
            if "ramp_start" in rec:
                prog.console.print(f"step {rec['step']}: mean loss below --k-hold-loss {cfg.k_hold_loss}: k grows from here")

        final = run_train(cfg, resume=resume, on_log=on_log, device=dev)
    console.print(f"[green]saved[/] {final}")


@app.command()
@domain_errors
def pretrain(
    preset: Optional[str] = typer.Option(None, help="Start from a named preset (ablation-lm, ablation-lm-transformer, tiny)."),
    text: Optional[str] = typer.Option(None, help="tasks:MIX (generated passages) or comma-separated corpus paths (Gutenberg .jsonl.gz, SQuAD .json, .txt dirs)."),
    out: Optional[str] = typer.Option(None, help="Run directory (checkpoints, log.jsonl, tokenised data)."),
    arch: Optional[str] = typer.Option(None, help="mamba2 or transformer (new models only)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, help="Rows per step."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per row."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    seed: Optional[int] = typer.Option(None, help="Seed (data and init)."),
    init: Optional[str] = typer.Option(None, help="Start from this checkpoint."),
    tokenizer: Optional[str] = typer.Option(None, help="bytes or bpe:VOCAB (new models only)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    until: Optional[int] = typer.Option(None, help="Stop after this step (the schedule still spans --steps); resume later."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop with a checkpoint once a step ends past this many minutes (a time-limited machine); resume later."),
    qa: bool = typer.Option(False, "--qa", help="tasks: text: follow each example's passages with its question and answer (in-context QA over concatenations)."),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Only train the tokenizer and tokenise the text into OUT/data (shards to carry to a GPU machine)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Pretrain a language model on plain text (next-token prediction, no souping)."""
    from ragsoup.device import pick_device, set_threads
    from ragsoup.pretrain import PRETRAIN_PRESETS, PretrainConfig, pretrain as run_pretrain

    if preset is not None and preset not in PRETRAIN_PRESETS:
        raise RagsoupError(f"unknown preset '{preset}': use one of {', '.join(PRETRAIN_PRESETS)}")
    given = dict(text=text, out=out, arch=arch, steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed,
                 init=init, tokenizer=tokenizer, until=until, max_minutes=max_minutes)
    base = dict(PRETRAIN_PRESETS[preset]) if preset else {}
    saved = Path(given["out"] or base.get("out") or "runs/lm") / "pretrain_config.json"
    if resume and saved.exists():
        base = json.loads(saved.read_text())
    if qa:
        given["qa"] = True
    cfg = PretrainConfig.from_dict({**base, **{k: v for k, v in given.items() if v is not None}})
    set_threads(threads)
    if prepare_only:
        from ragsoup.pretrain import prepare_data

        if cfg.text.startswith("tasks:"):
            raise RagsoupError("--prepare-only tokenises files: give --text PATHS (generated tasks: text need no preparing)")
        from ragsoup.checkpoint import load_model

        init_tok = load_model(cfg.init).tokenizer if cfg.init else None
        prepare_data(cfg, Path(cfg.out), init_tok)
        meta = json.loads((Path(cfg.out) / "data" / "data.json").read_text())
        console.print(f"[green]tokenised[/] {meta['passages']:,} passages: {meta['train_tokens']:,} training tokens in "
                      f"{len(meta['shards'])} shards ({meta['dtype']}), held out every {meta['heldout_every']}th passage "
                      f"-> {Path(cfg.out) / 'data'}")
        return
    dev = pick_device(device)
    with Progress(TextColumn("[bold]pretraining"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err) as prog:
        task = prog.add_task("pretrain", total=cfg.last_step(), info="")

        def on_log(rec: dict) -> None:
            prog.update(task, completed=rec["step"], info=f"loss {rec['loss']:.3f} {rec['tok_per_s']:,.0f} tok/s")
            if "eval" in rec:
                prog.console.print(f"step {rec['step']}: held-out loss {rec['eval']['heldout_loss']:.3f}")

        final = run_pretrain(cfg, resume=resume, on_log=on_log, device=dev)
    console.print(f"[green]saved[/] {final}")


@app.command()
@domain_errors
def export(
    src: str = typer.Argument(..., help="Checkpoint directory (e.g. runs/NAME/last)."),
    dst: Path = typer.Argument(..., help="Where to write the shippable copy (e.g. ragsoup/models/NAME)."),
    dtype: str = typer.Option("float32", help="Weight dtype to store: float32, bfloat16 or float16."),
    max_shard_mb: float = typer.Option(15.0, help="Split the weights into files of at most this many MB."),
) -> None:
    """Write a checkpoint for shipping: chosen weight dtype, weights split into files of bounded size."""
    import torch

    from ragsoup.background import load_background
    from ragsoup.checkpoint import BACKGROUND_FILE, atomic_write_bytes, load_model, save_checkpoint

    dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise RagsoupError(f"unknown --dtype '{dtype}': use {', '.join(dtypes)}")
    if max_shard_mb <= 0:
        raise RagsoupError("--max-shard-mb must be positive")
    loaded = load_model(src)
    meta = {**loaded.meta, "exported_from": {"fingerprint": loaded.fingerprint, "dtype": dtype}}
    fp = save_checkpoint(loaded.model, loaded.tokenizer, dst, meta=meta, dtype=dtypes[dtype],
                         max_shard_bytes=int(max_shard_mb * (1 << 20)))
    if load_background(loaded.path, loaded.model.cfg.state_numel()) is not None:  # checked; travels with the weights
        atomic_write_bytes(dst / BACKGROUND_FILE, (loaded.path / BACKGROUND_FILE).read_bytes())
    files = sorted(f for f in dst.glob("*.safetensors") if f.name != BACKGROUND_FILE)
    total = sum(f.stat().st_size for f in files) / (1 << 20)
    console.print(f"[green]exported[/] {dst}: {len(files)} weight file(s), {total:.1f} MB ({dtype}), fingerprint {fp}")


@app.command()
@domain_errors
def background(
    model: str = typer.Argument("default", help="Checkpoint directory or shipped model name."),
    text: str = typer.Option("template", help="Passages to average: 'template' filler (the default model's "
                             "training filler) or prose from a .txt / Gutenberg .jsonl(.gz) file."),
    passages: int = typer.Option(512, help="How many passages to average."),
    passage_chars: int = typer.Option(200, help="Characters per passage."),
    seed: int = typer.Option(0, help="Seed for drawing the passages."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Compute the model's background state (its mean state over plain passages), used by --pool centered."""
    import time

    from ragsoup.background import background_passages, compute_background, save_background
    from ragsoup.checkpoint import load_model

    t0 = time.perf_counter()
    texts = background_passages(text, passages, seed, passage_chars)
    loaded = load_model(model)
    with _progress() as prog:
        task = prog.add_task("encoding", total=len(texts), rate="")
        row = compute_background(loaded.model, loaded.tokenizer, texts, on_batch=lambda n: prog.advance(task, n))
    path = save_background(loaded.path, row, {"text": text, "passages": passages, "passage_chars": passage_chars,
                                              "seed": seed, "model_fingerprint": loaded.fingerprint})
    out = {"model": str(loaded.path), "path": str(path), "passages": passages, "text": text,
           "seconds": round(time.perf_counter() - t0, 1)}
    if json_out:
        _print_json(out)
    else:
        console.print(f"[green]wrote[/] {path}: mean state of {passages} '{text}' passages ({out['seconds']} s)")


@app.command("make-corpus")
@domain_errors
def make_corpus_cmd(
    task: str = typer.Argument(..., help="needle, two-hop, demo, or squad / hotpotqa (real text: needs --data)."),
    passages: int = typer.Option(300, "--passages", help="Passages in the corpus."),
    queries: int = typer.Option(50, "--queries", help="Questions (each with its gold passages in the corpus)."),
    out: Path = typer.Option(..., "--out", help="Output directory (corpus.jsonl, questions.jsonl, README.md)."),
    seed: int = typer.Option(0, help="Seed."),
    variant: str = typer.Option("single", help="Needle variant: single, multikey, distractor, multivalue."),
    passage_chars: int = typer.Option(200, help="Approximate passage length (the default model was trained on 200)."),
    data: Optional[Path] = typer.Option(None, "--data", help="squad / hotpotqa: the dataset's JSON (.json or .json.gz)."),
    split: str = typer.Option("val", help="squad: articles of ragsoup's held-out split (val), the rest (train) or all."),
) -> None:
    """Write a corpus and its questions file: generated (needle, two-hop, demo = both) or from SQuAD / HotpotQA."""
    import sys

    from ragsoup.tasks.files import FILE_TASKS, make_corpus, make_file_corpus

    if passages <= 0 or queries <= 0:
        raise RagsoupError("--passages and --queries must be positive")
    command = "ragsoup " + " ".join(sys.argv[1:])
    if task in FILE_TASKS:
        path = make_file_corpus(task, data, split, passages, queries, seed, out, command=command)
        console.print(f"[green]wrote[/] {path}")
        return
    path = make_corpus(task, passages, queries, seed, out, variant=variant, passage_chars=passage_chars, command=command)
    console.print(f"[green]wrote[/] {path}")


@app.command("eval")
@domain_errors
def eval_cmd(
    task: str = typer.Option(..., "--task", help="squad, hotpotqa, needle, needle-multikey, needle-distractor, needle-multivalue, needle-packed, needle-word, needle-word-distractor, two-hop, two-hop-bridge (scored on the country), longdoc or longdoc-multifact."),
    data: Optional[Path] = typer.Option(None, "--data", help="SQuAD/HotpotQA JSON file; for generated tasks optional (a make-corpus directory)."),
    k: int = typer.Option(5, "--k", help="Passages per question (gold + distractors)."),
    mode: str = typer.Option("soup", help="soup or concat (the baseline)."),
    pool: str = typer.Option("mean", help="mean, sum, max, sum-norm, norm-mean or centered (needs the model's "
                             "background state, ragsoup background, or --background-text)."),
    weights: str = typer.Option("uniform", help="Soup weights: uniform (the reader alone) or retrieval (each passage weighed by softmax(score / temperature) of the embedder's score, as ask does)."),
    temperature: Optional[float] = typer.Option(None, help="Softmax temperature of the retrieval weights (default 0.05; larger: closer to equal weights)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Questions to score (generated tasks: default 200; files: all)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint directory or shipped model name (default: the shipped default)."),
    seed: int = typer.Option(0, help="Seed (distractor choice, generated examples)."),
    batch_size: int = typer.Option(8, help="Questions decoded per batch."),
    max_new_tokens: int = typer.Option(32, help="Answer length limit in tokens."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
    filler: Optional[Path] = typer.Option(None, help="Generated tasks: haystack from this prose (.txt or Gutenberg .jsonl.gz) instead of template filler."),
    background_text: Optional[str] = typer.Option(None, help="--pool centered: centre on the mean state of 512 passages of this text (template, or a .txt / Gutenberg .jsonl.gz file) instead of the model's background file."),
    split: str = typer.Option("all", help="SQuAD: all questions of --data, or the train / val side of ragsoup's by-article split."),
    encoder: Optional[str] = typer.Option(None, help="A separate checkpoint that encodes the passages (decoder-only finetuned models: their OUT/encoder)."),
    passage_chars: Optional[int] = typer.Option(None, "--passage-chars", help="Generated tasks: characters per passage (default: the length the model was trained on)."),
    extractive: bool = typer.Option(False, "--extractive", help="Decode each answer as a span of its passages: at each step the model's best-scored token that keeps the answer a substring of the passages' text."),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Also write one JSON line per question (question, answers, prediction, em, f1, gold, others: the answers of the other needles in its passages) to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Answer quality alone: each question's gold + distractor passages are given (no retrieval)."""
    from ragsoup.bench import run_eval
    from ragsoup.device import set_threads

    set_threads(threads)
    with _progress() as prog:
        bar: list[int] = []

        def on_start(n: int) -> None:
            if not json_out:
                bar.append(prog.add_task("predicting", total=n, rate=""))

        def on_batch(n: int) -> None:
            if bar:
                t = prog.tasks[bar[0]]
                done = t.completed + n
                prog.update(bar[0], completed=done, rate=f"{done / t.elapsed:,.1f} q/s" if t.elapsed else "")

        res = run_eval(task, data, k=k, mode=mode, pool=pool, limit=limit, model=model, seed=seed, device=device,
                       batch_size=batch_size, max_new_tokens=max_new_tokens, on_start=on_start, on_batch=on_batch,
                       filler=filler, encoder=encoder, split=split, passage_chars=passage_chars,
                       weights=weights, temperature=temperature, background_text=background_text,
                       extractive=extractive, predictions=predictions)
    if json_out:
        _print_json(res.to_json())
        return
    table = Table(title=f"given passages, no retrieval{_spans(res.extractive)}")
    for col in ("task", "mode", "k", "pool", "weights", "n", "EM", "F1"):
        table.add_column(col, justify="right" if col in ("k", "n", "EM", "F1") else "left")
    table.add_row(res.task, res.mode, str(res.k), pool if res.mode == "soup" else "-",
                  res.weights if res.mode == "soup" else "-", str(res.n),
                  f"{res.em:.1f}", f"{res.f1:.1f}")
    console.print(table)
    if predictions is not None:
        console.print(f"predictions: {predictions}")


@app.command()
@domain_errors
def bench(
    task: str = typer.Option("needle", "--task", help="needle, needle-multikey, needle-distractor, two-hop (generated), or squad / hotpotqa (from --data)."),
    data: Optional[Path] = typer.Option(None, "--data", help="squad / hotpotqa: the dataset JSON; its paragraphs are the corpus (indexed in 600-character chunks), a sample of its questions the queries."),
    split: str = typer.Option("val", help="squad: ragsoup's by-article split side: val (held-out articles), train or all."),
    k: Optional[int] = typer.Option(None, "--k", help="Largest k; the sweep is 1, 2, 4, ... up to it (default 256; --quick 16)."),
    modes: str = typer.Option("soup,concat", "--modes", help="Comma-separated: soup, concat."),
    pool: str = typer.Option("mean", help="mean, sum, max, sum-norm, norm-mean or centered (around a background "
                             "state: see --background)."),
    background: str = typer.Option("model", help="What --pool centered centres on: model (its background state, "
                                   "ragsoup background) or corpus (the index's mean state)."),
    weights: Optional[str] = typer.Option(None, help="Soup weights: retrieval (softmax(score / temperature) of each passage's retrieval score), uniform (the plain soup), or uniform,retrieval (both, one row each). Default: both with mean/centered pooling, else uniform."),
    temperature: Optional[float] = typer.Option(None, help="Softmax temperature of the retrieval weights (default 0.05; larger: closer to equal weights)."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Queries per soup row (default 100; --quick 16)."),
    passages: Optional[int] = typer.Option(None, "--passages", help="Generated corpus size (default 4096; --quick 256)."),
    concat_max_k: Optional[int] = typer.Option(None, "--concat-max-k", help="Largest k for concat (default: --k)."),
    concat_queries: Optional[int] = typer.Option(None, "--concat-queries", help="Queries per concat row (default min(queries, 20))."),
    model: Optional[str] = typer.Option(None, help="Checkpoint directory or shipped model name (default: the shipped default)."),
    seed: int = typer.Option(0, help="Corpus seed."),
    max_new_tokens: int = typer.Option(32, help="Answer length limit in tokens."),
    query_batch: Optional[int] = typer.Option(None, "--query-batch", help="Soup: answer this many questions together (one embedding call, one batched decode); latencies become per question."),
    hops: Optional[int] = typer.Option(None, "--hops", help="2: ask's second search for a fact the question does not name (two-hop questions), for soup and concat alike; the sweep starts at k = 2."),
    concat_order: Optional[str] = typer.Option(None, "--concat-order", help="Concat's passage order: best-last (the best-scored passage next to the question; default) or best-first."),
    extractive: bool = typer.Option(False, "--extractive", help="Decode each answer as a span of its retrieved passages (soup and concat alike): at each step the model's best-scored token that keeps the answer a substring of the passages' text."),
    embedder: Optional[str] = typer.Option(None, help="A local sentence-transformers model directory (default: the bundled all-MiniLM-L6-v2)."),
    passage_chars: Optional[int] = typer.Option(None, "--passage-chars", help="Characters per generated passage (default: the length the model was trained on; ragsoup index chunks at 600)."),
    quick: bool = typer.Option(False, "--quick", help="About a minute on a 2-core CPU: 256 passages, 16 queries, k up to 16."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write results.json, results.csv and PNG plots here."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Corpus + index cache (default .bench/<task>-<passages>-<seed>-<model>)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice; 1 on a busy machine)."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON object."),
) -> None:
    """Retrieval sweep over k: soup (cached states) vs concat (re-encode), EM, recall, latency, memory."""
    from ragsoup.bench import BenchConfig, run_bench, write_results
    from ragsoup.device import set_threads

    set_threads(threads)
    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    given = dict(task=task, k_max=k, modes=mode_list, pool=pool, background=background, weights=weights, temperature=temperature, queries=queries, passages=passages,
                 concat_max_k=concat_max_k, concat_queries=concat_queries, model=model, seed=seed, device=device,
                 max_new_tokens=max_new_tokens, cache_dir=str(cache_dir) if cache_dir else None, query_batch=query_batch,
                 embedder=embedder, passage_chars=passage_chars, data=str(data) if data else None, split=split,
                 hops=hops, concat_order=concat_order, extractive=extractive or None)
    cfg = BenchConfig.quick(**given) if quick else BenchConfig(**{k_: v for k_, v in given.items() if v is not None})
    with _progress() as prog:
        bars: dict[str, int] = {}

        def on_progress(label: str, done: int, total: int) -> None:
            if json_out:
                return
            if label not in bars:
                bars[label] = prog.add_task(label, total=total, rate="")
            t = prog.tasks[bars[label]]
            rate = f"{done / t.elapsed:,.1f}/s" if t.elapsed and done else ""
            prog.update(bars[label], completed=done, total=total, rate=rate)

        res = run_bench(cfg, progress=on_progress)
    files = write_results(res, out) if out is not None else []
    if json_out:
        _print_json(res.to_json())
        return
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    table = Table(title=f"{res.task}: {res.n_passages} passages of ~{res.passage_chars} characters, {res.device}, "
                        f"pool {cfg.pool}{_hops(res.hops)}{_spans(res.extractive)}")
    for c in ("mode", "k", "n", "EM", "F1", "R@k", "p50 ms", "p95 ms", "peak MB", "state MB/q"):
        table.add_column(c, justify="left" if c == "mode" else "right")
    for r in res.rows:
        table.add_row(_row_mode(r), str(r.k), str(r.n_queries), fmt(r.em), fmt(r.f1), fmt(r.recall_at_k),
                      fmt(r.latency_ms_p50), fmt(r.latency_ms_p95), fmt(r.peak_mem_mb, "{:.0f}"),
                      fmt(r.state_bytes_read / 2**20, "{:.2f}"))
    console.print(table)
    stages = Table(title="p50 per stage (ms); bound = state bytes / copy bandwidth")
    for c in ("mode", "k", "retrieve", "encode", "load+soup", "bound", "decode", "total"):
        stages.add_column(c, justify="left" if c == "mode" else "right")
    for r in res.rows:
        st = r.stages_ms_p50
        stages.add_row(_row_mode(r), str(r.k), fmt(st.get("retrieve"), "{:.2f}"), fmt(st.get("encode")),
                       fmt(st.get("load_soup"), "{:.2f}"), fmt(r.bandwidth_bound_ms, "{:.3f}"), fmt(st.get("decode")),
                       fmt(st.get("total")))
    console.print(stages)
    if any(r.mode == "soup" for r in res.rows):
        console.print(f"soup/u: equal weights (the paper's soup); soup/r: weighted by retrieval score, "
                      f"softmax(score / {res.temperature:g})")
    reused = "reused" if res.index_seconds == 0 else f"built in {res.index_seconds:.1f}s"
    console.print(f"memory copy bandwidth {res.bandwidth_gbps:.1f} GB/s; index {res.index_dir} ({reused})")
    for f in files:
        console.print(f"[green]wrote[/] {f}")


def _row_mode(row) -> str:
    """A bench row's mode; soups tagged /u (equal weights) or /r (retrieval weights)."""
    return row.mode if row.mode != "soup" else f"soup/{(row.weights or 'uniform')[0]}"


@app.command()
@domain_errors
def doctor(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Report Python, torch, CUDA, the active scan kernel, the embedding model, disk and memory."""
    from ragsoup.doctor import report

    rep = report()
    if json_out:
        _print_json(rep)
        return
    table = Table(title="ragsoup doctor", show_header=False)
    for key, val in rep.items():
        table.add_row(key, escape(str(val)))
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    app()


if __name__ == "__main__":
    main()
