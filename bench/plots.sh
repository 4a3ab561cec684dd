#!/bin/sh
# make plots: SVG charts from the benchmark results, with gnuplot (Debian's
# gnuplot-nox is installed when missing).
#   bench/plots.sh [bench.csv] [ternary_loss.csv] [out dir]
# bench.csv rows (make bench, make bench-peers):
#   impl,kernel,shape,ms,rate,unit,frac_of_roofline,threads
# One chart per kernel family (the kernel name's prefix): the faster mlkern
# run and the faster torch variant as % of the roofline, and the speedup over torch.
# ternary_loss.csv: a header line, then step and one column per loss curve.
# Families or files that are missing are skipped. The charts and index.md
# (markdown that shows them) say where and when the numbers were measured:
# set PLOT_MACHINE to describe another machine than this one.
set -eu
bench_csv=${1:-build/bench.csv}
loss_csv=${2:-build/ternary_loss.csv}
out=${3:-docs/plots}
here=$(dirname "$0")

if ! command -v gnuplot > /dev/null; then
    echo "plots: installing gnuplot-nox"
    sudo=
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    if ! { $sudo apt-get update -q && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q gnuplot-nox; }; then
        echo "plots: gnuplot is missing and could not be installed"
        exit 1
    fi
fi
if [ ! -s "$bench_csv" ] && [ ! -s "$loss_csv" ]; then
    echo "plots: neither $bench_csv nor $loss_csv exists: run make bench (and make bench-peers) first"
    exit 1
fi

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
machine=$(echo "${PLOT_MACHINE:-"${cpu:-unknown CPU}, $(nproc) cores"}" | tr -d "'\"")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$out"
index="$out/index.md"
: > "$index"

if [ -s "$bench_csv" ]; then
    rm -f "$out"/bench_*.svg # a family that has no results now has no chart
    measured=$(date -u -r "$bench_csv" +%Y-%m-%d)
    # tmp/<family>.dat: label, mlkern % of roofline, torch % of roofline,
    # speedup (torch ms / mlkern ms), rate, unit; NaN where unknown.
    # tmp/families: family, rows, rows with a roofline, rows with torch, unit,
    # threads, longest label
    awk -F, -v dir="$tmp" '
    function family(k) {
        if (k ~ /^s?gemm/) return "gemm"
        if (k ~ /^(layernorm|rmsnorm|norm)/) return "norm"
        if (k ~ /^(softmax|log_softmax|topk|sample)/) return "softmax"
        if (k ~ /^(tree|decode)/) return "tree"
        if (k ~ /^(ternary|fp32_linear|bitlinear|act_quant|adamw)/) return "ternary"
        sub(/_.*/, "", k)
        return k
    }
    NF < 8 || $4 + 0 <= 0 { next }
    {
        key = $2 SUBSEP $3
        if ($1 == "mlkern") { # the faster mlkern run (make bench-peers times each twice)
            if (!(key in ms)) { order[++n] = key; kernel[key] = $2; shape[key] = $3 }
            else if ($4 + 0 >= ms[key] + 0) next
            ms[key] = $4; rate[key] = $5; unit[key] = $6; frac[key] = $7; threads[key] = $8
        } else if ($1 ~ /^torch/ && (!(key in peer_ms) || $4 + 0 < peer_ms[key] + 0)) {
            peer_ms[key] = $4
        }
    }
    END {
        for (i = 1; i <= n; i++) {
            key = order[i]; f = family(kernel[key]); file = dir "/" f ".dat"
            if (!(f in rows)) fam[++nf] = f
            rows[f]++
            pct = frac[key] > 0 ? 100 * frac[key] : "NaN"
            peer_pct = speedup = "NaN"
            if (key in peer_ms) {
                speedup = peer_ms[key] / ms[key]; with_peer[f]++
                if (frac[key] > 0) peer_pct = pct * ms[key] / peer_ms[key]
            }
            if (frac[key] > 0) with_roof[f]++
            if (!(f in funit)) funit[f] = unit[key]
            if (threads[key] > fthreads[f]) fthreads[f] = threads[key]
            len = length(kernel[key] shape[key]) + 1
            if (len > maxlen[f]) maxlen[f] = len
            printf "%s %s\t%s\t%s\t%s\t%s\t%s\n", kernel[key], shape[key], pct, peer_pct,
                   speedup, rate[key], unit[key] > file
        }
        for (i = 1; i <= nf; i++) {
            f = fam[i]
            printf "%s\t%d\t%d\t%d\t%s\t%d\t%d\n", f, rows[f], with_roof[f], with_peer[f], funit[f],
                   fthreads[f], maxlen[f] > dir "/families"
        }
    }' "$bench_csv"

    if [ -s "$tmp/families" ]; then
        printf 'Benchmarks measured %s on %s (make bench, make bench-peers).\n\n' "$measured" "$machine" >> "$index"
    else
        echo "plots: no mlkern rows in $bench_csv"
    fi
    while IFS="$(printf '\t')" read -r fam rows with_roof with_peer unit threads maxlen; do
        [ -n "$fam" ] || continue
        case $fam in
        gemm) title="GEMM" ;;
        norm) title="Layer norm and RMS norm" ;;
        softmax) title="Softmax, top-k and sampling" ;;
        attn) title="Attention" ;;
        kv) title="Paged KV cache" ;;
        beam) title="Beam search" ;;
        tree) title="Tree speculative decoding against greedy decoding" ;;
        ternary) title="Ternary (BitNet b1.58)" ;;
        *) title=$fam ;;
        esac
        svg="$out/bench_$fam.svg"
        gnuplot -e "chart='bench'; datafile='$tmp/$fam.dat'; outfile='$svg'" \
                -e "title='$title'; subtitle='$machine, $threads thread(s), $measured'" \
                -e "rows=$rows; with_roof=$with_roof; with_peer=$with_peer; unit='$unit'; maxlen=$maxlen" \
                "$here/plots.gnuplot"
        echo "plots: $svg ($rows shapes, $with_peer with a torch figure)"
        printf '![%s benchmarks](%s)\n\n' "$title" "$svg" >> "$index"
    done < "$tmp/families"
else
    echo "plots: no $bench_csv, skipping the benchmark charts"
fi

if [ -s "$loss_csv" ]; then
    svg="$out/ternary_loss.svg"
    measured=$(date -u -r "$loss_csv" +%Y-%m-%d)
    gnuplot -e "chart='loss'; datafile='$loss_csv'; outfile='$svg'" \
            -e "title='Ternary training: loss per step'; subtitle='$machine, $measured'" \
            "$here/plots.gnuplot"
    echo "plots: $svg"
    printf 'Ternary training loss, measured %s on %s (examples/ternary_train).\n\n![%s](%s)\n\n' \
        "$measured" "$machine" "Ternary training loss against fp32" "$svg" >> "$index"
else
    echo "plots: no $loss_csv, skipping the loss chart"
fi
echo "plots: $index"
