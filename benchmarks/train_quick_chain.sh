#!/usr/bin/env bash
# The one-hour recipe that also chains two facts (docs/models.md, "One hour on a CPU"): stage 1 of the shipped
# recipe (from scratch, k 1->64), then stage 5's task mix (two-hop 4 : needle 1 : distractor 1) at k 2-4 for two runs
# of 2,400 steps (the second a fresh cosine from the first's end, another data seed). No filler-bank stage: large-k
# needles read best with the retrieval weights `ask` uses. About an hour on a 2-core CPU with nothing else running.
set -euo pipefail
threads=${THREADS:-2}
ragsoup train --preset default --until 2000 --out runs/chain-s1 --threads "$threads"
ragsoup train --preset default-twohop --init runs/chain-s1/last --out runs/chain-s2 --k-max 4 --steps 2400 \
    --eval-every 800 --save-every 400 --threads "$threads"
ragsoup train --preset default-twohop --init runs/chain-s2/last --out runs/chain-s3 --k-max 4 --steps 2400 \
    --eval-every 800 --save-every 400 --seed 11 --threads "$threads"
ragsoup background runs/chain-s3/last   # the background state that --pool centered reads
