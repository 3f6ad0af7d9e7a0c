#!/usr/bin/env bash
# The GPU measurements of the performance issue, as one prepared run for a
# lent H100/H200: at most $BUDGET s (480) in all, compiles included; every
# part has its own time limit, so a slow or failing part cannot eat the
# others.  Run from anywhere; it works from the repository root with
# PYTHONPATH=. (jrnn need not be installed).
#
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh   # on the GPU machine
#   SMOKE=1 bash benchmarks/gpu_check.sh              # any machine, tiny shapes, ~2 min
#
# Environment: OUT (default benchmarks/out/gpu), DATA (the Penn Treebank
# folder with ptb.{train,valid,test}.txt; default .data/ptb when it exists),
# PYTHON (default python3), BUDGET (seconds, default 480), SMOKE.
#
# Parts, in order, with their nominal time limits in s on a GPU:
#   devices                 15  nvidia-smi, versions, CPU model
#   check                   40  jrnn LSTM weights -> jax.experimental.rnn (lstm_ref; cuDNN on
#                               GPU); jrnn's pallas, pallas-bf16 and cudnn methods vs its scan
#   peers-zaremba-small     45  } benchmarks/peers.py, one shape per process: PyTorch cuDNN
#   peers-zaremba-medium    40  }   f32 and fp16, jax.experimental.rnn (cuDNN), jrnn unroll 8
#   peers-large-batch       45  }   and 1 (hand-written backward) and unroll 8 with autodiff,
#   peers-rnn-long          45  }   Flax, jrnn Pallas (f32, bf16; n/a over the on-chip
#   peers-lstm-1024-768     45  }   budget), jrnn cuDNN
#   peers-rnn-long-128      35  }   (shapes within the Pallas budget)
#   peers-lstm-long-64      35  }
#   train-zaremba-small    120  jrnn train --preset zaremba-small --fused-epoch (time to ppl)
#   train-zaremba-medium     -  the same for zaremba-medium with what is left (if >= 30 s)
#   packing                 10
#                        = 475 <= $BUDGET = 480 s (8 minutes)
# A part may also use the seconds the parts before it left unused (their
# nominal limit minus their time), so every part still gets its nominal limit
# and the whole run stays within $BUDGET; zaremba-medium gets what is left
# (skipped under 30 s).  Each part gets TERM at its limit - 5 s, KILL at it.
#
# $OUT receives only: gpu_table.txt (THE table), gpu_results.json, logs.txt,
# devices.txt, raw.tar.gz (the parts' own JSON and logs).  They are rewritten
# after every part, so a run stopped from outside keeps what was measured.
set -u

