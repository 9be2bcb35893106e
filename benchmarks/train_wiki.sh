#!/usr/bin/env bash
# The real-text model wiki-small (docs/models.md, issue 7): the recipe, stage by stage.
#
#   bash benchmarks/train_wiki.sh prepare    # any machine: BPE 8192 + tokenised shards of Gutenberg + SQuAD train articles
#   bash benchmarks/train_wiki.sh lm         # stage 1, language-model pretraining (a GPU; resumable in <= 20-min runs)
#   bash benchmarks/train_wiki.sh squad      # stage 2, soup finetuning on SQuAD (and the concat baseline, same budget)
#   bash benchmarks/train_wiki.sh eval       # held-out SQuAD articles: k = 1 and k = 5, soup and concat
#   bash benchmarks/train_wiki.sh ship       # bf16, <= 15 MB files -> ragsoup/models/wiki-small
#
# Data: ../shared/data (see its SOURCES.md); override with DATA=/path. Every stage also runs on a CPU, slowly.
# A GPU machine takes at most 64 MiB of files per run: carry runs/wiki-lm/data/{tokenizer.json,data.json,heldout*,
# a few shard-*} plus the latest export (bf16, ~21 MB), and set MINUTES=8 (--max-minutes: stop with a checkpoint
# inside a 10-minute command) or UNTIL=STEP; RESUME=1 continues a run whose OUT (with trainer.pt) is present.
set -euo pipefail
DATA=${DATA:-../shared/data}
SQUAD=$DATA/squad/train-v1.1.reconstructed.json.gz
TEXT=$(ls "$DATA"/gutenberg/books-0*.jsonl.gz | tr '\n' ',')$SQUAD
DEVICE=${DEVICE:-auto}

case "${1:-}" in
  prepare) ragsoup pretrain --preset wiki-small --text "$TEXT" --prepare-only ;;
  lm)      ragsoup pretrain --preset wiki-small --text "$TEXT" --device "$DEVICE" ${RESUME:+--resume} ${UNTIL:+--until $UNTIL} ${MINUTES:+--max-minutes $MINUTES} ;;
  squad)   ragsoup train --preset wiki-small-squad --squad "$SQUAD" --device "$DEVICE" ${RESUME:+--resume} ${UNTIL:+--until $UNTIL} ${MINUTES:+--max-minutes $MINUTES}
           ragsoup train --preset wiki-small-squad-concat --squad "$SQUAD" --device "$DEVICE" ${RESUME:+--resume} ${UNTIL:+--until $UNTIL} ${MINUTES:+--max-minutes $MINUTES} ;;
  eval)    for k in 1 5; do
             ragsoup eval --task squad --data "$SQUAD" --split val --k $k --model runs/wiki-squad/last --json
             ragsoup eval --task squad --data "$SQUAD" --split val --k $k --mode concat --model runs/wiki-squad-concat/last --json
           done
           # retrieval + soup end to end over every held-out paragraph
           ragsoup make-corpus squad --data "$SQUAD" --split val --passages 100000 --queries 500 --out runs/squad-val
           ragsoup index runs/squad-val --out runs/squad-val-index --model runs/wiki-squad/last
           ragsoup ask --questions runs/squad-val/questions.jsonl --index runs/squad-val-index --k 5 --json ;;
  ship)    ragsoup export runs/wiki-squad/last ragsoup/models/wiki-small --dtype bfloat16 --max-shard-mb 15 ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
