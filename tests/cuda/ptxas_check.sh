#!/bin/sh
# Summarises `ptxas -v` of every nvcc-built CUDA test (build/cuda/sm*/*.ptxas)
# into build/cuda/ptxas.txt, one line per kernel and architecture:
#   arch  registers  spill-stores  spill-loads  stack  smem  kernel
# and fails when a kernel of mlkern_cuda.cuh (mlk_cuda__*) spills. The test
# programs' own kernels are listed but not held to it.
out=build/cuda/ptxas.txt
files=$(ls build/cuda/sm*/*.ptxas 2>/dev/null)
[ -n "$files" ] || { echo "ptxas_check: no ptxas -v output under build/cuda"; exit 1; }
for f in $files; do
    arch=$(basename "$(dirname "$f")")
    awk -v arch="$arch" '
        /Compiling entry function/ { name = $0; sub(/.*function .?/, "", name); sub(/.? for .*/, "", name) }
        /Function properties for/  { fn = $NF }
        /bytes stack frame/        { stack = $1; st = $5; ld = $9 }
        /Used [0-9]+ registers/ {
            regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
            smem = 0; if (match($0, /[0-9]+ bytes smem/)) { smem = substr($0, RSTART); sub(/ .*/, "", smem) }
            if (fn != "") print arch, regs, st + 0, ld + 0, stack + 0, smem, fn
            fn = ""
        }' "$f"
done | sort -u -k7,7 -k1,1 | while read -r arch regs st ld stack smem fn; do
    printf '%-5s %4s regs %5s spill-st %5s spill-ld %5s stack %6s smem  %s\n' "$arch" "$regs" "$st" "$ld" "$stack" "$smem" \
        "$(echo "$fn" | c++filt 2>/dev/null || echo "$fn")"
done > "$out"
kernels=$(grep -c 'mlk_cuda__' "$out")
spills=$(grep 'mlk_cuda__' "$out" | awk '$4 > 0 || $6 > 0')
if [ -n "$spills" ]; then
    echo "ptxas_check: kernels of mlkern_cuda.cuh spill registers:"
    echo "$spills"
    exit 1
fi
echo "ptxas_check: $kernels mlkern_cuda.cuh kernel builds, none spills (table: $out)"
