#!/usr/bin/env bash
# Reproduces the bundled model (NUDFCore/models/nudf_laa.pt): one command, fixed seeds.
#   bash benchmarks/train_bundled_model.sh [RUN_DIR]        (default RUN_DIR: runs/)
# 1. 40 compact phantoms, seeds 1000..1039; 2. the last two cases of each morphology are held out for testing
# (runs/phantoms_test); 3. training on the other 32 (12.5 % of them for validation), small preset, CPU or CUDA.
# Stop it at any time and run it again: phantoms are kept and training resumes from runs/nudf_laa.last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs}
NUDF=${NUDF:-.venv/bin/nudf}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUN"
if [ ! -d "$RUN/phantoms" ]; then
  "$NUDF" phantom --out "$RUN/phantoms" --count 40 --seed 1000 --size compact
  "$PY" - "$RUN" <<'PYEOF'
import json, shutil, sys
from collections import defaultdict
from pathlib import Path
run = Path(sys.argv[1])
by = defaultdict(list)
for case in sorted((run / "phantoms").glob("case_*")):
    by[json.loads((case / "meta.json").read_text())["morphology"]].append(case)
(run / "phantoms_test").mkdir(exist_ok=True)
for cases in by.values():
    for case in cases[-2:]:
        shutil.move(str(case), str(run / "phantoms_test" / case.name))
PYEOF
fi
RESUME=()
[ -f "$RUN/nudf_laa.last.pt" ] && RESUME=(--resume)
"$NUDF" train --data "$RUN/phantoms" --out "$RUN/nudf_laa.pt" --preset small --epochs 22 --steps-per-epoch 150 \
  --points 4000 --lr 1e-3 --val-fraction 0.125 --seed 0 --threads 2 --sample-points 150000 "${RESUME[@]}"
