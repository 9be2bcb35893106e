#!/usr/bin/env bash
# Reproduces the shipped default model (ragsoup/models/default) on a 2-core CPU, in six stages.
# See docs/models.md for what each stage does, its cost and its held-out EM.
set -euo pipefail
threads=${THREADS:-2}
# stage 1: from scratch, k from 1 up to 64 (curriculum), needle + distractor needles + two-hop; the schedule
# spans 3000 steps, the shipped model used the first 2000 of them
ragsoup train --preset default --until 2000 --threads "$threads"
python "$(dirname "$0")/stage_ok.py" runs/default   # stop here if stage 1 never left the loss plateau
# stage 2: k up to 512 through a filler-state bank, 3 extra questions per soup
ragsoup train --preset default-k512 --threads "$threads"
# stage 3: more key matching (distractor + multi-key needles), k up to 256
ragsoup train --preset default-keys --threads "$threads"
# stage 4: single needles at large k (filler bank up to 512), key matching and two-hop kept in the mix
ragsoup train --preset default-needle --threads "$threads"
# stage 5: chaining two facts (two-hop 4 : needle 1 : distractor 1), k 2-8; ~77 min with one thread
ragsoup train --preset default-twohop --threads "$threads"
# stage 6: large k again through the filler bank (half of it Gutenberg prose: ../shared/data/gutenberg/books-00),
# two-hop kept in the mix; the shipped model stopped at step 558
ragsoup train --preset default-final --until 558 --threads "$threads"
python - <<'PY'
import shutil
shutil.rmtree("ragsoup/models/default", ignore_errors=True)
shutil.copytree("runs/default-final/last", "ragsoup/models/default")
print("shipped runs/default-final/last -> ragsoup/models/default")
PY
ragsoup background default   # the background state that --pool centered reads
