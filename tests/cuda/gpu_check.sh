#!/bin/sh
# The GPU half of the CUDA tests, as one script that logs to one file
# (build/cuda/gpu_check.log) and finishes in about five minutes:
#   sh tests/cuda/gpu_check.sh check   every CUDA test on the GPU, then
#                                      compute-sanitizer memcheck and
#                                      racecheck on small sweeps
#   sh tests/cuda/gpu_check.sh bench   bench_cuda.cu and PyTorch, same GPU
#   sh tests/cuda/gpu_check.sh         both
# (make cuda-check / make cuda-bench). Without a GPU it says so and exits 2:
# nothing is reported as passed.
mode=${1:-all}
mkdir -p build/cuda
log=build/cuda/gpu_check.log
: > "$log"
say() { echo "$*" | tee -a "$log"; }

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "[cuda-gpu] no GPU (nvidia-smi finds none): GPU tests and benchmarks NOT run"
    exit 2
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' .')
say "[cuda-gpu] $(nvidia-smi -L | head -n 1), building for sm_$cap"
if ! CUDA_ARCHS="$cap" make -s cuda-tests build/cuda/sm$cap/bench_cuda >> "$log" 2>&1; then
    say "[cuda-gpu] build FAILED (see $log)"
    exit 1
fi
passed=0
failed=0
run() { # name, seconds, command...: runs with a time limit, tallies the "N passed, M failed" line
    name=$1
    limit=$2
    shift 2
    timeout "$limit" "$@" > build/cuda/gpu_out.txt 2>&1
    rc=$?
    cat build/cuda/gpu_out.txt >> "$log"
    line=$(grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed$' build/cuda/gpu_out.txt | tail -n 1)
    p=$(echo "$line" | sed -nE 's/.*: ([0-9]+) passed.*/\1/p')
    f=$(echo "$line" | sed -nE 's/.* ([0-9]+) failed$/\1/p')
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-1}))
    [ $rc -ne 0 ] && failed=$((failed + 1))
    say "[$name] ${line:-no result line} (exit $rc)"
    [ $rc -ne 0 ] && grep -E 'FAIL|ERROR|error' build/cuda/gpu_out.txt | head -20 | tee -a "$log"
}

if [ "$mode" = check ] || [ "$mode" = all ]; then
    for bin in build/cuda/sm$cap/test_*; do
        case "$bin" in *.ptxas) continue ;; esac
        run cuda-gpu 60 "$bin"
    done
    if command -v compute-sanitizer >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
        cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
        for bin in build/cuda/sm$cap/test_*; do
            case "$bin" in *.ptxas|*test_simt) continue ;; esac
            MLKCT_SMALL=1 run memcheck 60 "$cs" --tool memcheck --error-exitcode 3 "$bin"
            case "$bin" in *test_ternary) continue ;; esac # no shared memory to race on
            MLKCT_SMALL=1 run racecheck 60 "$cs" --tool racecheck --error-exitcode 3 "$bin"
        done
    else
        say "[cuda-gpu] compute-sanitizer not found: memcheck NOT run"
        failed=$((failed + 1))
    fi
    say "[cuda-gpu] $passed passed, $failed failed"
fi

if [ "$mode" = bench ] || [ "$mode" = all ]; then
    timeout 120 build/cuda/sm$cap/bench_cuda 2>&1 | tee -a "$log"
    if command -v python3 >/dev/null 2>&1; then
        timeout 180 python3 tests/cuda/bench_torch.py 2>&1 | tee -a "$log"
    else
        say "[cuda-bench] python3 not found: no PyTorch comparison"
    fi
fi
say "[cuda-gpu] log: $log"
[ "$failed" -eq 0 ]