case "${OUT:-}" in
  "") OUT_DIR="" ;;
  /*) OUT_DIR=$OUT ;;
  *) OUT_DIR="$PWD/$OUT" ;;
esac
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT_DIR:-$PWD/benchmarks/out/gpu}
mkdir -p "$OUT" || exit 1

export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX and PyTorch share the GPU within one process: JAX must not grab 75 % of
# it up front, and stays under half of it; PyTorch's cache is emptied after
# each of its runs (benchmarks/peers.py).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}

PY=${PYTHON:-python3}
SMOKE=${SMOKE:-}
BUDGET=${BUDGET:-480}
RESERVE=10       # s kept for the final packing
MIN_PART=8       # s: a part with less time left than this is skipped
NOMINAL_DONE=0   # sum of the nominal limits of the parts run so far
T0=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/jrnn-gpu.XXXXXX") || exit 1
: >"$WORK/status.tsv"

if [ -z "${DATA:-}" ] && [ -d .data/ptb ]; then
  DATA=.data/ptb
fi
DATA=${DATA:-}

if [ -n "$SMOKE" ]; then
  # Tiny shapes, every code path that runs on a CPU; timings mean nothing.
  DEVICES_LIMIT=20
  SHAPES="tiny-lm:90 tiny-rec:60 tiny-elman-rec:60"
  PEER_TIMING=(--reps 2 --rep-seconds 0.02 --warmup 1)
  CHECK_ARGS=(--emulate)
  CHECK_LIMIT=120
  TINY=(--epochs 1 --max-windows 5 --bptt 8 --batch-size 4 --hidden-size 16 --embed-size 16)
  SMALL_ARGS=("${TINY[@]}")
  MEDIUM_ARGS=(--epochs 1000 --max-windows 5 --bptt 8 --batch-size 4 --hidden-size 16
               --embed-size 16)
  SMALL_LIMIT=90
  CELL_ARGS=(--smoke)
  CELL_LIMIT=90
  MEDIUM_MAX=15    # short on purpose: exercises the cut-off path
  DATA=""          # the built-in corpus
  BUDGET=${SMOKE_BUDGET:-600}
else
  DEVICES_LIMIT=15
  SHAPES="zaremba-small:45 zaremba-medium:40 large-batch:45 rnn-long:45 lstm-1024-768:45"
  SHAPES="$SHAPES rnn-long-128:35 lstm-long-64:35"
  PEER_TIMING=(--reps 3 --rep-seconds 0.2 --warmup 2)
  CHECK_ARGS=()
  CHECK_LIMIT=40
  SMALL_ARGS=()
  MEDIUM_ARGS=()
  SMALL_LIMIT=120
  CELL_ARGS=(--reps 3)
  CELL_LIMIT=60
  MEDIUM_MAX=$BUDGET
fi
# PyTorch and jrnn's default first, then the like-with-like rows (full float32, fp16), the
# one-block kernels, cuDNN through JAX, Flax, and last the persistent kernels (never run on a
# GPU before: their grid barrier could spin until the part's limit): a part cut off by its
# limit loses the last ones.
PEERS=torch,jrnn,torch-f32-full,jrnn-f32-full,torch-fp16,jrnn-pallas,jrnn-pallas-bf16,jax-cudnn,jrnn-cudnn,flax,jrnn-persistent,jrnn-persistent-bf16

elapsed() { echo $(( $(date +%s) - T0 )); }

pack() {  # the table, JSON and logs into $OUT, from whatever has finished
  timeout -k 2 8 "$PY" benchmarks/gpu_report.py "$WORK" "$OUT" --budget "$BUDGET" \
    --elapsed "$(elapsed)" ${SMOKE:+--smoke} "$@" 2>>"$WORK/report.err"
}

record() {  # record NAME LIMIT RC SECONDS [NOTE]
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$WORK/status.tsv"
}

run_part() {  # run_part NAME NOMINAL CMD...: one part, its output in $WORK/NAME.log
  local name=$1 nominal=$2
  shift 2
  local now limit left
  now=$(elapsed)
  # Its nominal limit plus what the parts before it left unused.
  limit=$(( nominal + NOMINAL_DONE - now ))
  NOMINAL_DONE=$(( NOMINAL_DONE + nominal ))
  left=$(( BUDGET - RESERVE - now ))
  if (( left < limit )); then
    limit=$left
  fi
  if (( limit < MIN_PART )); then
    echo "== $name skipped: ${left}s left in the budget"
    record "$name" "$limit" skip 0 "no time left in the ${BUDGET}s budget"
    pack
    return 0
  fi
  echo "== $name (limit ${limit}s; $(elapsed)s used so far): $*"
  local t1 t2 rc secs
  t1=$(date +%s.%N)
  # TERM at limit - 5 s, KILL 5 s later: the part never outlives its limit.
  timeout -k 5 $(( limit - 5 )) "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  t2=$(date +%s.%N)
  secs=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", b - a }')
  record "$name" "$limit" "$rc" "$secs"
  local how="exit $rc"
  if (( rc == 124 || rc == 137 )); then
    how="TIME LIMIT (exit $rc)"
  fi
  echo "   $how after ${secs}s; tail:"
  tail -n 8 "$WORK/$name.log" | cut -c1-200 | sed 's/^/   | /'
  pack
}

devices() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  smoke: ${SMOKE:-no}"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1
  else
    echo "nvidia-smi: not available"
  fi
  "$PY" -c '
import importlib.metadata as md, platform
vs = []
for n in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "chex",
          "equinox", "torch", "numpy"):
    try:
        vs.append(f"{n} {md.version(n)}")
    except Exception:
        pass
print("python", platform.python_version(), "|", ", ".join(vs))
try:
    import jax
    print("jax:", jax.default_backend(), jax.devices(), "|", jax.devices()[0].device_kind)
except Exception as e:
    print("jax: failed:", type(e).__name__, e)
try:
    import torch
    cuda = torch.cuda.is_available()
    print("torch:", torch.__version__, "cuda", torch.version.cuda, "cudnn",
          torch.backends.cudnn.version(), "|", torch.cuda.get_device_name(0) if cuda else "no GPU")
except Exception as e:
    print("torch: failed:", type(e).__name__, e)
'
  echo "cpu: $(lscpu 2>/dev/null | grep -m1 'Model name' | sed 's/Model name:[[:space:]]*//') | nproc $(nproc)"
  echo "env: XLA_PYTHON_CLIENT_PREALLOCATE=$XLA_PYTHON_CLIENT_PREALLOCATE" \
       "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION DATA=${DATA:-none}"
}
export -f devices
export PY SMOKE DATA

