# SPDX-License-Identifier: Apache-2.0
"""Warp-stall samples per source line from an Nsight Compute source page (development aid).

    ncu -i report.ncu-rep --page source --csv --print-source cuda,sass -k regex:NAME > src.csv
    python3 scripts/ncu_source_summary.py src.csv [top]

Prints the stall reasons over the whole kernel and the ``top`` source lines by samples, with
their three largest stall reasons and the local-memory (spill) sectors they touch.
(``scripts/gpu_ncu.sh`` writes such CSVs for the SSD and LoRA kernels.)
"""
import csv, sys, collections
path = sys.argv[1]
rows = list(csv.reader(open(path)))
fileno = None; hdr = None
per_line = []; tot = collections.Counter(); grand = 0
for r in rows:
    if not r: continue
    if r[0] == "File Path": fileno = r[1].split("/")[-1]; continue
    if r[0] == "Function Name": continue
    if r[0] == "Line No": hdr = r; continue
    if hdr is None or r[0] == "": continue
    d = dict(zip(hdr[4:], r[4:]))  # skip duplicated Source columns
    v = d["Warp Stall Sampling (All Samples)"]; s = int(v) if v.isdigit() else 0
    stalls = {k: int(v) for k, v in d.items() if k.startswith("stall_") and "Not Issued" not in k and v.isdigit() and int(v)}
    tot.update(stalls); grand += s
    per_line.append((s, fileno, r[0], r[1][:90], sorted(stalls.items(), key=lambda kv: -kv[1])[:3], d.get("L2 Theoretical Sectors Local", "0")))
print("total samples", grand)
print("by reason:", ", ".join(f"{k[6:]} {100*v/grand:.1f}%" for k, v in tot.most_common(10)))
for s, f, ln, src, st, loc in sorted(per_line, reverse=True)[:int(sys.argv[2]) if len(sys.argv) > 2 else 30]:
    print(f"{100*s/grand:5.1f}% {f}:{ln:>4} local={loc:>7} {st} | {src}")
