#!/usr/bin/env bash
# One GPU session's work in one command (see "With a GPU" in benchmarks/README.md):
#
#   bash benchmarks/gpu_session.sh TOTAL_SECONDS     # e.g. 560, on the device machine, with $OUT set
#
# 1. the GPU-only tests (`pytest -m gpu`), among them the checks that CUDA-graph training (and a
#    linear-readout model compiled without graphs) takes the steps eager training does;
# 2. the "paper" throughput config on the eager path: the prior's share of a step, the sync probe's
#    stacks (one sync in three model steps, inside torch, unexplained: results/gpu-session-2026-11-28.md)
#    and the `linalg` measurement (the prior's float64 Cholesky under cuSOLVER and MAGMA; whether
#    a linear readout's solves can be captured in a CUDA graph with either). The CUDA-graph default
#    at "paper" was measured on 2026-11-28 (1,129 datasets/s end to end, 1,358 model step);
# 3. `gp` continued from the shipped model, alone, for what is left of TOTAL_SECONDS (float32,
#    exact targets; `auto` compiles a readout model without CUDA graphs). It has a linear readout
#    since 2026-11-28 (+0.053 -> +0.026 in 3.2 shared H100 minutes, +0.017 after 133 CPU minutes more):
#    compare the result with `pfn compare NEW gp` and `pfn bench gp` before shipping it. Override
#    its arguments with EXTRA_ARGS_gp, train others with MODELS="gp gp_hyper" (and EXTRA_ARGS_<name>),
#    or leave training out with SKIP_TRAINING=1. `gp_hyper` lost 0.004-0.023 nats from 3.2 eager
#    minutes at batch 128 there (990 steps: its eigendecomposition synchronises), so it is not in
#    the default.
#
# What comes back from $OUT (at most 8 files): gpu-tests.log, tp/throughput-eager.{json,log},
# train/<model>.pfn, train/logs.tgz and bench-bnn-gpu.tgz.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
: "${OUT:?set OUT to the folder whose files come back}"
TOTAL_SECONDS="${1:-560}"
START=$(date +%s)
mkdir -p "$OUT" runs

# 0. The bnn PFN on this GPU against one chain of NUTS-512 on one CPU thread of this machine (issue 3's
#    10,000x target; `pfn bench --device cuda`), at 10, 50 and 100 points: one process per context
#    size, started 15 s apart, so that each times its PFN in its first seconds, before anything else
#    uses the GPU; NUTS (8 datasets each: about 2, 3.5 and 5 minutes) then runs on the CPU beside the
#    rest. SKIP_BNN_SPEED=1 leaves it out. Its results and logs come back packed in bench-bnn-gpu.tgz.
BENCH_PIDS=()
if [ -z "${SKIP_BNN_SPEED:-}" ]; then
    mkdir -p "$OUT/bench"
    for context in 100 50 10; do
        OMP_NUM_THREADS=1 timeout $(( TOTAL_SECONDS - 40 )) python3 -m pfn.cli bench bnn --model bnn --device cuda \
            --context $context --datasets 8 --budgets 512 --out_dir "$OUT/bench" --tag "gpu-ctx$context" \
            > "$OUT/bench/bench-bnn-gpu-ctx$context.log" 2>&1 &
        BENCH_PIDS+=($!)
        sleep 15
    done
    sleep 10
fi
pack_bench() {  # waits for the bnn benchmarks and packs their files into one (at most 8 files come back)
    [ ${#BENCH_PIDS[@]} -eq 0 ] && return 0
    wait "${BENCH_PIDS[@]}"
    tar -czf "$OUT/bench-bnn-gpu.tgz" -C "$OUT" bench && rm -r "$OUT/bench"
}
trap pack_bench EXIT

timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests > "$OUT/gpu-tests.log" 2>&1
echo "GPU tests: $(tail -n 1 "$OUT/gpu-tests.log")"

# THROUGHPUT_ARGS="--quick --seconds 0.3" makes this a CPU smoke test.
VARIANTS="${VARIANTS:-eager}" OUT="$OUT/tp" bash benchmarks/gpu_throughput.sh paper ${THROUGHPUT_ARGS:-}

[ -n "${SKIP_TRAINING:-}" ] && exit 0
LEFT=$(( TOTAL_SECONDS - ($(date +%s) - START) ))
if [ "$LEFT" -lt 150 ]; then
    echo "only ${LEFT}s left: no training"
    exit 0
fi
python3 -m pfn.cli models gp_hyper --write-config runs/gp_hyper-shipped.yaml > /dev/null  # 4 x 128, not the config's 6 x 256
SKIP_THROUGHPUT=1 SKIP_LC=1 CONFIG_gp_hyper=runs/gp_hyper-shipped.yaml OUT="$OUT/train" \
    EXTRA_ARGS_gp="${EXTRA_ARGS_gp:---train.init_from gp --train.lr 1e-4 --train.warmup_steps 50 --train.precision 32-true --seed $START}" \
    EXTRA_ARGS_gp_hyper="${EXTRA_ARGS_gp_hyper:---train.init_from gp_hyper --data.batch_size 128 --train.lr 1e-4 --train.warmup_steps 50 --train.precision 32-true --train.exact_targets true --seed $((START + 1))}" \
    bash benchmarks/train_shipped.sh "$LEFT" ${MODELS:-gp}