echo "jrnn GPU check: budget ${BUDGET}s, work folder $WORK, results in $OUT"
# shellcheck disable=SC2016  # $0 is expanded by the inner bash
run_part devices "$DEVICES_LIMIT" bash -c 'devices | tee "$0"' "$WORK/devices.txt"

run_part check "$CHECK_LIMIT" "$PY" benchmarks/jax_cudnn.py ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} \
  --out "$WORK/check.json"

for spec in $SHAPES; do
  shape=${spec%%:*}
  run_part "peers-$shape" "${spec##*:}" "$PY" benchmarks/peers.py --shapes "$shape" \
    --peers "$PEERS" --unroll 8,1 --autodiff "${PEER_TIMING[@]}" --out "$WORK/peers-$shape.json"
done

# Every cell kind, sequential scan against its parallel form (issue 26's rows).
run_part cell-speed "$CELL_LIMIT" "$PY" benchmarks/cell_speed.py ${CELL_ARGS[@]+"${CELL_ARGS[@]}"} \
  --json "$WORK/cell-speed.json"

if [ -z "$SMOKE" ] && { [ -z "$DATA" ] || [ ! -f "$DATA/ptb.train.txt" ]; }; then
  echo "== train parts skipped: no Penn Treebank at DATA=${DATA:-.data/ptb}"
  record train-zaremba-small 0 skip 0 "no Penn Treebank: set DATA or put it at .data/ptb"
  record train-zaremba-medium 0 skip 0 "no Penn Treebank"
  pack
else
  # The whole epoch in one call on the card; the smoke run's --max-windows cuts epochs short,
  # which jrnn refuses with --fused-epoch, so it trains window by window.
  FUSED=(--fused-epoch)
  [ -n "$SMOKE" ] && FUSED=()
  run_part train-zaremba-small "$SMALL_LIMIT" "$PY" -m jrnn train --preset zaremba-small \
    ${DATA:+--data "$DATA"} ${FUSED[@]+"${FUSED[@]}"} --quiet --out "$WORK/run-zaremba-small" \
    ${SMALL_ARGS[@]+"${SMALL_ARGS[@]}"}
  # What is left of the budget: the unallocated nominal seconds plus the unused ones.
  now=$(elapsed)
  left=$(( BUDGET - RESERVE - now ))
  limit=$(( left < MEDIUM_MAX ? left : MEDIUM_MAX ))
  if (( limit >= 30 )) || { [ -n "$SMOKE" ] && (( limit >= MIN_PART )); }; then
    # run_part grants NOMINAL + (NOMINAL_DONE - now): the nominal that gives $limit.
    run_part train-zaremba-medium $(( limit - NOMINAL_DONE + now )) \
      "$PY" -m jrnn train --preset zaremba-medium \
      ${DATA:+--data "$DATA"} ${FUSED[@]+"${FUSED[@]}"} --quiet --out "$WORK/run-zaremba-medium" \
      ${MEDIUM_ARGS[@]+"${MEDIUM_ARGS[@]}"}
  else
    echo "== train-zaremba-medium skipped: ${left}s left"
    record train-zaremba-medium "$limit" skip 0 "only ${left}s left in the budget"
  fi
fi

# The parts' own files (no checkpoints), then the final table.
tar czf "$OUT/raw.tar.gz" --exclude='*.ckpt*' -C "$WORK" . 2>/dev/null || true
echo
pack --final
echo
echo "done in $(elapsed)s (budget ${BUDGET}s): $OUT"
ls -l "$OUT"
