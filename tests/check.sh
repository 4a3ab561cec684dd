#!/bin/sh
# Runs every test binary of every configuration, compares the OpenMP build's
# digests for 1, 2, 3 and 4 threads, runs tests/extra/*.sh (examples, fuzzing,
# consumers), and ends with one line: N passed, N failed.
# Usage: tests/check.sh "CONFIGS" "TESTS"   (make check passes both)
configs=$1
tests=$2
passed=0
failed=0
log=build/check.log
mkdir -p build
: > "$log"

# counts the "N passed, M failed" line a test binary prints
tally() {
    line=$(grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed$' "$1" | tail -n 1)
    if [ -z "$line" ]; then failed=$((failed + 1)); return; fi
    p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
    passed=$((passed + p))
    failed=$((failed + f))
}

for cfg in $configs; do
    for t in $tests; do
        bin=build/$cfg/$t
        if [ "$cfg" = omp ]; then
            # the same digest (bitwise results) for 1, 2, 3 and 4 threads: 3
            # splits work unevenly, and 3 and 4 oversubscribe a 2-core runner
            # (about 1 minute more than 1 and 2 alone on such a runner)
            d1=; differ=; bad=0
            for n in 1 2 3 4; do
                OMP_NUM_THREADS=$n ./$bin > build/out$n.txt 2>&1; rc=$?
                tally build/out$n.txt
                cat build/out$n.txt >> "$log"
                d=$(grep '^digest' build/out$n.txt)
                [ $n -eq 1 ] && d1=$d
                [ -n "$d" ] && [ "$d" = "$d1" ] || differ="$differ $n:$d"
                if [ $rc -ne 0 ]; then
                    bad=1; echo "[omp$n] $t FAILED:"; grep -E 'FAIL|ERROR|error' build/out$n.txt | head -20
                fi
            done
            if [ -z "$differ" ] && echo "$d1" | grep -q 'nothing digested'; then
                echo "[omp] $t: no threaded results to compare (nothing digested; not counted)"
            elif [ -z "$differ" ]; then
                passed=$((passed + 1))
                echo "[omp] $t: 1, 2, 3 and 4 threads bitwise identical ($d1)"
            else
                failed=$((failed + 1))
                echo "[omp] $t: FAIL thread counts differ from 1 thread ($d1;$differ)"
            fi
            [ $bad -ne 0 ] && failed=$((failed + 1))
        else
            ./$bin > build/out.txt 2>&1; rc=$?
            tally build/out.txt
            cat build/out.txt >> "$log"
            echo "[$cfg] $(grep -E 'passed, [0-9]+ failed$' build/out.txt | tail -n 1)"
            if [ $rc -ne 0 ]; then
                failed=$((failed + 1))
                echo "[$cfg] $t FAILED (exit $rc):"; grep -v '^digest' build/out.txt | tail -25
            fi
        fi
    done
done

# ---- CUDA (tests/cuda/cuda.mk): the emulated tests and the ptxas spill check ----
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
    for src in tests/cuda/test_*.cu; do
        t=$(basename "$src" .cu); bin=build/cuda/emu/$t
        "$bin" > build/out.txt 2>&1; rc=$?
        tally build/out.txt
        cat build/out.txt >> "$log"
        echo "[cuda-emu] $(grep -E 'passed, [0-9]+ failed$' build/out.txt | tail -n 1)"
        if [ $rc -ne 0 ]; then
            failed=$((failed + 1))
            echo "[cuda-emu] $t FAILED (exit $rc):"; grep -v '^digest' build/out.txt | tail -25
        fi
    done
    if sh tests/cuda/ptxas_check.sh > build/out.txt 2>&1; then
        passed=$((passed + 1)); echo "[cuda-nvcc] $(cat build/out.txt)"
    else
        failed=$((failed + 1)); echo "[cuda-nvcc] FAILED:"; cat build/out.txt
    fi
else
    echo "[cuda] nvcc not found: the CUDA tests were not built or run (skipped, not passed)"
fi
# ---- end CUDA ----

for x in tests/extra/*.sh; do
    [ -f "$x" ] || continue
    name=$(basename "$x" .sh)
    sh "$x" > build/extra_$name.txt 2>&1; rc=$?
    if [ $rc -eq 77 ]; then # cannot run on this machine: said, never counted as passed
        echo "[extra] $name: not run here: $(tail -n 1 build/extra_$name.txt)"
    elif [ $rc -eq 0 ]; then
        passed=$((passed + 1)); echo "[extra] $name: ok"
    else
        failed=$((failed + 1)); echo "[extra] $name: FAILED"; tail -25 build/extra_$name.txt
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
