"""Prints mlkern/torch time ratios from build/bench.csv: for each kernel and
shape, the fastest median of each side's runs (mlkern's two, torch's two
variants); > 1 means mlkern is faster."""
import sys

rows = [l.rstrip("\n").split(",") for l in open(sys.argv[1]) if l.strip()]
ours, peer = {}, {}
for impl, kernel, shape, ms, rate, unit, frac, threads in rows:
    key = (kernel, shape)
    if impl == "mlkern":
        ours[key] = min(ours.get(key, float("inf")), float(ms))
    elif impl.startswith("torch"):
        peer[key] = min(peer.get(key, float("inf")), float(ms))
print("\n%-28s %-30s %12s %12s %10s" % ("kernel", "shape", "mlkern ms", "torch ms", "speedup"))
for key in ours:
    if key in peer:
        print("%-28s %-30s %12.3f %12.3f %9.2fx" % (key[0], key[1], ours[key], peer[key], peer[key] / ours[key]))
with open("build/peers.csv", "w") as f:
    for key in ours:
        if key in peer:
            f.write("%s,%s,%.6f,%.6f\n" % (key[0], key[1], ours[key], peer[key]))
