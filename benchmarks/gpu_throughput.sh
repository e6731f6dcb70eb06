#!/usr/bin/env bash
# Training throughput on one GPU, the usual path next to the static-shape and compiled variants:
#
#   OUT=runs/throughput bash benchmarks/gpu_throughput.sh [PRESETS]   # PRESETS: small, paper or all (default)
#
# Each variant is one `python -m pfn.benchmarks.throughput` run (its own process, so that one
# compilation or failure does not touch the next) with a time limit; compiled variants warm up
# for 20 s so that compilation stays out of the timing window. The JSON files and logs land in
# $OUT; the last lines of each log show its table.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-runs/throughput}"
PRESETS="${1:-all}"
mkdir -p "$OUT"

run() {  # NAME LIMIT_SECONDS ARGS...
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python3 -m pfn.benchmarks.throughput --preset "$PRESETS" --out "$OUT/throughput-$name.json" "$@" \
        > "$OUT/throughput-$name.log" 2>&1 || echo "$name: failed or timed out (see $OUT/throughput-$name.log)"
    tail -n 6 "$OUT/throughput-$name.log"
}

run eager 150
run static 150 --static_shapes
run static-compile 240 --static_shapes --compile --warmup 20
run static-cudagraphs 240 --static_shapes --compile --compile_mode reduce-overhead --warmup 20
