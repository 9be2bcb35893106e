#!/usr/bin/env bash
# The one-hour recipe (docs/models.md, "One hour on a CPU"): three of the six stages of benchmarks/train_default.sh,
# with the last one (large k through a filler bank, half of it Gutenberg prose, two-hop kept in the mix) taken
# straight after stage 2. About 58 minutes on a 2-core CPU with nothing else running (stages: ~36 + 14 + 8).
# It answers single needles as well as the shipped six-stage model; two-hop questions less well (no stage 5).
set -euo pipefail
threads=${THREADS:-2}
ragsoup train --preset default --until 2000 --out runs/quick-s1 --threads "$threads"
python "$(dirname "$0")/stage_ok.py" runs/quick-s1   # stop here if stage 1 never left the loss plateau
ragsoup train --preset default-k512 --init runs/quick-s1/last --out runs/quick-s2 --threads "$threads"
ragsoup train --preset default-final --init runs/quick-s2/last --out runs/quick-s3 --threads "$threads"
ragsoup background runs/quick-s3/last   # the background state that --pool centered reads
