#!/usr/bin/env bash
# The CPU pilot of the real-text model (docs/models.md, "wiki-cpu"): wiki-small's recipe at the default model's size,
# about 95 minutes on the 2-core CPU (83 of them training). It measures the recipe end to end where no GPU is lent; wiki-small is the model
# the GPU is for.
#
#   bash benchmarks/train_wiki_cpu.sh            # prepare (if needed), pretrain, soup and concat finetuning, eval
#   OUTDIR=DIR bash benchmarks/train_wiki_cpu.sh eval   # only the evaluations, one JSON file per cell in DIR
#
# Data: ../shared/data (see its SOURCES.md); override with DATA=/path. Run it alone: two threads, nothing else busy.
set -euo pipefail
DATA=${DATA:-../shared/data}
SQUAD=$DATA/squad/train-v1.1.reconstructed.json.gz
TEXT=$(ls "$DATA"/gutenberg/books-0*.jsonl.gz | tr '\n' ',')$SQUAD
OUTDIR=${OUTDIR:-runs/wiki-cpu-eval}
T="--threads 2"

train() {
  ragsoup pretrain --preset wiki-cpu --text "$TEXT" $T                                  # stage 1, ~40 min
  ragsoup train --preset wiki-cpu-squad --squad "$SQUAD" $T                             # stage 2, soup, ~24 min
  ragsoup train --preset wiki-cpu-squad-concat --squad "$SQUAD" $T                      # the same data and steps, concat, ~18 min
}

evaluate() {
  mkdir -p "$OUTDIR"
  E="--task squad --data $SQUAD --split val --limit 500 --seed 0 --json $T"
  for k in 1 5; do
    for x in "" --extractive; do
      ragsoup eval $E --k $k --model runs/wiki-cpu-squad/last $x > "$OUTDIR/soup-k$k${x:+-extractive}.json"
      ragsoup eval $E --k $k --mode concat --model runs/wiki-cpu-squad-concat/last $x \
        > "$OUTDIR/concat-k$k${x:+-extractive}.json"
    done
  done
  # retrieval + soup end to end over the held-out articles' paragraphs
  ragsoup make-corpus squad --data "$SQUAD" --split val --passages 100000 --queries 500 --seed 0 --out "$OUTDIR/corpus"
  ragsoup index "$OUTDIR/corpus" --out "$OUTDIR/index" --model runs/wiki-cpu-squad/last
  for x in "" --extractive; do
    ragsoup ask --questions "$OUTDIR/corpus/questions.jsonl" --index "$OUTDIR/index" --k 5 --json $x \
      > "$OUTDIR/ask-k5${x:+-extractive}.json"
  done
}

case "${1:-all}" in
  all)   train; evaluate ;;
  train) train ;;
  eval)  evaluate ;;
  *) sed -n '2,9p' "$0"; exit 2 ;;
esac
