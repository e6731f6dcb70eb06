#!/usr/bin/env bash
# Training throughput on one GPU, the usual path next to the static-shape and compiled variants:
#
#   OUT=runs/throughput bash benchmarks/gpu_throughput.sh [PRESETS [ARGS...]]   # PRESETS: small, paper or all
#   bash benchmarks/gpu_throughput.sh small --quick --seconds 0.5            # a CPU smoke test of the script
#   VARIANTS="eager static-cudagraphs" OUT=... bash benchmarks/gpu_throughput.sh paper   # some of the four
#
# Each variant is one `python -m pfn.benchmarks.throughput` run (its own process, so that one
# compilation or failure does not touch the next) with a time limit; compiled variants warm up
# for 5 s after their first steps (one shape: they compile once, before the timing window).
# The JSON files and logs land in $OUT; the last lines of each log show its table.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-runs/throughput}"
PRESETS="${1:-all}"
shift || true
EXTRA=("$@")
mkdir -p "$OUT"

VARIANTS="${VARIANTS:-eager static static-compile static-cudagraphs}"

run() {  # NAME LIMIT_SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    [[ " $VARIANTS " == *" $name "* ]] || return 0
    timeout "$limit" python3 -m pfn.benchmarks.throughput --preset "$PRESETS" --out "$OUT/throughput-$name.json" "$@" "${EXTRA[@]}" \
        > "$OUT/throughput-$name.log" 2>&1 || echo "$name: failed or timed out (see $OUT/throughput-$name.log)"
    tail -n 6 "$OUT/throughput-$name.log"
}

# The eager path in full (prior, Cholesky, model step, end to end with and without prefetch);
# the variants the model step and end to end, with and without prefetch. The last is what
# training does on a CUDA GPU by default (train.compile etc. "auto").
run eager 150 --compile false --static_shapes false
STEP="--measure model_step,end_to_end,end_to_end_prefetch"
run static 90 --compile false --static_shapes true $STEP
run static-compile 160 --compile true --static_shapes true --compile_mode default --warmup 5 $STEP
run static-cudagraphs 160 --compile true --static_shapes true --compile_mode reduce-overhead --warmup 5 $STEP
