# SPDX-License-Identifier: Apache-2.0
"""Issue #4's rate table from a ``lora_linear`` benchmark file, using CUDA-graph replay times.

Rate of a row = the FLOPs the harness counted for it (TFLOP/s × eager p50) / its graph time;
``% of cuBLAS`` = that rate over the plain base GEMM's forward rate (graph time) of the shape; the
last column, the tuner's decisions the row added (by GPU time: the graph column's kernels).
Run: ``python scripts/lora_rates.py benchmarks/results/lora_linear-h100-80gb-hbm3.json``.
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    base = {}
    for r in rows:
        if r["provider"] == "cublas-base" and r["mode"] == "fwd":
            base[r["shape"]] = r["tflops"] * r["p50_us"] / r["graph_us"]
    print("| shape | rank | mode | cuBLAS base fwd (us) | peft-style (us) | samkern (us) | samkern % of cuBLAS rate "
          "| tuner's new choices (graph) |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    by_key = {(r["shape"], r["mode"], r["provider"]): r for r in rows}
    base_us = {r["shape"]: r["graph_us"] for r in rows if r["provider"] == "cublas-base" and r["mode"] == "fwd"}
    for (shape, mode, prov), r in by_key.items():
        if prov != "samkern":
            continue
        bshape, rank = shape.rsplit("-", 1)
        rate = r["tflops"] * r["p50_us"] / r["graph_us"]
        peft = by_key.get((shape, mode, "peft-style"))
        # (files from session 33 on record the tuner's decisions per row; older ones show nothing)
        kernels = "; ".join(r.get("extra", {}).get("kernels", {}).values())
        print(f"| {bshape} | {rank} | {mode} | {base_us[bshape]:.1f} | {peft['graph_us']:.1f} | {r['graph_us']:.1f} "
              f"| {100 * rate / base[bshape]:.1f}% | {kernels} |")


if __name__ == "__main__":
    main(sys.argv[1])
