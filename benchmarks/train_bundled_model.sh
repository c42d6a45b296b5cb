#!/usr/bin/env bash
# Reproduces the bundled model (NUDFCore/models/nudf_laa.pt): one command, fixed seeds.
#   bash benchmarks/train_bundled_model.sh [RUN_DIR]        (default RUN_DIR: runs/)
# 1. 120 compact domain-randomised phantoms, seeds 2000..2119, with the style "narrow_neck" held out
#    (so the generalisation benchmark can test on a shape the model never saw);
# 2. test sets that training never touches: RUN/phantoms_test (12 cases, seeds 2900.., same styles),
#    RUN/phantoms_narrow_neck (8 cases, seeds 3000.., every one with the held-out style);
# 3. training, small preset, CPU or CUDA, 10 % of the training cases for validation.
# Stop it at any time and run it again: phantoms are kept and training resumes from RUN/nudf_laa.last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs}
NUDF=${NUDF:-.venv/bin/nudf}
WORKERS=${WORKERS:-2}
mkdir -p "$RUN"
make_set() {  # folder count seed [style options]
  local dir=$1 count=$2 seed=$3; shift 3
  if [ ! -f "$RUN/$dir/.complete" ]; then
    "$NUDF" phantom --out "$RUN/$dir" --count "$count" --seed "$seed" --size compact --workers "$WORKERS" --force "$@"
    touch "$RUN/$dir/.complete"
  fi
}
make_set phantoms 120 2000 --exclude-style narrow_neck
make_set phantoms_test 12 2900 --exclude-style narrow_neck
make_set phantoms_narrow_neck 8 3000 --only-style narrow_neck
RESUME=()
[ -f "$RUN/nudf_laa.last.pt" ] && RESUME=(--resume)
"$NUDF" train --data "$RUN/phantoms" --out "$RUN/nudf_laa.pt" --preset small --epochs 30 --steps-per-epoch 150 \
  --points 4000 --lr 1e-3 --val-fraction 0.1 --seed 0 --threads 2 --sample-points 150000 "${RESUME[@]}"
