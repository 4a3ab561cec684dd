#!/bin/sh
# Runs every test binary of every configuration, compares the OpenMP build's
# digests for 1 and 2 threads, runs tests/extra/*.sh (examples, fuzzing,
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
            OMP_NUM_THREADS=1 ./$bin > build/out1.txt 2>&1; rc1=$?
            OMP_NUM_THREADS=2 ./$bin > build/out2.txt 2>&1; rc2=$?
            tally build/out1.txt; tally build/out2.txt
            cat build/out1.txt build/out2.txt >> "$log"
            d1=$(grep '^digest' build/out1.txt); d2=$(grep '^digest' build/out2.txt)
            if [ -n "$d1" ] && [ "$d1" = "$d2" ]; then
                passed=$((passed + 1))
                echo "[omp] $t: 1 and 2 threads bitwise identical ($d1)"
            else
                failed=$((failed + 1))
                echo "[omp] $t: FAIL 1 and 2 threads differ ($d1 / $d2)"
            fi
            [ $rc1 -ne 0 ] && { echo "[omp1] $t FAILED:"; grep -E 'FAIL|ERROR|error' build/out1.txt | head -20; }
            [ $rc2 -ne 0 ] && { echo "[omp2] $t FAILED:"; grep -E 'FAIL|ERROR|error' build/out2.txt | head -20; }
            [ $rc1 -ne 0 ] || [ $rc2 -ne 0 ] && failed=$((failed + 1))
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

for x in tests/extra/*.sh; do
    [ -f "$x" ] || continue
    name=$(basename "$x" .sh)
    if sh "$x" > build/extra_$name.txt 2>&1; then
        passed=$((passed + 1)); echo "[extra] $name: ok"
    else
        failed=$((failed + 1)); echo "[extra] $name: FAILED"; tail -25 build/extra_$name.txt
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
