#!/usr/bin/env bash
# The GPU measurements of the performance issue, as one prepared run for a
# lent H100/H200 (about 10 minutes; every part has its own time limit, so a
# slow part cannot eat the others).  Writes its tables and JSON under $OUT
# (default benchmarks/out/gpu).
#
#   bash benchmarks/gpu_check.sh                       # on the GPU machine
#   DATA=/path/to/ptb bash benchmarks/gpu_check.sh     # with the time-to-accuracy run
#   SMOKE=1 bash benchmarks/gpu_check.sh               # seconds, any machine: checks the script
#
# Parts: (1) benchmarks/peers.py on the GPU shapes (jrnn with unroll 1 and 8
# and with plain autodiff, Flax, Equinox, PyTorch cuDNN), (2) the tanh
# recurrence alone at T = 1024 (cuDNN's strongest case), (3) the parallel
# scans, (4) `jrnn train --preset zaremba-small --fused-epoch` end to end when
# DATA points at the Penn Treebank (the target: test ppl <= 114.5 in <= 30 s).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
SMOKE=${SMOKE:-}

run() {  # run LIMIT_S NAME CMD...: one part, its output kept in $OUT/NAME.txt
  local limit=$1 name=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "   exit $? ; tail:"
  tail -n 25 "$OUT/$name.txt"
}

"$PY" -c "import jax; print('devices', jax.devices())" | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee -a "$OUT/devices.txt"

if [ -n "$SMOKE" ]; then
  SHAPES=tiny-lm,tiny-rec; RSHAPES=tiny-rec; REPS=2; PS_ARGS="--T 64 --dense-H 8 --B 2"
  TRAIN_ARGS="--epochs 1 --max-windows 5 --bptt 8 --batch-size 4 --hidden-size 16 --embed-size 16"
else
  SHAPES=zaremba-small,zaremba-medium,large-batch,gru-small,elman-small; RSHAPES=rnn-long,long-lstm
  REPS=7; PS_ARGS="--T 1024,4096,16384"; TRAIN_ARGS=""
fi

run 300 peers-lm "$PY" benchmarks/peers.py --shapes "$SHAPES" --autodiff --unroll 1,8 \
  --reps "$REPS" --out "$OUT/peers-lm.json"
run 120 peers-rec "$PY" benchmarks/peers.py --shapes "$RSHAPES" --autodiff --unroll 1,8 \
  --reps "$REPS" --out "$OUT/peers-rec.json"
# shellcheck disable=SC2086
run 90 parallel-scan "$PY" benchmarks/parallel_scan.py $PS_ARGS --out "$OUT/parallel_scan.json"

if [ -n "${DATA:-}" ] || [ -n "$SMOKE" ]; then
  # shellcheck disable=SC2086
  run 240 train-zaremba-small "$PY" -m jrnn train --preset zaremba-small \
    ${DATA:+--data "$DATA"} --fused-epoch --quiet --out "$OUT/run-small" $TRAIN_ARGS
else
  echo "== train-zaremba-small skipped: set DATA to the Penn Treebank folder"
fi
echo "done: $OUT"
