# The charts of bench/plots.sh, which sets chart ('bench' or 'loss'),
# datafile, outfile, title, subtitle and, for 'bench', rows, with_roof,
# with_peer, unit and maxlen (the longest row label). A 'bench' chart is a
# horizontal bar chart, one row per kernel and shape: a panel for % of
# roofline (when the kernels report it) and one for the speedup over torch
# (when peers ran); with neither it shows the rate in its unit.
mlk_blue = '#1f77b4'; torch_orange = '#ff7f0e'; speed_green = '#2ca02c'
set border 3
set tics nomirror

if (chart eq 'loss') {
    set terminal svg size 900,500 dynamic noenhanced font 'Helvetica,12' background rgb 'white'
    set output outfile
    set datafile separator ','
    set title title . "\n" . subtitle
    set grid ytics lc rgb '#dddddd' lt 1
    set xlabel 'step'
    set ylabel 'training loss'
    set yrange [0:*]
    set key top right
    plot for [i=2:*] datafile using 1:i with lines lw 2 title columnheader(i)
} else {
    panels = (with_roof > 0) + (with_peer > 0)
    panels = panels > 0 ? panels : 1
    label_px = maxlen * 7 + 30
    panel_px = 400
    gap_px = 30
    width = label_px + panels * (panel_px + gap_px)
    height = 200 + rows * 40
    set datafile separator "\t"
    # column maxima, taken before the ranges are set (stats honours them)
    if (with_roof > 0) {
        stats datafile using 2 nooutput; top_roof = STATS_max
        if (with_peer > 0) { stats datafile using 3 nooutput; top_roof = STATS_max > top_roof ? STATS_max : top_roof }
    }
    if (with_peer > 0) { stats datafile using 4 nooutput; top_speed = STATS_max > 1 ? STATS_max : 1 }
    if (with_roof == 0 && with_peer == 0) { stats datafile using 5 nooutput; top_rate = STATS_max }
    set terminal svg size width, height dynamic noenhanced font 'Helvetica,12' background rgb 'white'
    set output outfile
    set style fill solid 0.85 noborder
    set grid xtics lc rgb '#dddddd' lt 1
    set yrange [rows - 0.5 : -0.5]
    set ytics scale 0
    set xrange [0:*]
    set key at graph 0.5, graph 1.01 center bottom horizontal Left reverse
    set bmargin 4
    set tmargin 6
    set multiplot title title . "\n" . subtitle
    # panel n (0-based) spans these screen fractions; only the first has row labels
    left(n) = (label_px + n * (panel_px + gap_px)) / (1.0 * width)
    right(n) = left(n) + panel_px / (1.0 * width)
    row_label(first) = first ? strcol(1) : ''
    panel = 0
    if (with_roof > 0) {
        set lmargin at screen left(panel); set rmargin at screen right(panel)
        set xrange [0 : top_roof * 1.15]
        set title '% of roofline (sgemm GFLOP/s or copy GB/s)'
        if (with_peer > 0) {
            plot datafile using (0):0:(0):2:($0 - 0.4):0:ytic(row_label(1)) with boxxyerror \
                     lc rgb mlk_blue title 'mlkern', \
                 '' using (0):0:(0):3:0:($0 + 0.4) with boxxyerror lc rgb torch_orange title 'PyTorch'
        } else {
            plot datafile using (0):0:(0):2:($0 - 0.3):($0 + 0.3):ytic(row_label(1)) with boxxyerror \
                     lc rgb mlk_blue title 'mlkern'
        }
        panel = panel + 1
    }
    if (with_peer > 0) {
        set lmargin at screen left(panel); set rmargin at screen right(panel)
        set xrange [0 : top_speed * 1.25]
        set title 'speedup over PyTorch (> 1: mlkern faster)'
        set arrow 1 from first 1, graph 0 to first 1, graph 1 nohead dt 2 lc rgb '#555555'
        plot datafile using (0):0:(0):4:($0 - 0.3):($0 + 0.3):ytic(row_label(panel == 0)) \
                 with boxxyerror lc rgb speed_green notitle, \
             '' using 4:0:(sprintf(' %.2fx', $4)) with labels left font ',10' notitle
        unset arrow 1
    }
    if (with_roof == 0 && with_peer == 0) {
        set lmargin at screen left(0); set rmargin at screen right(0)
        set xrange [0 : top_rate * 1.3]
        set title 'mlkern, ' . unit
        plot datafile using (0):0:(0):5:($0 - 0.3):($0 + 0.3):ytic(row_label(1)) with boxxyerror \
                 lc rgb mlk_blue notitle, \
             '' using 5:0:(sprintf($5 >= 1000 ? ' %.0f %s' : ' %.3g %s', $5, strcol(6))) \
                 with labels left font ',10' notitle
    }
    unset multiplot
}
