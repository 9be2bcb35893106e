#!/usr/bin/env bash
# The evaluation cells of docs/models.md's one-hour comparisons (docs/data/eval_hour.json), most telling first:
#   bash benchmarks/eval_hour.sh MODEL OUTDIR
# Each cell is one `ragsoup eval` / `ask` / `bench` run whose --json output lands in OUTDIR/CELL.json (its EM is the
# "em" field); a cell already in OUTDIR is skipped, so an interrupted run resumes. Needs the model's background
# file (`ragsoup background MODEL`) for the centered cells. About 15 minutes up to the demo on a 2-core CPU; the
# 512-question two-hop cells and the two-hop corpus (`bench`, which builds its own index) take longer.
set -uo pipefail
M=${1:?usage: eval_hour.sh MODEL OUTDIR}
O=${2:?usage: eval_hour.sh MODEL OUTDIR}
threads=${THREADS:-2}
mkdir -p "$O"
cell() {  # cell NAME EVAL-OPTIONS...: one `ragsoup eval` cell
    local name=$1; shift
    [ -s "$O/$name.json" ] && return
    ragsoup eval --model "$M" --threads "$threads" --json "$@" > "$O/$name.json" 2> "$O/$name.err"
    echo "$name $(python -c "import json, sys; print(json.load(open(sys.argv[1]))['em'])" "$O/$name.json")"
}
cell centered777-k16 --task needle --k 16 --limit 256 --seed 777 --pool centered
cell centered777-k64 --task needle --k 64 --limit 256 --seed 777 --pool centered
cell distractor-centered-k16 --task needle-distractor --k 16 --limit 64 --seed 12345 --pool centered
cell multikey-centered-k16 --task needle-multikey --k 16 --limit 64 --seed 12345 --pool centered
cell twohop-k2 --task two-hop --k 2 --limit 128 --seed 12345
cell twohop-k5 --task two-hop --k 5 --limit 128 --seed 12345
if [ ! -s "$O/demo--extractive.json" ]; then
    ragsoup index corpora/demo --out "$O/demo-index" --model "$M" > /dev/null
    ragsoup ask --questions corpora/demo/questions.jsonl --index "$O/demo-index" --hops 2 --json > "$O/demo.json"
    ragsoup ask --questions corpora/demo/questions.jsonl --index "$O/demo-index" --hops 2 --extractive --json \
        > "$O/demo--extractive.json"
fi
cell needle-centered-k16 --task needle --k 16 --limit 64 --seed 12345 --pool centered
cell needle-centered-k64 --task needle --k 64 --limit 64 --seed 12345 --pool centered
cell needle-centered-k256 --task needle --k 256 --limit 64 --seed 12345 --pool centered
prose=../shared/data/gutenberg/books-03.jsonl.gz
cell prose-centered-k64 --task needle --k 64 --limit 64 --seed 12345 --pool centered --filler "$prose"
cell prose-centered-k256 --task needle --k 256 --limit 64 --seed 12345 --pool centered --filler "$prose"
cell needle-mean-k16 --task needle --k 16 --limit 64 --seed 12345
cell needle-mean-k64 --task needle --k 64 --limit 64 --seed 12345
cell needle-retr-k256 --task needle --k 256 --limit 64 --seed 12345 --weights retrieval
cell twohop-k5-777 --task two-hop --k 5 --limit 512 --seed 777
cell twohop-k5-777-concat --task two-hop --k 5 --limit 512 --seed 777 --mode concat
for w in retrieval uniform; do
    for x in "" --extractive; do
        n=twohop-corpus-k5-$w${x:+-extractive}
        [ -s "$O/$n.json" ] && continue
        ragsoup bench --task two-hop --hops 2 --passages 1000 --queries 200 --concat-queries 200 --seed 3 --k 5 \
            --model "$M" --modes soup --weights "$w" $x --json > "$O/$n.json"
    done
done
